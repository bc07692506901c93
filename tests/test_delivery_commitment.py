"""Storage commitment of delivered results, against a real Orthanc and the node's real SCP.

Orthanc here runs a ``ReceivedInstanceFilter`` that drops Secondary Captures: it still answers
their C-STORE with Success (0x0000), as a PACS that loses what it acknowledged would. Only its
storage commitment report tells the node; the node sends them again, then dead-letters them.
The worker's delivery step runs in process (as in ``test_delivery.py``); the report arrives on
the node's own SCP, on an association Orthanc opens. The same Orthanc answers STOW-RS with 200
for what it drops: the last test checks the QIDO-RS read-back that catches it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select, update

from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery, DeliveryState, StoredResult, utcnow
from ortho_node.dimse.associations import AssociationPool
from ortho_node.dimse.commitment import WELL_KNOWN_INSTANCE, CommitmentReport, FailedObject, ObjectRef
from ortho_node.dimse.scp import RunningScp, start_scp
from ortho_node.dimse.scu import RESULT_SOP_CLASSES
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.service import IngestService
from ortho_node.pipeline import commitment
from ortho_node.pipeline.delivery import due_batches, run_deliveries
from ortho_node.status import collect_status
from ortho_node.store import InstanceStore
from tests.support.orthanc import Orthanc
from tests.support.peers import ReferenceStoreScp
from tests.test_delivery import (  # noqa: F401 - knee_results is a fixture
    deliveries, dimse_to, knee_results, make_settings, prepare, session_events,
)

SC = "1.2.840.10008.5.1.4.1.1.7"


def committing(name: str, ae_title: str, port: int) -> dict:
    """A DIMSE destination on loopback that is asked to commit."""
    return {"kind": "dimse", "name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, "storage_commitment": True}


# Where nothing is sent: rows of a committing destination, moved by hand and by reports.
OFFLINE_PACS = committing("pacs", "PACS", 9)
DROP_CAPTURES = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.SOPClassUID ~= "{SC}"
end
"""


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


def no_row_committing(db: Database) -> bool:
    return all(d.state != DeliveryState.COMMITTING.value for d in deliveries(db))


def node_scp(settings, db: Database) -> RunningScp:
    """The node's SCP as ``serve`` starts it, recording commitment reports into ``db``."""
    ingest = IngestService(InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir), Indexer(db))
    return start_scp(
        settings.dimse.model_copy(update={"port": 0}), ingest,
        commitment_reports=lambda report, pacs_ae: commitment.record_report(db, settings, report, pacs_ae),
    )


@pytest.fixture
def dropping_pacs(tmp_path) -> Iterator[Orthanc]:
    """An Orthanc that drops what it is sent of SOP class SC (not started: it must know the
    node's SCP port first, as ``modalities``)."""
    script = tmp_path / "drop-captures.lua"
    script.write_text(DROP_CAPTURES)
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.lua_scripts = [script]
    yield pacs
    pacs.stop()
    log = pacs.workdir / "orthanc.log"
    if log.exists():  # shown with a failure: what Orthanc made of the requests
        print("----- orthanc.log (tail) -----\n" + log.read_text(errors="replace")[-4000:])


