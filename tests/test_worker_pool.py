"""Worker processes: the pool that runs jobs, and loading the model they need."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Job, JobState, utcnow
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study
from ortho_node.pipeline.celery_app import NodeCelery
from ortho_node.pipeline.context import WorkerContext
from ortho_node.pipeline.jobs import ClaimedJob, LeaseKeeper, claim
from ortho_node.pipeline.outbox import PROCESS_STUDY_TASK
from ortho_node.store import InstanceStore
from tests.support.index import queued_job
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


# ------------------------------------------------------------- the task, in process (no broker)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")


def _job(db: Database, job_id: int) -> Job:
    with db.session() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        session.expunge(job)
        return job


def _run_task(settings: Settings, db: Database, job_id: int, build_step) -> str:
    """The job task run in this process on a worker context whose step ``build_step`` makes."""
    app = NodeCelery(settings)
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    app._context = WorkerContext(settings=settings, db=db, store=store, build_step=build_step)
    return app.tasks[PROCESS_STUDY_TASK].apply(args=[job_id]).get()


def test_each_app_keeps_its_own_tasks(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    # Two apps in one process (the tests, `ortho-node demo`): each task closes over its own
    # app's settings. Shared tasks would be registered into every later app as well, clashing
    # by name with that app's own.
    first = NodeCelery(Settings(var_dir=tmp_path / "a", worker={"max_attempts": 2}))
    second = NodeCelery(Settings(var_dir=tmp_path / "b", worker={"max_attempts": 5}))
    assert first.tasks[PROCESS_STUDY_TASK].max_retries == 1
    assert second.tasks[PROCESS_STUDY_TASK].max_retries == 4
    assert first.tasks[PROCESS_STUDY_TASK] is not second.tasks[PROCESS_STUDY_TASK]
    clashes = [w for w in recwarn if "already registered" in str(w.message)]
    assert not clashes, [str(w.message) for w in clashes]


def test_the_model_loads_before_the_job_is_claimed(settings: Settings, db: Database) -> None:
    job_id = queued_job(db)
    seen_while_loading = []

    def build(context: WorkerContext):
        seen_while_loading.append(_job(db, job_id))
        return lambda job: {"findings": [], "seen": job.job_id}

    assert _run_task(settings, db, job_id, build) == "done"
    (loading,) = seen_while_loading
    assert loading.state == JobState.QUEUED.value and loading.attempts == 0, (
        "no lease runs while the model loads"
    )
    done = _job(db, job_id)
    assert done.state == JobState.DONE.value and done.attempts == 1 and done.summary["seen"] == job_id


def test_a_model_that_fails_to_load_fails_the_claimed_job_once(settings: Settings, db: Database) -> None:
    job_id = queued_job(db)

    def build(context: WorkerContext):
        raise RuntimeError("weights unreadable")

    assert _run_task(settings, db, job_id, build) == "failed"
    failed = _job(db, job_id)
    assert failed.state == JobState.FAILED.value and failed.attempts == 1
    assert "weights unreadable" in failed.reason


def test_the_lease_is_renewed_only_when_due(settings: Settings, db: Database) -> None:
    """A quick job writes no heartbeat after its claim; a slow one does, counted from the last."""
    job_id = queued_job(db)
    assert claim(db, job_id) is not None
    old = utcnow() - dt.timedelta(hours=1)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
    now = [0.0]
    lease = LeaseKeeper(db, job_id, interval_s=90.0, clock=lambda: now[0])
    now[0] = 89.0
    assert not lease.renew_if_due()
    assert _job(db, job_id).heartbeat_at == old  # nothing written
    now[0] = 90.0
    assert lease.renew_if_due()
    renewed = _job(db, job_id).heartbeat_at
    assert renewed - old > dt.timedelta(minutes=59)
    now[0] = 179.0
    assert not lease.renew_if_due()  # 89 s after the renewal
    now[0] = 180.0
    assert lease.renew_if_due()
    with pytest.raises(ValueError):
        LeaseKeeper(db, job_id, interval_s=0)


def test_the_serving_process_does_not_load_torch() -> None:
    # serve publishes tasks through the Celery app; only workers need the model (and ~1 s and
    # hundreds of MB for torch). The shared engine's modules must stay out of its imports.
    import subprocess
    import sys

    probe = (
        "import sys, ortho_node.cli, ortho_node.node, ortho_node.pipeline.celery_app, ortho_node.pipeline.outbox; "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0
