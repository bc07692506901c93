"""Admin steering of jobs through the CLI: list, audit trail, cancel, retry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.db.models import Job, JobEvent, JobState, Study


@pytest.fixture
def index(tmp_path):
    settings = Settings(var_dir=tmp_path / "var")
    settings.var_dir.mkdir()
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    with db.session() as session:
        study = Study(study_instance_uid="1.2.826.0.1.3680043.8.498.77")
        session.add(study)
        session.flush()
        for state in (JobState.QUEUED, JobState.FAILED, JobState.DONE):
            done = state is JobState.DONE
            session.add(Job(study_id=study.id, state=state.value, reason="boom" if state is JobState.FAILED else None,
                            revision=3, summary={"revision": 1} if done else None))
        session.flush()
        session.add(JobEvent(job_id=2, kind="failed", detail="boom", is_error=True))
    yield tmp_path / "var", db
    db.dispose()


def cli(var_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "ortho_node.cli", *args, "--var-dir", str(var_dir)], capture_output=True, text=True, timeout=120
    )


def state_of(db, job_id):
    with db.session() as session:
        return session.get(Job, job_id).state


def test_list_cancel_retry_and_events(index):
    var_dir, db = index
    listed = json.loads(cli(var_dir, "jobs", "list", "--json").stdout)
    assert [j["state"] for j in listed] == ["done", "failed", "queued"]
    # the revision of the results a job recorded (its SR's), not its count of earlier jobs
    assert [j["revision"] for j in listed] == [1, None, None]
    assert all(j["study"].startswith("u:") for j in listed), "no UIDs in the listing"
    assert "1.2.826.0.1.3680043.8.498.77" not in cli(var_dir, "jobs", "list").stdout

    assert cli(var_dir, "jobs", "cancel", "1").returncode == 0
    assert state_of(db, 1) == JobState.CANCELLED.value
    refused = cli(var_dir, "jobs", "cancel", "3")
    assert refused.returncode == 1 and "job 3 is done" in refused.stderr

    assert cli(var_dir, "jobs", "retry", "2").returncode == 0
    with db.session() as session:
        job = session.get(Job, 2)
        assert (job.state, job.reason, job.published_at, job.attempts) == (JobState.QUEUED.value, None, None, 0)
    events = cli(var_dir, "jobs", "events", "2").stdout
    assert "failed" in events and "retried" in events
    assert cli(var_dir, "jobs", "retry", "99").returncode == 1
    bogus = cli(var_dir, "jobs", "list", "--state", "bogus")  # was a traceback
    assert bogus.returncode == 2 and "'bogus' is not one of" in bogus.stderr and "Traceback" not in bogus.stderr
    assert [j["state"] for j in json.loads(cli(var_dir, "jobs", "list", "--state", "queued", "--json").stdout)] == ["queued"]
