"""Issue #2 acceptance: nothing lost, nothing silent, when things go wrong.

Crash in the middle of a transfer, broker outage, corrupt and mismatched data sets, unsupported
SOP classes, aborted associations, a full disk and a failing store. Senders are DCMTK where
DCMTK can produce the situation; pynetdicom (streaming a file's raw bytes, or sending a partial
instance then A-ABORT) where DCMTK cannot send broken data.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, MRImageStorage
from sqlalchemy import func, select

from ortho_node.db.models import Instance, Job, JobState
from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, write_knee_study
from tests.support.dicomfiles import dataset_bytes
from tests.support.peers import DCMTK_ENV, ReferenceStoreScp, echoscu, storescu
from tests.support.studies import send_with_storescu

pytestmark = pytest.mark.timeout(600)


def stored_files(node) -> dict[str, Path]:
    return {p.stem: p for p in (node.var_dir / "store").rglob("*.dcm") if ".tmp" not in p.parts}


def instance_count(node) -> int:
    db = node.index()
    try:
        with db.session() as session:
            return int(session.scalar(select(func.count(Instance.id))))
    finally:
        db.dispose()


def acknowledged_files(storescu_output: str) -> list[str]:
    """Files whose C-STORE got Success, from ``storescu -v`` (a 'Sending file' line then its response)."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


# ------------------------------------------------------------------------------------ crash


@pytest.fixture(scope="module")
def mr_series_study(tmp_path_factory):
    return write_knee_study(tmp_path_factory.mktemp("crash"), seed=11, mr_series=[MRPhantomSpec(slices=80)])