def test_committed_objects_count_as_sent_and_dropped_ones_are_sent_again_then_dead_lettered(
    dropping_pacs, knee_results, tmp_path
):
    study, source, built = knee_results
    pacs = dropping_pacs
    settings = make_settings(tmp_path, [dimse_to(pacs, storage_commitment=True)], max_attempts=2)
    db, job_id = prepare(settings, source, built)
    scp = node_scp(settings, db)
    try:
        pacs.modalities = {"node": [settings.dimse.ae_title, "127.0.0.1", scp.port]}
        pacs.start()
        pacs.upload(study.files[0].path)
        sr_uid = str(built.sr.SOPInstanceUID)
        kinds = {d.id: kind for d, kind in zip(deliveries(db), [o.kind.value for o in built])}

        (batch,) = due_batches(db, republish_after=dt.timedelta(minutes=30))
        counts = run_deliveries(db, settings, batch)
        assert counts == {"sent": 0, "retry": 0, "dead": 0, "committing": len(built)}, "acknowledged, not yet committed"
        wait_until(lambda: no_row_committing(db))

        rows = {kinds[d.id]: d for d in deliveries(db)}
        assert rows["sr"].state == DeliveryState.SENT.value
        assert rows["sr"].committed_at is not None and rows["sr"].commitment_uid is None
        assert rows["sc"].state == DeliveryState.PENDING.value, "the PACS acknowledged the SC but does not hold it"
        assert rows["sc"].attempts == 1 and rows["sc"].committed_at is None
        assert "no such object instance (0x0112)" in rows["sc"].last_error
        assert rows["sc"].next_attempt_at > utcnow(), "sent again after the backoff, not at once"

        # After the backoff the SC goes again, is dropped again, and its last attempt is spent.
        (again,) = wait_until(lambda: due_batches(db, republish_after=dt.timedelta(minutes=30)), timeout=10)
        assert again == [rows["sc"].id]
        assert run_deliveries(db, settings, again)["committing"] == 1
        wait_until(lambda: no_row_committing(db))
        rows = {kinds[d.id]: d for d in deliveries(db)}
        assert rows["sc"].state == DeliveryState.DEAD.value
        assert rows["sc"].attempts == 2
        assert rows["sc"].last_error.startswith("gave up after 2 attempts: storage commitment failed: no such object")
        assert rows["sr"].state == DeliveryState.SENT.value, "a report for the SC leaves the SR as it was"

        trail = [(e.kind, e.detail) for e in session_events(db, job_id) if e.kind in ("committed", "not-committed")]
        assert trail == [
            ("committed", "1 object(s) committed by 'pacs'"),
            ("not-committed", "1 object(s) not committed by 'pacs': storage commitment failed: no such object instance (0x0112)"),
            ("not-committed", "1 object(s) not committed by 'pacs': storage commitment failed: no such object instance (0x0112)"),
        ], "the job's audit trail says what the PACS reported, each time"

        status = collect_status(db, quarantine_dir=settings.quarantine_dir)
        assert status.deliveries_by_state[DeliveryState.DEAD.value] == 1
        assert status.deliveries_by_state[DeliveryState.COMMITTING.value] == 0
        assert [d.delivery_id for d in status.dead_letters] == [rows["sc"].id]
        in_pacs = {i["SOPInstanceUID"] for i in pacs.instances_of_study(source.StudyInstanceUID)}
        assert sr_uid in in_pacs and not in_pacs & {str(d.SOPInstanceUID) for d in built.secondary_captures}
    finally:
        scp.stop()
        db.dispose()


def test_a_pacs_without_storage_commitment_gets_the_objects_and_they_go_back_to_pending(knee_results, tmp_path):
    """DCMTK's storescp stores but offers no Storage Commitment: the C-STOREs succeed, the request
    cannot be made, so nothing counts as delivered (the destination is misconfigured or the
    PACS lost the feature) and the rows wait for their next attempt with the reason."""
    _, source, built = knee_results
    pacs = ReferenceStoreScp(tmp_path / "storescp").start()
    try:
        settings = make_settings(tmp_path, [committing("pacs", "STORESCP", pacs.port)], max_attempts=3)
        db, _ = prepare(settings, source, built)
        (batch,) = due_batches(db, republish_after=dt.timedelta(minutes=30))
        assert run_deliveries(db, settings, batch)["committing"] == len(built)
        rows = deliveries(db)
        assert {r.state for r in rows} == {DeliveryState.PENDING.value}
        assert all(r.sent_at is not None and r.commitment_uid is None for r in rows)
        assert all("did not accept Storage Commitment Push Model" in r.last_error for r in rows)
        assert sorted(pacs.files_by_sop_instance_uid()) == sorted(str(o.dataset.SOPInstanceUID) for o in built)
        db.dispose()
    finally:
        pacs.stop()


def test_a_report_nobody_answers_in_time_sends_the_objects_again(knee_results, tmp_path):
    _, source, built = knee_results
    settings = make_settings(tmp_path, [OFFLINE_PACS], max_attempts=2, commitment_timeout_s=60)
    db, _ = prepare(settings, source, built)
    ids = [d.id for d in deliveries(db)]
    assert len(ids) == len(built) >= 2
    with db.session() as session:
        session.execute(update(Delivery).values(state=DeliveryState.COMMITTING.value, attempts=1, sent_at=utcnow(),
                                                next_attempt_at=utcnow() + dt.timedelta(seconds=60)))
    transaction_uid = commitment.begin(db, ids)
    assert all(d.commitment_uid == transaction_uid for d in deliveries(db))
    waiting = collect_status(db, quarantine_dir=settings.quarantine_dir)
    assert waiting.deliveries_by_state[DeliveryState.COMMITTING.value] == len(ids)
    assert waiting.committing_since == min(d.sent_at for d in deliveries(db)).isoformat(timespec="seconds")

    assert commitment.expire(db, settings) == 0, "not overdue yet"
    assert commitment.expire(db, settings, now=utcnow() + dt.timedelta(seconds=61)) == len(ids)
    rows = deliveries(db)
    assert {r.state for r in rows} == {DeliveryState.PENDING.value}
    assert all("no report from the PACS within 60 s" in r.last_error and r.commitment_uid is None for r in rows)
    assert collect_status(db, quarantine_dir=settings.quarantine_dir).committing_since is None

    # A report that comes after the rows were given up on changes nothing.
    late = CommitmentReport(transaction_uid, tuple(ObjectRef(SC, u) for u in _uids(db)), ())
    assert commitment.record_report(db, settings, late, "TESTPACS") == {"committed": 0, "retry": 0, "dead": 0}
    assert {r.state for r in deliveries(db)} == {DeliveryState.PENDING.value}
    db.dispose()


