"""Issue #2 acceptance over DIMSE: real DCMTK peers against a real ``ortho-node serve`` process."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from ortho_node.db.models import Instance, JobState
from tests.support.dicomfiles import dataset_bytes
from tests.support.peers import ReferenceStoreScp, echoscu, storescu
from tests.support.studies import send_with_storescu

pytestmark = pytest.mark.timeout(600)


def test_echo_succeeds_and_a_disallowed_calling_ae_is_rejected_at_association(node_factory, multiseries_study):
    node = node_factory(
        dimse={"allowed_callers": [{"ae_title": "TESTSCU"}, {"ae_title": "REMOTE", "hosts": ["10.0.0.0/8"]}]},
        worker={"embedded": False},
    ).start()
    assert echoscu(node.port).returncode == 0

    one_file = [multiseries_study.files[0].path]
    intruder = storescu(node.port, one_file, calling="INTRUDER")
    assert intruder.returncode != 0
    assert "Association Rejected" in intruder.output
    assert "Calling AE Title Not Recognized" in intruder.output

    wrong_host = storescu(node.port, one_file, calling="REMOTE")  # allowed only from 10/8, we are 127.0.0.1
    assert wrong_host.returncode != 0 and "Calling AE Title Not Recognized" in wrong_host.output

    assert not list((node.var_dir / "store").rglob("*.dcm")), "a rejected association must store nothing"
    assert "association from INTRUDER@127.0.0.1 rejected: calling AE title not allowed" in node.log()
    assert echoscu(node.port).returncode == 0, "the node keeps serving after a rejection"


def _assert_stored_exactly_as_sent(node, study, reference: ReferenceStoreScp) -> None:
    sent = reference.files_by_sop_instance_uid()
    assert len(sent) == len(study.files)
    stored = {p.stem: p for p in (node.var_dir / "store").rglob("*.dcm") if ".tmp" not in p.parts}
    assert set(stored) == {f.sop_instance_uid for f in study.files}
    for item in study.files:
        on_disk = stored[item.sop_instance_uid]
        assert dataset_bytes(on_disk) == dataset_bytes(sent[item.sop_instance_uid]), item.path.name
        assert pydicom.dcmread(on_disk).file_meta.TransferSyntaxUID == item.transfer_syntax_uid


def _send_and_check(node, study, tmp_path: Path) -> None:
    reference = ReferenceStoreScp(tmp_path / "reference").start()
    try:
        for run in send_with_storescu(reference.port, study.files):
            assert run.returncode == 0, run.output[-2000:]
    finally:
        reference.stop()
    for run in send_with_storescu(node.port, study.files):
        assert run.returncode == 0, run.output[-2000:]
        assert "Received Store Response (Success)" in run.output

    jobs = node.wait_for_jobs(lambda js: js and all(JobState(j.state).is_final for j in js))
    _assert_stored_exactly_as_sent(node, study, reference)
    assert len(jobs) == 1, [(j.id, j.state) for j in jobs]
    (job,) = jobs
    assert job.state == JobState.DONE.value, job.reason
    assert job.instance_count == len(study.files)
    assert {f["task"] for f in job.summary["findings"]} >= {"kl_grade", "acl"}, job.summary
    assert job.summary["results"]["sr"] == 1
    db = node.index()
    with db.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(study.files)
    db.dispose()
    status = node.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert snapshot["jobs_by_state"]["done"] == 1 and snapshot["instances_total"] == len(study.files)
    assert study.study_instance_uid not in status.stdout, "status must not print UIDs"


def test_multiseries_study_is_stored_byte_identical_indexed_and_queued_once(node_factory, multiseries_study, tmp_path):
    node = node_factory().start()
    _send_and_check(node, multiseries_study, tmp_path)


@pytest.mark.postgres
@pytest.mark.redis
def test_same_study_with_celery_over_redis_and_the_index_on_postgresql(
    redis_server, postgres_url, node_factory, multiseries_study, tmp_path
):
    # (fixture order matters: the node is stopped before its database is dropped)
    # Production layout: serve without a worker, plus two separate `ortho-node worker` processes.
    node = node_factory(broker_url=redis_server.url, database_url=postgres_url, worker={"embedded": False}).start()
    workers = [node.start_worker(), node.start_worker()]
    _send_and_check(node, multiseries_study, tmp_path)
    assert all(worker.poll() is None for worker in workers), "workers keep running"
    import redis

    broker = redis.Redis(host="127.0.0.1", port=redis_server.port)
    assert broker.exists("_kombu.binding.ortho"), "the job went through this Redis"
