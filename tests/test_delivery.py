"""Delivery of result objects to a real Orthanc: C-STORE and STOW-RS, retries, dead letters, resend.

The worker's delivery step runs in process here (real index, real files, real Orthanc over the
network); the whole path through ``serve`` is covered by the end-to-end tests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.db.models import Delivery, DeliveryState, Job, JobEvent, StoredResult, Study, utcnow
from ortho_node.ingest.part10 import read_part10_meta
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study
from ortho_node.pipeline.delivery import due_batches, resend, retarget, run_deliveries
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


def session_events(db: Database, job_id: int) -> list[JobEvent]:
    with db.session() as session:
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        session.expunge_all()
        return events


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
    assert due_batches(db, republish_after=dt.timedelta(minutes=30), now=utcnow() + settings.delivery.backoff(1)) == [ids]

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


def _dead(db: Database) -> None:
    with db.session() as session:
        for row in session.scalars(select(Delivery)):
            row.state, row.attempts, row.last_error = DeliveryState.DEAD.value, 3, "gave up after 3 attempts: refused"


def test_dead_letters_of_a_replaced_pacs_go_to_its_successor(orthanc, knee_results, tmp_path):
    # The hospital replaced its PACS: the old destination is gone from the config, its dead
    # letters move to the new one and arrive there once.
    study, source, built = knee_results
    orthanc.upload(study.files[0].path)
    old = {"kind": "dimse", "name": "old-pacs", "ae_title": "OLDPACS", "host": "127.0.0.1", "port": free_port()}
    db, job_id = prepare(make_settings(tmp_path, [old], max_attempts=1), source, built)
    ids = [d.id for d in deliveries(db)]
    assert run_deliveries(db, make_settings(tmp_path, [old], max_attempts=1), ids)["dead"] == len(ids)

    assert retarget(db, source="old-pacs", target="pacs") == len(ids)
    rows = deliveries(db)
    assert [r.id for r in rows] == ids, "the same rows, moved"
    assert {(r.destination, r.state, r.attempts, r.last_error) for r in rows} == {("pacs", "pending", 0, None)}
    events = [e.detail for e in session_events(db, job_id) if e.kind == "retarget"]
    assert events == [f"{len(ids)} deliveries moved from destination 'old-pacs' to 'pacs'"]

    settings = make_settings(tmp_path, [dimse_to(orthanc)])
    assert run_deliveries(db, settings, ids)["sent"] == len(ids)
    assert retarget(db, source="old-pacs", target="pacs") == 0, "nothing left to move"
    assert result_uids_in(orthanc, source.StudyInstanceUID) == sorted(str(o.dataset.SOPInstanceUID) for o in built)


def test_retarget_onto_a_destination_that_has_the_object_keeps_one_row(knee_results, tmp_path):
    _, source, built = knee_results
    both = [
        {"kind": "dimse", "name": name, "ae_title": "X", "host": "127.0.0.1", "port": free_port()}
        for name in ("old-pacs", "pacs")
    ]
    db, _ = prepare(make_settings(tmp_path, both), source, built)
    _dead(db)
    with db.session() as session:  # one object already reached the new PACS
        first = session.scalars(select(Delivery).where(Delivery.destination == "pacs").order_by(Delivery.id)).first()
        first.state = DeliveryState.SENT.value
        sent_result = first.result_id
    assert retarget(db, source="old-pacs", target="pacs") == len(built)
    rows = deliveries(db)
    assert {r.destination for r in rows} == {"pacs"} and len(rows) == len(built)
    assert {r.result_id: r.state for r in rows} == {
        r.result_id: ("sent" if r.result_id == sent_result else "pending") for r in rows
    }, "delivered objects stay delivered unless --all"
    with pytest.raises(ValueError, match="same destination"):
        retarget(db, source="pacs", target="pacs")


def test_resend_to_another_destination_from_the_command_line(knee_results, tmp_path):
    _, source, built = knee_results
    old = {"kind": "dimse", "name": "old-pacs", "ae_title": "X", "host": "127.0.0.1", "port": free_port()}
    new = {**old, "name": "pacs", "port": free_port()}
    db, _ = prepare(make_settings(tmp_path, [old]), source, built)
    _dead(db)
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"var_dir": str(tmp_path / "var"), "destinations": [new]}))
    cli = [sys.executable, "-m", "ortho_node.cli", "--config", str(config), "resend"]

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120, env=env)

    unknown = run("--destination", "old-pacs")
    assert unknown.returncode == 2 and "--destination OLD --to NEW" in unknown.stderr
    assert run("--to", "pacs").returncode == 2, "--to needs the old destination"
    assert run("--destination", "old-pacs", "--to", "nowhere").returncode == 2
    moved = run("--destination", "old-pacs", "--to", "pacs")
    assert moved.returncode == 0, moved.stderr
    assert f"{len(built)} deliveries moved from old-pacs to pacs" in moved.stdout
    assert {(r.destination, r.state) for r in deliveries(db)} == {("pacs", "pending")}


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


# ----------------------------------------------------------- failures the PACS or the node may cause


def _results(db: Database) -> dict[str, StoredResult]:
    """The stored results by kind (sr, sc)."""
    with db.session() as session:
        return {r.kind: r for r in session.scalars(select(StoredResult))}


def _rows_by_kind(db: Database) -> dict[str, Delivery]:
    with db.session() as session:
        rows = session.execute(select(Delivery, StoredResult.kind).join(StoredResult, Delivery.result_id == StoredResult.id)).all()
    return {kind: row for row, kind in rows}


class CannedStowServer:
    """A STOW-RS endpoint on loopback that answers every POST with one canned response: the
    behaviours of archives that Orthanc does not show (parameters on the Content-Type, 202
    with failures, 409 with reasons) and of what may stand in front of one (a login page)."""

    def __init__(self, status: int, content_type: str | None, body: bytes) -> None:
        import http.server
        import threading

        canned = (status, content_type, body)
        self.accept: list[str] = []  # each request's Accept header
        accept = self.accept

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                accept.append(self.headers.get("Accept", ""))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, content_type, body = canned
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def __enter__(self) -> "CannedStowServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _store_response_json(referenced: list[str], failures: dict[str, int]) -> bytes:
    """A Store Instances Response (PS3.18 Annex I) in DICOM JSON."""
    stored = [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in referenced]
    failed = [
        {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
        for uid, reason in failures.items()
    ]
    return json.dumps({"00081198": {"vr": "SQ", "Value": failed}, "00081199": {"vr": "SQ", "Value": stored}}).encode()


LOGIN_PAGE = b"<html><body>Please log in</body></html>"  # a proxy's or single-sign-on page


@pytest.mark.parametrize(
    ("status", "content_type", "referenced", "failed_sc", "expected"),
    [
        # An archive that adds a charset: the failure must still be read (it was taken for success).
        (202, "application/dicom+json; charset=utf-8", ("sr",), 0xA700, {"sr": "sent", "sc": "pending"}),
        (202, "application/dicom+json; charset=utf-8", ("sr",), 0xA900, {"sr": "sent", "sc": "dead"}),
        (200, "application/dicom+json;charset=UTF-8", ("sr", "sc"), None, {"sr": "sent", "sc": "sent"}),
        # 202 without a readable body: which instances were stored is unknown, so all are retried.
        (202, None, None, None, {"sr": "pending", "sc": "pending"}),
        # 200 is not enough: a login page, an empty body, or a response that does not reference
        # an object leaves it to be retried (each was counted as delivered).
        (200, "text/html", LOGIN_PAGE, None, {"sr": "pending", "sc": "pending"}),
        (200, None, None, None, {"sr": "pending", "sc": "pending"}),
        (200, "application/dicom+json", ("sr",), None, {"sr": "sent", "sc": "pending"}),
        # 409 with a reason per instance: out of resources is retried, not dead-lettered.
        (409, "application/dicom+json", (), 0xA700, {"sr": "dead", "sc": "pending"}),
    ],
)
def test_stow_outcomes_follow_the_response_per_instance(
    knee_results, tmp_path, status, content_type, referenced, failed_sc, expected
):
    _, source, built = knee_results
    with CannedStowServer(200, None, b"") as placeholder:
        settings = make_settings(tmp_path, [{"kind": "stow", "name": "pacs", "url": placeholder.url}])
    db, _ = prepare(settings, source, built)
    results = _results(db)
    failures = {results["sc"].sop_instance_uid: failed_sc} if failed_sc is not None else {}
    if status == 409:  # the SR is refused too, without a retryable reason
        failures[results["sr"].sop_instance_uid] = 0xC000
    if isinstance(referenced, tuple):
        body = _store_response_json([results[kind].sop_instance_uid for kind in referenced], failures)
    else:
        body = referenced or b""
    with CannedStowServer(status, content_type, body) as archive:
        settings = make_settings(tmp_path, [{"kind": "stow", "name": "pacs", "url": archive.url}])
        run_deliveries(db, settings, [d.id for d in deliveries(db)])
    rows = _rows_by_kind(db)
    assert {kind: row.state for kind, row in rows.items()} == expected
    for kind, row in rows.items():
        if expected[kind] != "sent":
            assert row.last_error, "a failure says why"


def _small_part10(path: Path) -> pydicom.Dataset:
    """A minimal Secondary Capture file: enough for STOW-RS, quicker than the knee results."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "STOW1"
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ds


