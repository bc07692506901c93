"""Issue #4 end to end: a real Orthanc PACS pushes a knee study to ``ortho-node serve``; the node
runs the model and sends SR + SC back, by C-STORE with storage commitment (Orthanc reports to
the node that it holds them) and (second test) by STOW-RS; the test finds
them in Orthanc in the same study. Also: results routed back to the node are not re-processed.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from sqlalchemy import func, select

from ortho_node.db.models import Delivery, JobState, StoredResult
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study
from tests.support.orthanc import Orthanc
from tests.support.studies import send_with_storescu

pytestmark = [pytest.mark.orthanc, pytest.mark.timeout(600)]

SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


def wait_for(predicate, *, timeout: float = 180.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def results_in(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict]]:
    by_class: dict[str, list[dict]] = {}
    for tags in orthanc.instances_of_study(study_uid):
        by_class.setdefault(tags.get("SOPClassUID", ""), []).append(tags)
    return by_class


@pytest.fixture
def knee_study(tmp_path):
    return write_knee_study(
        tmp_path / "study", seed=77, xrays=[XrayPhantomSpec(kl_grade=3, side="L"), XrayPhantomSpec(kl_grade=1, side="R")]
    )


@pytest.mark.parametrize("transport", ["dimse", "stow"])
def test_orthanc_push_comes_back_as_sr_and_sc_in_the_same_study(node_factory, tmp_path, knee_study, transport):
    orthanc = Orthanc(tmp_path / "orthanc")
    node = node_factory(
        dimse={"allowed_callers": [{"ae_title": orthanc.aet}]},
        destinations=[
            {"kind": "dimse", "name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
             "storage_commitment": True}
            if transport == "dimse"
            else {"kind": "stow", "name": "pacs", "url": f"http://127.0.0.1:{orthanc.http_port}/dicom-web"}
        ],
    )
    orthanc.modalities = {"node": ["ORTHO", "127.0.0.1", node.port]}
    orthanc.start()
    try:
        node.start()
        for item in knee_study.files:
            orthanc.upload(item.path)
        orthanc.push_study_to("node", knee_study.study_instance_uid)  # what a routing rule does

        found = wait_for(lambda: (r := results_in(orthanc, knee_study.study_instance_uid)).get(SR) and r.get(SC) and r)
        (job,) = node.wait_for_jobs(lambda js: js and all(JobState(j.state).is_final for j in js))
        assert job.state == JobState.DONE.value, job.reason
        (sr,) = found[SR]
        assert sr["StudyInstanceUID"] == knee_study.study_instance_uid
        assert sr["PatientID"] == knee_study.patient_id
        assert len(found[SC]) >= 1 and all(sc["BurnedInAnnotation"] == "YES" for sc in found[SC])
        sides = {f["side"] for f in job.summary["findings"] if f["task"] == "kl_grade"}
        assert sides == {"L", "R"}
        # The SR leaves first: it was in Orthanc before the first capture was even rendered.
        db = node.index()
        try:
            with db.session() as s:
                sr_sent = s.scalar(
                    select(Delivery.sent_at).join(StoredResult, Delivery.result_id == StoredResult.id).where(StoredResult.kind == "sr")
                )
                first_capture = s.scalar(select(func.min(StoredResult.created_at)).where(StoredResult.kind == "sc"))
        finally:
            db.dispose()
        assert sr_sent is not None and first_capture is not None and sr_sent < first_capture
        if transport == "dimse":  # Orthanc reported, on its own association to the node, that it holds them all
            def committed() -> list[Delivery] | None:
                db = node.index()
                try:
                    with db.session() as s:
                        rows = list(s.scalars(select(Delivery)))
                finally:
                    db.dispose()
                return rows if rows and all(r.committed_at is not None for r in rows) else None

            rows = wait_for(committed, timeout=60)
            in_pacs = results_in(orthanc, knee_study.study_instance_uid)
            assert {r.state for r in rows} == {"sent"} and len(rows) == len(in_pacs[SR]) + len(in_pacs[SC])
        assert {"build_report", "deliver_report", "build_attachments"} <= set(job.summary["timing_s"])
        # what the PACS now holds of the study, sources and results together, is one consistent
        # patient / study / series hierarchy (the two knees' captures share a series)
        files = orthanc.download_study(knee_study.study_instance_uid, tmp_path / "in-pacs")
        entities = subprocess.run(["dcentvfy", *map(str, files)], capture_output=True, text=True, timeout=60)
        assert not [line for line in entities.stdout.splitlines() + entities.stderr.splitlines() if line.startswith("Error")], (
            entities.stdout + entities.stderr
        )

        # A routing rule that sends the whole study back (now with our SR/SC) must not loop.
        orthanc.push_study_to("node", knee_study.study_instance_uid)
        time.sleep(6)  # well past the stable age
        jobs = node.wait_for_jobs(lambda js: True)
        assert len(jobs) == 1, "the node's own results must not trigger a new job"
    finally:
        orthanc.stop()


def test_pacs_down_dead_letters_shown_by_status_and_resend_delivers_once(node_factory, tmp_path, knee_study):
    orthanc = Orthanc(tmp_path / "orthanc")
    node = node_factory(
        destinations=[{"kind": "dimse", "name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        delivery={"max_attempts": 2, "backoff_initial_s": 1, "backoff_max_s": 2, "include_key_objects": True},
    ).start()
    for run in send_with_storescu(node.port, knee_study.files):
        assert run.returncode == 0
    node.wait_for_jobs(lambda js: js and js[0].state == JobState.DONE.value)

    def dead_letters():
        status = node.cli("status", "--json")
        data = json.loads(status.stdout)
        return data["dead_letters"] if data["deliveries_by_state"]["dead"] and not data["deliveries_by_state"]["pending"] else None

    dead = wait_for(dead_letters, timeout=60)
    assert {d["destination"] for d in dead} == {"pacs"}
    assert all("gave up after 2 attempts" in d["last_error"] for d in dead)
    human = node.cli("status").stdout
    assert "dead-lettered deliveries" in human and knee_study.study_instance_uid not in human

    orthanc.start()
    try:
        resent = node.cli("resend", "--destination", "pacs")
        assert resent.returncode == 0 and f"{len(dead)} deliveries queued again" in resent.stdout
        found = wait_for(lambda: (r := results_in(orthanc, knee_study.study_instance_uid)).get(SR) and len(sum(r.values(), [])) == len(dead) and r)
        assert len(found[SR]) == 1 and "1.2.840.10008.5.1.4.1.1.88.59" in found, "SR, SCs and the KOS arrive once"
        again = node.cli("resend", "--all")
        assert again.returncode == 0
        time.sleep(5)
        after = results_in(orthanc, knee_study.study_instance_uid)
        assert sum(len(v) for v in after.values()) == len(dead), "re-sending everything leaves one copy of each"
    finally:
        orthanc.stop()