def test_sigkill_mid_transfer_loses_no_acknowledged_instance_and_the_study_is_processed_once(
    node_factory, mr_series_study, tmp_path
):
    reference = ReferenceStoreScp(tmp_path / "reference").start()
    send_with_storescu(reference.port, mr_series_study.files)
    reference.stop()
    sent = reference.files_by_sop_instance_uid()
    # MR stable age outlasts the restart, so the study is assembled only once everything is in.
    node = node_factory(stable_age={"default_s": 8.0, "per_modality": {"MR": 8.0}}).start()
    paths = [str(f.path) for f in mr_series_study.files]
    sender = subprocess.Popen(
        ["storescu", "-v", "-aet", "TESTSCU", "-aec", "ORTHO", "127.0.0.1", str(node.port), *paths],
        env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while len(stored_files(node)) < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    node.kill()  # SIGKILL: no chance to clean up
    output, _ = sender.communicate(timeout=60)
    acked = acknowledged_files(output)
    assert 0 < len(acked) < len(paths), f"the kill must land mid-transfer ({len(acked)} acknowledged)"

    uid_of = {str(f.path): f.sop_instance_uid for f in mr_series_study.files}
    on_disk = stored_files(node)
    for path in acked:
        uid = uid_of[path]
        assert uid in on_disk, "an acknowledged instance is missing after the crash"
    for uid, path in on_disk.items():  # no partial file under a final name, acknowledged or not
        assert dataset_bytes(path) == dataset_bytes(sent[uid])

    node.start()
    assert not any((node.var_dir / "store" / ".tmp").iterdir()), "temp files of the crash are discarded"
    for run in send_with_storescu(node.port, mr_series_study.files):
        assert run.returncode == 0, run.output[-2000:]
    jobs = node.wait_for_jobs(lambda js: js and all(JobState(j.state).is_final for j in js), timeout=90)
    time.sleep(3)  # a second job would appear within a couple of assembler passes
    jobs = node.wait_for_jobs(lambda js: True)
    assert [(j.state, j.instance_count) for j in jobs] == [(JobState.DONE.value, 80)]
    assert set(stored_files(node)) == set(sent)
    assert instance_count(node) == 80


# ------------------------------------------------------------------------------ broker outage


@pytest.mark.redis
def test_job_of_a_study_stable_while_the_broker_is_down_is_published_when_it_is_back(redis_server, node_factory, tmp_path):
    study = write_knee_study(tmp_path / "study", seed=21, xrays=[XrayPhantomSpec(kl_grade=1, side="R", rows=512, columns=512)])
    node = node_factory(broker_url=redis_server.url).start()
    redis_server.stop()
    for run in send_with_storescu(node.port, study.files):
        assert run.returncode == 0, "ingest must not depend on the broker"
    (job,) = node.wait_for_jobs(lambda js: len(js) == 1, timeout=60)
    time.sleep(3)  # several sweeper passes with the broker down
    (job,) = node.wait_for_jobs(lambda js: True)
    assert job.state == JobState.QUEUED.value and job.published_at is None
    status = node.cli("status", "--json")
    assert '"unpublished_jobs": 1' in status.stdout
    assert "broker unavailable" in node.log()

    redis_server.start()  # same port
    (job,) = node.wait_for_jobs(lambda js: js[0].state == JobState.DONE.value, timeout=120)
    assert job.published_at is not None


# --------------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_input_node(node_factory):
    return node_factory(worker={"embedded": False}).start()


def pynetdicom_store(port: int, path: Path, sop_class: str) -> int:
    """Send a file's raw bytes (no decoding, no validation) and return the DIMSE status."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="ORTHO")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return int(status.Status)


def small_mr_file(tmp_path: Path, **changes) -> Path:
    study = write_knee_study(tmp_path / f"src{generate_uid()[-6:]}", seed=5, mr_series=[MRPhantomSpec(slices=8, rows=64, columns=64)])
    path = study.files[0].path
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_corrupt_dataset_gets_cannot_understand_and_nothing_is_stored(bad_input_node, tmp_path):
    good = small_mr_file(tmp_path)
    corrupt = tmp_path / "corrupt.dcm"
    raw = good.read_bytes()
    offset = raw.index(b"DICM") + 4
    meta_end = offset + 12 + int.from_bytes(raw[offset + 8 : offset + 12], "little")
    corrupt.write_bytes(raw[:meta_end] + b"\xff\xfe" * 400)  # no DICOM element parses from this
    assert pynetdicom_store(bad_input_node.port, corrupt, MRImageStorage) == 0xC000
    assert stored_files(bad_input_node) == {} and instance_count(bad_input_node) == 0
    assert "refused (0xC000)" in bad_input_node.log()
    assert echoscu(bad_input_node.port).returncode == 0


def test_dataset_without_study_uid_or_contradicting_the_request_gets_a900(bad_input_node, tmp_path):
    no_study = small_mr_file(tmp_path, StudyInstanceUID=None)
    assert pynetdicom_store(bad_input_node.port, no_study, MRImageStorage) == 0xA900
    mismatch = small_mr_file(tmp_path)
    ds = pydicom.dcmread(mismatch)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # what the request will declare
    pydicom.dcmwrite(mismatch, ds, enforce_file_format=False)  # keep the contradicting File Meta as set
    assert pynetdicom_store(bad_input_node.port, mismatch, MRImageStorage) == 0xA900
    assert stored_files(bad_input_node) == {}
    assert "StudyInstanceUID (Type 1) is missing" in bad_input_node.log()
    assert "differs from the declared one" in bad_input_node.log()


def test_values_pydicom_or_pynetdicom_find_invalid_stay_out_of_the_log(bad_input_node, tmp_path):
    """pydicom ("Invalid value for VR UI: '…'") and pynetdicom ("Non-conformant … value '…'")
    quote what they find invalid: here a UID (a leading zero in a component), elsewhere a name
    or a date. The node's log carries the message, not the value."""
    bad_uid = "1.2.826.0.1.3680043.8.498.07770001"
    path = small_mr_file(tmp_path)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    ds.save_as(path, enforce_file_format=True)
    status = pynetdicom_store(bad_input_node.port, path, MRImageStorage)
    assert status == 0xA900
    log = bad_input_node.log()
    assert "Invalid value for VR UI: <redacted>" in log or "value <redacted>" in log, log[-2000:]
    assert "07770001" not in log


def test_unsupported_sop_class_is_refused_at_negotiation_and_logged(bad_input_node, tmp_path):
    unknown_class = "1.2.826.0.1.3680043.8.498.1"  # a private UID, not a storage SOP class
    path = small_mr_file(tmp_path, SOPClassUID=unknown_class)
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = unknown_class
    ds.save_as(path, enforce_file_format=True)
    run = storescu(bad_input_node.port, [path])  # DCMTK does not even propose a class it does not know
    assert run.returncode != 0 and "No presentation context" in run.output

    ae = AE(ae_title="TESTSCU")  # pynetdicom proposes it: the node must refuse the context
    ae.add_requested_context(unknown_class, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", bad_input_node.port, ae_title="ORTHO")
    assert assoc.is_established
    refused = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == unknown_class]
    assert refused and refused[0].result == 0x03  # abstract syntax not supported
    assoc.release()
    assert stored_files(bad_input_node) == {}
    assert "presentation context refused for 1.2.826.0.1.3680043.8.498.1" in bad_input_node.log()
    good = small_mr_file(tmp_path)
    assert storescu(bad_input_node.port, [good]).returncode == 0, "the node keeps serving"


def test_aborted_association_keeps_acknowledged_instances_and_drops_the_partial_one(bad_input_node, tmp_path):
    study = write_knee_study(tmp_path / "ab", seed=8, mr_series=[MRPhantomSpec(slices=8, rows=64, columns=64)])
    first_three = [f.path for f in study.files[:3]]
    aborted = storescu(bad_input_node.port, first_three, extra=("--abort",))
    assert aborted.output.count("Received Store Response (Success)") == 3
    assert set(stored_files(bad_input_node)) == {f.sop_instance_uid for f in study.files[:3]}

    # A partial instance: command and part of the data set on the wire, then A-ABORT.
    big = write_knee_study(tmp_path / "big", seed=9, xrays=[XrayPhantomSpec(kl_grade=2, side="L", rows=2000, columns=2000)])
    ds = pydicom.dcmread(big.files[0].path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", bad_input_node.port, ae_title="ORTHO", max_pdu=16382)
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = list(message.encode_msg(context.context_id, 16382))
    assert len(pdus) > 10
    for primitive in pdus[: len(pdus) // 2]:
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        assoc.dul.socket.send(pdu.encode())
    assoc.abort()
    time.sleep(1.0)
    assert ds.SOPInstanceUID not in stored_files(bad_input_node), "a partial instance must never be stored"
    assert not any((bad_input_node.var_dir / "store" / ".tmp").iterdir())
    assert instance_count(bad_input_node) == 3
    assert "aborted" in bad_input_node.log()
    assert echoscu(bad_input_node.port).returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill the disk: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_gets_out_of_resources_and_nothing_is_indexed(node_factory, tmp_path):
    node = node_factory(worker={"embedded": False})
    study = write_knee_study(tmp_path / "dx", seed=3, xrays=[XrayPhantomSpec(kl_grade=2, side="L", rows=1500, columns=1500)])
    with tmpfs(node.var_dir / "store", "1m"):
        node.start()
        run = storescu(node.port, [study.files[0].path], extra=("-d",))
        assert "Refused: OutOfResources" in run.output or "0xa700" in run.output.lower()
        assert stored_files(node) == {} and instance_count(node) == 0
        assert "refused (0xA700)" in node.log()
        assert not any((node.var_dir / "store" / ".tmp").iterdir()), "the failed temp file is removed"
        node.stop()


def test_store_write_failure_gets_a701_and_nothing_is_indexed(bad_input_node, tmp_path):
    tmp_dir = bad_input_node.var_dir / "store" / ".tmp"
    shutil.rmtree(tmp_dir)
    tmp_dir.write_text("not a directory")  # every temp file creation now fails (ENOTDIR), even as root
    path = small_mr_file(tmp_path)
    run = storescu(bad_input_node.port, [path], extra=("-d",))
    assert "0xa701" in run.output.lower()
    assert instance_count(bad_input_node) == 0
    assert "refused (0xA701)" in bad_input_node.log()
    tmp_dir.unlink()
    tmp_dir.mkdir()
    assert storescu(bad_input_node.port, [path]).returncode == 0 and instance_count(bad_input_node) == 1