def _store_response_xml(referenced: list[str], failures: dict[str, int]) -> bytes:
    """A Store Instances Response in DICOM XML as Orthanc 1.10's DICOMweb plugin writes it
    (namespaced, and an empty ``<Value>`` beside the items of a sequence)."""

    def item(number: int, uid: str, reason: int | None) -> str:
        why = f'<DicomAttribute tag="00081197" vr="US"><Value number="1">{reason}</Value></DicomAttribute>' if reason else ""
        return (
            f'<Item number="{number}"><DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">'
            f'<Value number="1">{uid}</Value></DicomAttribute>{why}</Item>'
        )

    stored = "".join(item(n, uid, None) for n, uid in enumerate(referenced, 1))
    failed = "".join(item(n, uid, reason) for n, (uid, reason) in enumerate(failures.items(), 1))
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        f'<DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">{failed}</DicomAttribute>'
        f'<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">{stored}<Value number="1" />'
        "</DicomAttribute></NativeDicomModel>"
    ).encode()


UNCONFIRMED = (False, True)  # (ok, transient): sent again by the retry policy
STORED = (True, False)


@pytest.mark.parametrize(
    ("status", "content_type", "response", "expected"),
    [
        (200, "text/html", LOGIN_PAGE, [UNCONFIRMED, UNCONFIRMED]),
        (200, None, b"", [UNCONFIRMED, UNCONFIRMED]),
        (200, "application/dicom+json", b"", [UNCONFIRMED, UNCONFIRMED]),
        # Bodies that dicomweb-client fails to parse itself: a failure of this response, not the node's.
        (200, "application/dicom+json", LOGIN_PAGE, [UNCONFIRMED, UNCONFIRMED]),
        (200, "application/dicom+xml", LOGIN_PAGE, [UNCONFIRMED, UNCONFIRMED]),
        (200, "application/json", b'{"message": "Unauthorized"}', [UNCONFIRMED, UNCONFIRMED]),
        # A Store Instances Response that references only the first object.
        (200, "application/dicom+json", "json", [STORED, UNCONFIRMED]),
        (200, "application/dicom+xml; charset=utf-8", "xml", [STORED, UNCONFIRMED]),
        (202, "application/dicom+json", "json", [STORED, UNCONFIRMED]),
        # The second listed as failed (0xA900, not transient) in either encoding.
        (202, "application/dicom+json", "json-failed", [STORED, (False, False)]),
        (202, "application/dicom+xml", "xml-failed", [STORED, (False, False)]),
    ],
)
def test_stow_counts_an_object_stored_only_if_the_response_references_it(tmp_path, status, content_type, response, expected):
    from ortho_node.config import StowDestination
    from ortho_node.pipeline.stow import store_files

    paths = [tmp_path / "first.dcm", tmp_path / "second.dcm"]
    first, second = (str(_small_part10(path).SOPInstanceUID) for path in paths)
    bodies = {
        "json": _store_response_json([first], {}),
        "xml": _store_response_xml([first], {}),
        "json-failed": _store_response_json([first], {second: 0xA900}),
        "xml-failed": _store_response_xml([first], {second: 0xA900}),
    }
    body = bodies[response] if isinstance(response, str) else response
    with CannedStowServer(status, content_type, body) as archive:
        outcomes = store_files(StowDestination(name="pacs", url=archive.url), paths, timeout_s=10)
    assert [(o.ok, o.transient) for o in outcomes] == expected
    for outcome, want in zip(outcomes, expected):
        if want == UNCONFIRMED:
            assert "the response did not confirm it" in outcome.detail
    assert archive.accept and all("application/dicom+json" in a and "application/dicom+xml" in a for a in archive.accept), (
        "the request asks for a Store Instances Response the node can read"
    )


