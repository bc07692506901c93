"""Jobs of one study that overlap (a late series arrives while a job runs, a worker dies and
its job is requeued, two serve processes sweep at once): only the newest job of a study
records results, a job is never overwritten while it runs, and a live job is never requeued.
On SQLite and PostgreSQL (the races below need PostgreSQL's concurrent transactions)."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

import ortho_node.ingest.assembler as assembler_module
from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Job, JobEvent, JobState, StoredResult, utcnow
from ortho_node.ingest.assembler import Assembler
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.service import IngestService, ReceivedInstance
from ortho_node.model.findings import Laterality
from ortho_node.pipeline import jobs
from ortho_node.pipeline.errors import SupersededJobError
from ortho_node.pipeline.process import AnalyseStudyStep
from ortho_node.store import InstanceStore
from tests.results_support import kl_finding, make_dx
from tests.results_support import study as findings_of
from tests.support.datasets import encode

LEASE = dt.timedelta(seconds=900)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(var_dir=tmp_path / "var", stable_age={"default_s": 5, "per_modality": {}})


@pytest.fixture
def node(settings: Settings, db: Database):
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    ingest = IngestService(store, Indexer(db))

    def receive(ds) -> None:
        ingest.receive(ReceivedInstance(io.BytesIO(encode(ds)), str(ExplicitVRLittleEndian),
                                        declared_sop_class_uid=ds.SOPClassUID, declared_sop_instance_uid=ds.SOPInstanceUID))

    return store, receive, Assembler(db, settings, ())


def later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def events(db: Database, job_id: int) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def state(db: Database, job_id: int) -> str:
    with db.session() as session:
        return session.get(Job, job_id).state


class KneeGrader:
    """A stand-in analyser: a KL finding per radiograph (the ordering, not the model, is tested)."""

    def analyse(self, datasets, *, study_instance_uid):
        side = {"L": Laterality.LEFT, "R": Laterality.RIGHT}
        return findings_of(study_instance_uid, findings=tuple(
            kl_finding(d, laterality=side[str(d.ImageLaterality)], region=None) for d in datasets
        ))

    def close(self) -> None:
        pass


def late_series_while_a_runs(db, node):
    """Job A (left knee) running; the right knee arrives late: job B, A not superseded."""
    store, receive, assembler = node
    study = generate_uid()
    receive(make_dx(study, laterality="L"))
    job_a = assembler.run_once(now=later(60)).queued_job_ids[0]
    a = jobs.claim(db, job_a, worker="w1")
    receive(make_dx(study, laterality="R"))
    job_b = assembler.run_once(now=later(120)).queued_job_ids[0]
    assert state(db, job_a) == JobState.RUNNING.value
    return a, job_b


def test_only_the_newest_job_of_a_study_records_results(settings, db, node):
    """A would take B's revision (both read 'no previous SR') or, finishing last, become the
    newest result with the older images: it ends superseded, B's SR is revision 0 of both."""
    store = node[0]
    a, job_b = late_series_while_a_runs(db, node)
    b = jobs.claim(db, job_b, worker="w2")
    step = AnalyseStudyStep(settings=settings, db=db, store=store, analyser=KneeGrader())
    with pytest.raises(SupersededJobError) as superseded:
        step(a)
    assert superseded.value.newer_job_id == job_b
    assert jobs.supersede(db, a.job_id, by=job_b, states=(JobState.RUNNING,))
    summary = step(b)
    assert jobs.complete(db, job_b, summary) and summary["revision"] == 0
    with db.session() as session:
        results = session.execute(select(StoredResult.job_id, StoredResult.kind, StoredResult.revision)).all()
    assert {(job, revision) for job, _, revision in results} == {(job_b, 0)}
    assert state(db, a.job_id) == JobState.SUPERSEDED.value and events(db, a.job_id)[-1] == "superseded"


def test_a_requeued_job_behind_a_newer_one_is_superseded_not_run_again(db, node):
    """A's worker died; B was created and runs. The stale-lease sweep requeues A, but its claim
    supersedes it: run again it would produce a newer revision from older images."""
    a, job_b = late_series_while_a_runs(db, node)
    assert jobs.requeue_stale(db, lease=LEASE, max_attempts=3, now=later(LEASE.total_seconds() + 60)) == [a.job_id]
    assert jobs.claim(db, a.job_id, worker="w3") is None
    assert state(db, a.job_id) == JobState.SUPERSEDED.value
    assert events(db, a.job_id)[-2:] == ["requeued", "superseded"]
    assert jobs.claim(db, job_b, worker="w2") is not None  # the newest one runs


@pytest.mark.postgres
def test_the_assembler_supersedes_a_job_only_while_it_is_queued(db, node, monkeypatch):
    """PostgreSQL: a worker claims A between the assembler's read of A and its update; A keeps
    running (it ends superseded itself when it would record), it is not overwritten."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the assembler's transaction with the claim")
    store, receive, assembler = node
    study = generate_uid()
    receive(make_dx(study, laterality="L"))
    job_a = assembler.run_once(now=later(60)).queued_job_ids[0]
    receive(make_dx(study, laterality="R"))
    real_route = assembler_module.route_study

    def route_while_a_worker_claims(*args, **kwargs):
        assert jobs.claim(db, job_a, worker="w1") is not None
        return real_route(*args, **kwargs)

    monkeypatch.setattr(assembler_module, "route_study", route_while_a_worker_claims)
    assembler.run_once(now=later(120))
    assert state(db, job_a) == JobState.RUNNING.value
    assert "superseded" not in events(db, job_a)


@pytest.mark.postgres
def test_two_sweeps_do_not_requeue_a_job_a_worker_claimed_meanwhile(settings, db, node, monkeypatch):
    """PostgreSQL, two serve processes: between the first sweep's select and its update, the
    second requeued the job and a worker claimed it again; the first must leave it running."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the two sweeps")
    store, receive, assembler = node
    receive(make_dx(generate_uid(), laterality="L"))
    job_a = assembler.run_once(now=later(60)).queued_job_ids[0]
    jobs.claim(db, job_a, worker="w1")
    other = Database(str(db.engine.url.render_as_string(hide_password=False)))
    real_event = jobs._event
    fired = []

    def meanwhile(job_id, kind, detail=None, **kwargs):
        if not fired:
            fired.append(kind)
            with other.session() as session:  # the other sweep's effect: requeued, then claimed again
                session.get(Job, job_a).state = JobState.QUEUED.value
            assert jobs.claim(other, job_a, worker="w2") is not None
        return real_event(job_id, kind, detail, **kwargs)

    monkeypatch.setattr(jobs, "_event", meanwhile)
    try:
        assert jobs.requeue_stale(db, lease=LEASE, max_attempts=3, now=later(LEASE.total_seconds() + 60)) == []
    finally:
        other.dispose()
    assert state(db, job_a) == JobState.RUNNING.value
    with db.session() as session:
        assert session.get(Job, job_a).worker == "w2"