def test_a_report_settles_each_object_and_the_last_attempt_dead_letters(knee_results, tmp_path):
    _, source, built = knee_results
    settings = make_settings(tmp_path, [OFFLINE_PACS], max_attempts=2)
    db, _ = prepare(settings, source, built)
    rows = deliveries(db)
    assert len(rows) == len(built) >= 2
    with db.session() as session:
        session.execute(update(Delivery).values(state=DeliveryState.COMMITTING.value, sent_at=utcnow(), attempts=1))
    sr_uid, *others = _uids(db)

    def report_on(row_ids: list[int], committed: tuple[ObjectRef, ...]) -> dict:
        transaction_uid = commitment.begin(db, row_ids)
        report = CommitmentReport(
            transaction_uid, committed=committed, failed=tuple(FailedObject(ObjectRef(SC, u), 0x0213) for u in others)
        )
        return commitment.record_report(db, settings, report, "TESTPACS")

    # first attempt: the SR committed, the captures reported missing with an attempt left: pending
    assert report_on([r.id for r in rows], (ObjectRef(str(built.sr.SOPClassUID), sr_uid),)) == {
        "committed": 1, "retry": len(others), "dead": 0,
    }
    after = deliveries(db)
    assert after[0].state == DeliveryState.SENT.value and after[0].committed_at is not None
    for row in after[1:]:
        assert row.state == DeliveryState.PENDING.value and row.next_attempt_at > utcnow()
        assert "resource limitation (0x0213)" in row.last_error
    # their last attempt, sent again and reported missing again: dead letters
    with db.session() as session:
        session.execute(
            update(Delivery).where(Delivery.id.in_([r.id for r in after[1:]]))
            .values(state=DeliveryState.COMMITTING.value, attempts=2)
        )
    assert report_on([r.id for r in after[1:]], ()) == {"committed": 0, "retry": 0, "dead": len(others)}
    final = deliveries(db)
    assert final[0].state == DeliveryState.SENT.value
    assert all(r.state == DeliveryState.DEAD.value and "0x0213" in r.last_error for r in final[1:])
    db.dispose()


