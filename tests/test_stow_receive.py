"""DICOMweb STOW-RS into the node: the same durable path as C-STORE, PS3.18 responses, and a real
Orthanc sending a study by STOW-RS that comes back as SR + SC."""

from __future__ import annotations

import time

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from sqlalchemy import select

from ortho_node.db.models import Instance, JobState
from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, write_knee_study
from tests.support.dicomfiles import dataset_bytes
from tests.support.orthanc import Orthanc

pytestmark = pytest.mark.timeout(600)

TOKEN = "stow-test-token"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, REFERENCED_SOP_INSTANCE_UID = "00081197", "00081155"


@pytest.fixture
def study(tmp_path):
    return write_knee_study(
        tmp_path / "study", seed=41,
        xrays=[XrayPhantomSpec(kl_grade=2, side="L", rows=512, columns=512)],
        mr_series=[MRPhantomSpec(slices=8, rows=128, columns=128)],
        transfer_syntaxes=[JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian],
    )


def multipart(parts: list[tuple[str, bytes]], boundary: str = "ortho-boundary-42") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + data + b"\r\n"
        for kind, data in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_stores_durably_answers_per_instance_and_queues_the_study(node_factory, study):
    node = node_factory(http={"stow_token": TOKEN}, worker={"embedded": False}).start()
    base = f"http://127.0.0.1:{node.config['http']['port']}/dicomweb"
    client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {TOKEN}"})
    datasets = [pydicom.dcmread(item.path) for item in study.files]
    response = client.store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in datasets}
    assert len(response.get("FailedSOPSequence", [])) == 0

    db = node.index()
    try:
        with db.session() as session:
            rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    finally:
        db.dispose()
    assert set(rows) == stored and {row.source for row in rows.values()} == {"stow"}
    for item in study.files:  # the data set exactly as sent, in its own transfer syntax
        row = rows[pydicom.dcmread(item.path, stop_before_pixels=True).SOPInstanceUID]
        assert dataset_bytes(node.var_dir / "store" / row.path) == dataset_bytes(item.path)
    (job,) = node.wait_for_jobs(lambda jobs: len(jobs) == 1, timeout=60)
    assert job.state == JobState.QUEUED.value

    # Sent again: idempotent, one job still (nothing new arrived).
    again = client.store_instances(datasets[:2])
    assert len(again.ReferencedSOPSequence) == 2
    time.sleep(3)
    assert len(node.wait_for_jobs(lambda jobs: True)) == 1


def test_stow_refusals_are_precise(node_factory, study):
    node = node_factory(http={"stow_token": TOKEN}, worker={"embedded": False}).start()
    base = f"http://127.0.0.1:{node.config['http']['port']}/dicomweb/studies"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = study.files[0].path.read_bytes()
    body, content_type = multipart([("application/dicom", first)])

    # request-level refusals are RFC 9457 problem details, each with a log line
    for answer, code in (
        (httpx.post(base, content=body, headers={"Content-Type": content_type}), 401),
        (httpx.post(base, content=body, headers={**auth, "Content-Type": "application/dicom"}), 415),
        (httpx.post(base, content=b"garbage", headers={**auth, "Content-Type": content_type}), 400),
    ):
        assert answer.status_code == code
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["status"] == code and problem["type"] == "about:blank" and problem["title"] and problem["detail"]
        assert f"HTTP {code} for POST /dicomweb/studies" in node.log()

    # One good instance and one that is not DICOM: 202, the bad one failed with 0xC000.
    mixed, content_type = multipart([("application/dicom", first), ("application/dicom", b"\0" * 300)])
    answer = httpx.post(base, content=mixed, headers={**auth, "Content-Type": content_type})
    assert answer.status_code == 202 and answer.headers["content-type"].startswith("application/dicom+json")
    result = answer.json()
    assert len(result[REFERENCED_SOP_SEQUENCE]["Value"]) == 1
    (failed,) = result[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0xC000]

    # Addressed to another study: every instance refused with 0xA900, 409, nothing stored.
    other = f"{base}/{generate_uid()}"
    second = study.files[1].path.read_bytes()
    body, content_type = multipart([("application/dicom", second)])
    refused = httpx.post(other, content=body, headers={**auth, "Content-Type": content_type})
    assert refused.status_code == 409
    assert REFERENCED_SOP_SEQUENCE not in refused.json()  # Type 1C: absent, not empty
    (failed,) = refused.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0xA900]
    sop = pydicom.dcmread(study.files[1].path, stop_before_pixels=True).SOPInstanceUID
    assert failed[REFERENCED_SOP_INSTANCE_UID]["Value"] == [sop]
    assert not list((node.var_dir / "store").rglob(f"{sop}.dcm"))
    assert httpx.get(f"http://127.0.0.1:{node.config['http']['port']}/healthz").status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{node.config['http']['port']}/metrics").text
    assert 'ortho_stow_instances_total{status="0x0000"} 1.0' in metrics
    assert 'ortho_stow_instances_total{status="0xC000"} 1.0' in metrics
    assert 'ortho_stow_instances_total{status="0xA900"} 1.0' in metrics


@pytest.mark.orthanc
def test_orthanc_sends_a_study_by_stow_and_gets_sr_and_sc_back(node_factory, tmp_path):
    study = write_knee_study(tmp_path / "xr", seed=43, xrays=[XrayPhantomSpec(kl_grade=3, side="R")])
    orthanc = Orthanc(tmp_path / "orthanc")
    node = node_factory(
        http={"stow_token": TOKEN},
        destinations=[{"kind": "dimse", "name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
    )
    orthanc.dicomweb_servers = {
        "node": {"Url": f"http://127.0.0.1:{node.config['http']['port']}/dicomweb/",
                 "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}},
    }
    orthanc.start()
    try:
        node.start()
        for item in study.files:
            orthanc.upload(item.path)
        orthanc.stow_study_to("node", study.study_instance_uid)
        (job,) = node.wait_for_jobs(lambda js: js and all(JobState(j.state).is_final for j in js), timeout=180)
        assert job.state == JobState.DONE.value, job.reason
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            classes = [tags.get("SOPClassUID") for tags in orthanc.instances_of_study(study.study_instance_uid)]
            if SR in classes and SC in classes:
                break
            time.sleep(0.5)
        assert SR in classes and SC in classes
    finally:
        orthanc.stop()
