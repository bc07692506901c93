"""Delivery of result objects to a real Orthanc: C-STORE and STOW-RS, retries, dead letters, resend.

The worker's delivery step runs in process here (real index, real files, real Orthanc over the
network); the whole path through ``serve`` is covered by the end-to-end tests.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.db.models import Delivery, DeliveryState, Job, StoredResult, Study, utcnow
from ortho_node.ingest.part10 import read_part10_meta
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study
from ortho_node.pipeline.delivery import backoff, due_batches, resend, run_deliveries
from ortho_node.pipeline.results_record import record_results
from ortho_node.results import build_result_objects
from ortho_node.status import collect_status
from tests import results_support as rs
from tests.support.peers import ReferenceStoreScp, free_port

pytestmark = pytest.mark.orthanc


def make_settings(tmp_path: Path, destinations: list[dict], **delivery) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        destinations=destinations,
        delivery={"backoff_initial_s": 1, "backoff_max_s": 4, **delivery},
    )


def dimse_to(orthanc, **extra) -> dict:
    return {"kind": "dimse", "name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, **extra}


@pytest.fixture
def knee_results(tmp_path):
    """A phantom radiograph (already in the PACS) and the SR + SC built for it."""
    study = write_knee_study(tmp_path / "src", seed=31, xrays=[XrayPhantomSpec(kl_grade=3, side="L", rows=512, columns=512)])
    source = pydicom.dcmread(study.files[0].path)
    findings = rs.study(source.StudyInstanceUID, findings=(rs.kl_finding(source, grade=3, region=(100.0, 150.0, 400.0, 380.0)),))
    built = build_result_objects(findings, sources=[source])
    return study, source, built


def prepare(settings: Settings, source, built) -> tuple[Database, int]:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    with db.session() as session:
        study = Study(study_instance_uid=source.StudyInstanceUID, state="stable")
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, state="done")
        session.add(job)
        session.flush()
        job_id, study_id = job.id, study.id
    record_results(db, settings, job_id=job_id, study_id=study_id, revision=0, objects=[(o.kind.value, o.dataset) for o in built])
    return db, job_id


def deliveries(db: Database) -> list[Delivery]:
    with db.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def result_uids_in(orthanc, study_uid: str) -> list[str]:
    return sorted(i["SOPInstanceUID"] for i in orthanc.instances_of_study(study_uid) if i.get("Modality") in ("SR", "OT"))


@pytest.mark.parametrize("kind", ["dimse", "stow"])
def test_sr_and_sc_arrive_in_the_same_study_in_orthanc(orthanc, knee_results, tmp_path, kind):
    study, source, built = knee_results
    orthanc.upload(study.files[0].path)
    destination = dimse_to(orthanc) if kind == "dimse" else {"kind": "stow", "name": "pacs", "url": orthanc.dicomweb_url}
    settings = make_settings(tmp_path, [destination])
    db, _ = prepare(settings, source, built)
    (batch,) = due_batches(db, republish_after=dt.timedelta(minutes=30))
    assert run_deliveries(db, settings, batch) == {"sent": len(built), "retry": 0, "dead": 0}
    assert all(d.state == DeliveryState.SENT.value for d in deliveries(db))
    in_pacs = orthanc.instances_of_study(source.StudyInstanceUID)
    assert sorted(i["SOPInstanceUID"] for i in in_pacs) == sorted(
        [source.SOPInstanceUID] + [str(o.dataset.SOPInstanceUID) for o in built]
    )
    modalities = sorted(i["Modality"] for i in in_pacs)
    assert modalities == ["DX", "OT", "SR"]


def test_destination_down_retries_then_dead_letters_and_resend_delivers_without_duplicates(orthanc, knee_results, tmp_path):
    study, source, built = knee_results
    orthanc.upload(study.files[0].path)
    settings = make_settings(tmp_path, [dimse_to(orthanc)], max_attempts=2)
    db, job_id = prepare(settings, source, built)
    orthanc.stop()

    ids = [d.id for d in deliveries(db)]
    assert run_deliveries(db, settings, ids)["retry"] == len(ids)
    rows = deliveries(db)
    assert {r.state for r in rows} == {DeliveryState.PENDING.value}
    assert all(r.next_attempt_at > utcnow() and "cannot associate" in r.last_error for r in rows)
    assert due_batches(db, republish_after=dt.timedelta(minutes=30)) == [], "backoff: not due yet"
    assert due_batches(db, republish_after=dt.timedelta(minutes=30), now=utcnow() + backoff(settings, 1)) == [ids]

    assert run_deliveries(db, settings, ids) == {"sent": 0, "retry": 0, "dead": 0}, "not due: nothing claimed"
    with db.session() as session:  # fast-forward the backoff
        for row in session.scalars(select(Delivery)):
            row.next_attempt_at = utcnow()
    assert run_deliveries(db, settings, ids)["dead"] == len(ids)
    snapshot = collect_status(db, quarantine_dir=settings.quarantine_dir)
    assert snapshot.deliveries_by_state["dead"] == len(ids)
    assert {d.destination for d in snapshot.dead_letters} == {"pacs"}
    assert all("gave up after 2 attempts" in d.last_error for d in snapshot.dead_letters)

    orthanc.start()  # the PACS is back, on the same ports
    assert resend(db, job_id=job_id) == len(ids)
    assert run_deliveries(db, settings, ids)["sent"] == len(ids)
    assert resend(db, job_id=job_id, include_sent=True) == len(ids)  # an admin re-sends everything
    assert run_deliveries(db, settings, ids)["sent"] == len(ids)
    expected = sorted(str(o.dataset.SOPInstanceUID) for o in built)
    assert result_uids_in(orthanc, source.StudyInstanceUID) == expected, "re-sends leave one copy of each object"


def test_permanent_refusal_is_dead_lettered_at_once(knee_results, tmp_path):
    _, source, built = knee_results
    # A PACS that does not exist on a port nobody listens on is transient; one that refuses the
    # association permanently (wrong called AE on a strict SCP) is not retried.
    from pynetdicom import AE, AllStoragePresentationContexts

    strict = AE(ae_title="STRICT")
    strict.require_called_aet = True
    strict.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = strict.start_server(("127.0.0.1", port), block=False)
    try:
        settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "WRONG", "host": "127.0.0.1", "port": port}])
        db, _ = prepare(settings, source, built)
        assert run_deliveries(db, settings, [d.id for d in deliveries(db)])["dead"] == len(built)
        assert all("rejected" in d.last_error for d in deliveries(db))
    finally:
        server.shutdown()


def test_dimse_sends_the_stored_bytes_and_converts_only_for_a_pacs_that_needs_it(knee_results, tmp_path, monkeypatch):
    """A PACS that accepts the stored transfer syntax gets the file's dataset bytes as stored (never
    decoded and re-encoded); one that accepts only Implicit VR Little Endian gets a converted copy."""
    import pynetdicom.association

    _, source, built = knee_results
    as_stored = ReferenceStoreScp(tmp_path / "as-stored").start()
    implicit = ReferenceStoreScp(tmp_path / "implicit", implicit_only=True).start()
    try:
        settings = make_settings(tmp_path, [
            {"kind": "dimse", "name": "as-stored", "ae_title": "ANYSCP", "host": "127.0.0.1", "port": as_stored.port},
            {"kind": "dimse", "name": "implicit", "ae_title": "ANYSCP", "host": "127.0.0.1", "port": implicit.port},
        ])
        db, _ = prepare(settings, source, built)
        ids = [d.id for d in deliveries(db)]
        decoded: list[str] = []
        real_dcmread = pydicom.dcmread

        def counting_dcmread(path, *args, **kwargs):
            decoded.append(str(path))
            return real_dcmread(path, *args, **kwargs)

        monkeypatch.setattr(pydicom, "dcmread", counting_dcmread)
        monkeypatch.setattr(pynetdicom.association, "dcmread", counting_dcmread)
        assert run_deliveries(db, settings, ids) == {"sent": len(ids), "retry": 0, "dead": 0}
        monkeypatch.undo()
        assert len(decoded) == len(built), "decoded once per object, for the implicit-only PACS alone"
        stored = {
            str(pydicom.dcmread(settings.results_dir / path, stop_before_pixels=True).SOPInstanceUID): settings.results_dir / path
            for path in _result_paths(db)
        }
        received = as_stored.files_by_sop_instance_uid()
        converted = implicit.files_by_sop_instance_uid()
        assert set(received) == set(converted) == set(stored)
        for uid, path in stored.items():
            assert _dataset_bytes(received[uid]) == _dataset_bytes(path), "sent as stored"
            copy = pydicom.dcmread(converted[uid])
            assert copy.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
            original = pydicom.dcmread(path)
            assert original.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert [(e.tag, e.value) for e in copy] == [(e.tag, e.value) for e in original], "same dataset, converted"
    finally:
        as_stored.stop()
        implicit.stop()


def _result_paths(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(StoredResult.path)))


def _dataset_bytes(path: Path) -> bytes:
    """The dataset after the file meta information (what travels in a C-STORE)."""
    data = path.read_bytes()
    _, offset = read_part10_meta(data)
    return data[offset:]
