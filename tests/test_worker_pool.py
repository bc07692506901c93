"""Worker processes: the pool that runs jobs, and loading the model they need."""

from __future__ import annotations

from pathlib import Path

from ortho_node.db.models import JobState
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study
from tests.support.peers import storescu


def _parent_pid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_prefork_pool_runs_jobs_in_child_processes_of_the_worker(node_factory, tmp_path) -> None:
    node = node_factory(worker={"pool": "prefork", "concurrency": 2}).start()
    studies = [
        write_knee_study(tmp_path / f"study{i}", seed=40 + i,
                         xrays=[XrayPhantomSpec(kl_grade=i, side="R", rows=512, columns=512)])
        for i in range(3)
    ]
    for study in studies:
        sent = storescu(node.port, [f.path for f in study.files])
        assert sent.returncode == 0, sent.output[-2000:]
    jobs = node.wait_for_jobs(
        lambda js: len(js) == len(studies) and all(JobState(j.state).is_final for j in js)
    )
    assert all(j.state == JobState.DONE.value for j in jobs), [(j.state, j.reason) for j in jobs]
    assert all(j.summary["results"]["sr"] == 1 for j in jobs)
    # serve -> `ortho-node worker` (the pool's parent) -> prefork children, which ran the jobs.
    pids = {int(j.worker.rsplit(":", 1)[1]) for j in jobs}
    workers = {_parent_pid(pid) for pid in pids}
    assert len(workers) == 1, "one worker process owns the pool"
    (worker,) = workers
    assert worker not in pids, "jobs run in the pool's children, not in the worker itself"
    assert _parent_pid(worker) == node.process.pid, "the worker is the one serve started"


def test_a_worker_that_cannot_load_its_model_fails_the_job_with_the_reason(node_factory, tmp_path) -> None:
    node = node_factory(worker={"bundle": str(tmp_path / "no-such-bundle")}).start()
    study = write_knee_study(tmp_path / "study", seed=50,
                             xrays=[XrayPhantomSpec(kl_grade=1, side="L", rows=512, columns=512)])
    sent = storescu(node.port, [f.path for f in study.files])
    assert sent.returncode == 0, sent.output[-2000:]
    (job,) = node.wait_for_jobs(lambda js: len(js) == 1 and JobState(js[0].state).is_final)
    assert job.state == JobState.FAILED.value
    assert "no-such-bundle" in job.reason, job.reason