def test_association_aborted_mid_batch_leaves_no_row_in_sending(knee_results, tmp_path):
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    _, source, built = knee_results
    received: list[str] = []

    def abort_on_the_second(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) >= 2:
            event.assoc.abort()
        return 0x0000

    scp = AE(ae_title="ABORTER")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, abort_on_the_second)])
    try:
        settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "ABORTER", "host": "127.0.0.1", "port": port}])
        db, _ = prepare(settings, source, built)
        counts = run_deliveries(db, settings, [d.id for d in deliveries(db)])
    finally:
        server.shutdown()
    assert counts == {"sent": 1, "retry": 1, "dead": 0}
    states = sorted(row.state for row in deliveries(db))
    assert states == ["pending", "sent"], "the first object is delivered, the aborted one retried"


def test_an_unreadable_result_file_fails_alone_and_says_so_without_uids(knee_results, tmp_path):
    _, source, built = knee_results
    scp = ReferenceStoreScp(tmp_path / "pacs").start()
    try:
        settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "ANYSCP", "host": "127.0.0.1", "port": scp.port}])
        db, _ = prepare(settings, source, built)
        results = _results(db)
        (settings.results_dir / results["sc"].path).unlink()
        assert run_deliveries(db, settings, [d.id for d in deliveries(db)]) == {"sent": 1, "retry": 0, "dead": 1}
        assert set(scp.files_by_sop_instance_uid()) == {results["sr"].sop_instance_uid}
    finally:
        scp.stop()
    dead = _rows_by_kind(db)["sc"]
    assert dead.state == "dead" and dead.last_error == "result file cannot be read (FileNotFoundError)"
    assert source.StudyInstanceUID not in dead.last_error


