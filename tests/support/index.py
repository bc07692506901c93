"""Rows in a test's index: a queued job for the job task to claim."""

from __future__ import annotations

from ortho_node.db.engine import Database
from ortho_node.db.models import Job, Study


def queued_job(db: Database, study_instance_uid: str = "2.25.1234") -> int:
    """A study with one queued job (no instances); returns the job's id."""
    with db.session() as session:
        study = Study(study_instance_uid=study_instance_uid)
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, routing={"series": []})
        session.add(job)
        session.flush()
        return job.id