def test_the_scp_answers_reports_it_cannot_use_with_the_matching_status(knee_results, tmp_path):
    """A PACS's N-EVENT-REPORT on its own association, as Orthanc sends it (SCP role proposed)."""
    _, source, built = knee_results
    settings = make_settings(tmp_path, [OFFLINE_PACS])
    db, _ = prepare(settings, source, built)
    scp = node_scp(settings, db)
    try:
        pacs = AE("TESTPACS")
        pacs.add_requested_context(StorageCommitmentPushModel, [uid.ExplicitVRLittleEndian])
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = StorageCommitmentPushModel, False, True
        assoc = pacs.associate("127.0.0.1", scp.port, ae_title="ORTHO", ext_neg=[role])
        assert assoc.is_established
        try:
            info = Dataset()
            info.TransactionUID = uid.generate_uid(prefix=None)
            info.ReferencedSOPSequence = []
            status, _ = assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0000, "a report for an unknown transaction is taken (and changes nothing)"
            status, _ = assoc.send_n_event_report(info, 7, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0113, "no such event type"
            del info.TransactionUID
            status, _ = assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0115, "no Transaction UID"
        finally:
            assoc.release()
        assert {d.state for d in deliveries(db)} == {DeliveryState.PENDING.value}
    finally:
        scp.stop()
        db.dispose()


def _uids(db: Database) -> list[str]:
    """SOP Instance UIDs of the deliveries' objects, in delivery order."""
    with db.session() as session:
        return list(session.scalars(
            select(StoredResult.sop_instance_uid).join(Delivery, Delivery.result_id == StoredResult.id).order_by(Delivery.id)
        ))


class ReportingOnTheSameAssociation:
    """A PACS (pynetdicom) that stores the node's results and, after answering the N-ACTION,
    reports on the association that asked, while the node keeps it open: what archives that
    do not open an association back do. Orthanc always opens its own, so this peer stands in."""

    def __init__(self, keep: Callable[[str], bool]) -> None:
        self.keep = keep  # which SOP classes it really stores
        self.stored: set[str] = set()
        self.report_statuses: list[int] = []
        ae = AE("ARCHIVE")
        for sop_class in (*RESULT_SOP_CLASSES, StorageCommitmentPushModel):
            ae.add_supported_context(sop_class, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._commit),
        ])
        self.port = int(self.server.server_address[1])

    def _store(self, event) -> int:
        if self.keep(str(event.request.AffectedSOPClassUID)):
            self.stored.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000  # stored or not, acknowledged

    def _commit(self, event) -> tuple[int, None]:
        request = event.action_information
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        items = list(request.ReferencedSOPSequence)
        info.ReferencedSOPSequence = [i for i in items if i.ReferencedSOPInstanceUID in self.stored]
        failed = [i for i in items if i.ReferencedSOPInstanceUID not in self.stored]
        for item in failed:
            item.FailureReason = 0x0112
        if failed:
            info.FailedSOPSequence = failed
        assoc = event.assoc

        def report() -> None:
            time.sleep(0.2)  # after the N-ACTION response, with the association idle at the node
            status, _ = assoc.send_n_event_report(info, 2 if failed else 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
            self.report_statuses.append(int(status.Status) if "Status" in status else -1)

        threading.Thread(target=report, daemon=True).start()
        return 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


def test_a_report_on_the_association_that_asked_is_recorded_by_the_worker(knee_results, tmp_path):
    _, source, built = knee_results
    pacs = ReportingOnTheSameAssociation(keep=lambda sop_class: sop_class != SC)
    pool = AssociationPool(idle_s=5)
    try:
        settings = make_settings(tmp_path, [committing("archive", "ARCHIVE", pacs.port)], max_attempts=1)
        db, _ = prepare(settings, source, built)
        (batch,) = due_batches(db, republish_after=dt.timedelta(minutes=30))
        assert run_deliveries(db, settings, batch, associations=pool)["committing"] == len(built)
        wait_until(lambda: no_row_committing(db) and pacs.report_statuses)
        assert pacs.report_statuses == [0x0000], "the node answered the report on its own association"
        by_uid = dict(zip(_uids(db), deliveries(db)))
        sr = by_uid.pop(str(built.sr.SOPInstanceUID))
        assert sr.state == DeliveryState.SENT.value and sr.committed_at is not None
        assert by_uid and all(
            d.state == DeliveryState.DEAD.value and "no such object instance" in d.last_error for d in by_uid.values()
        )
        db.dispose()
    finally:
        pool.close()
        pacs.stop()


def test_stow_read_back_catches_what_the_response_called_stored_but_the_server_dropped(
    dropping_pacs, knee_results, tmp_path
):
    """The DICOMweb counterpart: Orthanc's STOW-RS answers 200 for the capture its filter drops;
    with ``verify_stored`` the node reads the series back by QIDO-RS and sends it again."""
    study, source, built = knee_results
    pacs = dropping_pacs.start()
    pacs.upload(study.files[0].path)
    destination = {"kind": "stow", "name": "pacs", "url": pacs.dicomweb_url, "verify_stored": True}
    settings = make_settings(tmp_path, [destination], max_attempts=2)
    db, _ = prepare(settings, source, built)
    kinds = {d.id: kind for d, kind in zip(deliveries(db), [o.kind.value for o in built])}
    (batch,) = due_batches(db, republish_after=dt.timedelta(minutes=30))
    assert run_deliveries(db, settings, batch) == {"sent": 1, "retry": len(built) - 1, "dead": 0}
    rows = {kinds[d.id]: d for d in deliveries(db)}
    assert rows["sr"].state == DeliveryState.SENT.value
    assert rows["sc"].state == DeliveryState.PENDING.value
    assert rows["sc"].last_error == "stored per the STOW-RS response, but QIDO-RS does not find it"

    (again,) = wait_until(lambda: due_batches(db, republish_after=dt.timedelta(minutes=30)), timeout=10)
    assert run_deliveries(db, settings, again) == {"sent": 0, "retry": 0, "dead": 1}
    assert {kinds[d.id]: d.state for d in deliveries(db)} == {"sr": "sent", "sc": "dead"}
    db.dispose()