def test_an_unexpected_error_in_a_transport_leaves_no_row_in_sending(knee_results, tmp_path, monkeypatch):
    from ortho_node.pipeline import delivery

    _, source, built = knee_results
    settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "X", "host": "127.0.0.1", "port": free_port()}])
    db, _ = prepare(settings, source, built)

    def buggy(*args):
        raise KeyError(source.StudyInstanceUID)  # a bug whose message would carry a UID

    monkeypatch.setitem(delivery.TRANSPORTS, "dimse", buggy)
    assert run_deliveries(db, settings, [d.id for d in deliveries(db)])["retry"] == len(built)
    rows = deliveries(db)
    assert {r.state for r in rows} == {"pending"}
    assert all(r.last_error == "delivery failed unexpectedly: KeyError" for r in rows)


def test_a_worker_past_its_lease_cannot_overwrite_the_next_claim(knee_results, tmp_path):
    from ortho_node.dimse.scu import SendOutcome
    from ortho_node.pipeline.delivery import _record, claim, requeue_stale_sending

    _, source, built = knee_results
    settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "X", "host": "127.0.0.1", "port": 1}], max_attempts=3)
    db, _ = prepare(settings, source, built)
    row_id = deliveries(db)[0].id
    (slow,) = claim(db, [row_id], lease=dt.timedelta(seconds=-1), results_dir=settings.results_dir)  # lease already over
    assert requeue_stale_sending(db, max_attempts=3) == 1
    (second,) = claim(db, [row_id], lease=dt.timedelta(minutes=5), results_dir=settings.results_dir)
    assert second.attempts == slow.attempts + 1
    assert _record(db, settings, slow, SendOutcome(slow.path, ok=False, transient=True, detail="late")) == "stale"
    assert deliveries(db)[0].state == "sending", "the second claim stands"
    assert _record(db, settings, second, SendOutcome(second.path, ok=True)) == "sent"
    assert deliveries(db)[0].state == "sent"


def test_a_send_that_kills_its_worker_on_the_last_attempt_is_dead_lettered(knee_results, tmp_path):
    from ortho_node.pipeline.delivery import claim, requeue_stale_sending

    _, source, built = knee_results
    settings = make_settings(tmp_path, [{"kind": "dimse", "name": "pacs", "ae_title": "X", "host": "127.0.0.1", "port": 1}], max_attempts=2)
    db, _ = prepare(settings, source, built)
    ids = [d.id for d in deliveries(db)]
    for _attempt in range(2):  # each claim's worker dies: the lease runs out while "sending"
        assert len(claim(db, ids, lease=dt.timedelta(seconds=-1), results_dir=settings.results_dir)) == len(ids)
        requeue_stale_sending(db, max_attempts=2)
    rows = deliveries(db)
    assert {r.state for r in rows} == {"dead"}
    assert all("worker was lost while sending" in r.last_error for r in rows)
    snapshot = collect_status(db, quarantine_dir=settings.quarantine_dir)
    assert snapshot.deliveries_by_state["dead"] == len(ids)
