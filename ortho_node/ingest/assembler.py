"""Study assembly: decide when a study is complete and create exactly one job for it.

A study is *stable* once no new instance has arrived for its stable age (the longest of its
modalities' stable ages). The assembler then routes it (``rules.py``) and writes one job row:
``queued`` to be processed, or ``ignored`` with the reason. Instances arriving later put the
study back to *receiving*; when it is stable again and it holds more analysable instances than
the last job saw, a new job is created that supersedes the old one (``supersedes_job_id``). A
re-send of instances the node already has creates nothing.

Each study is decided in its own transaction, guarded by the ``last_received_at`` value read at
the start: if an instance arrives in between, the guard fails, nothing is written, and the study
is decided on a later pass. This holds on PostgreSQL (READ COMMITTED) as on SQLite.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ortho_node.config import RoutingRule, Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Instance, Job, JobEvent, JobState, Series, Study, StudyState, utcnow
from ortho_node.ingest.rules import RoutingDecision, SeriesFacts, route_study
from ortho_node.privacy import uid_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssemblyResult:
    """Jobs created by one assembler pass: ``queued`` ones must be published."""

    queued_job_ids: tuple[int, ...]
    ignored_job_ids: tuple[int, ...]
    unchanged_study_ids: tuple[int, ...]


def _series_facts(session: Session, study: Study) -> list[SeriesFacts]:
    analysable = (
        select(Instance.series_id, func.count(Instance.id))
        .where(Instance.study_id == study.id, Instance.out_of_scope_reason.is_(None))
        .group_by(Instance.series_id)
    )
    counts = dict(session.execute(analysable).all())
    return [
        SeriesFacts(
            series_id=s.id,
            series_instance_uid=s.series_instance_uid,
            modality=s.modality,
            body_part=s.body_part,
            series_description=s.series_description,
            study_description=study.study_description,
            calling_ae=s.calling_ae,
            analysable_instances=counts.get(s.id, 0),
        )
        for s in session.scalars(select(Series).where(Series.study_id == study.id).order_by(Series.id))
    ]


class Assembler:
    """Turns stable studies into jobs. Call :meth:`run_once` periodically."""

    def __init__(self, db: Database, settings: Settings, rules: Sequence[RoutingRule]) -> None:
        self._db = db
        self._settings = settings
        self._rules = tuple(rules)
        self._min_age = min([settings.stable_age.default_s, *settings.stable_age.per_modality.values()])

    def run_once(self, now: dt.datetime | None = None) -> AssemblyResult:
        now = now or utcnow()
        horizon = now - dt.timedelta(seconds=self._min_age)
        with self._db.session() as session:
            candidates = session.execute(
                select(Study.id, Study.last_received_at).where(
                    Study.state == StudyState.RECEIVING.value, Study.last_received_at <= horizon
                )
            ).all()
        queued: list[int] = []
        ignored: list[int] = []
        unchanged: list[int] = []
        for study_id, seen in candidates:
            with self._db.session() as session:
                outcome = self._assemble(session, study_id, seen, now)
            if outcome is None:
                continue
            kind, ident = outcome
            {"queued": queued, "ignored": ignored, "unchanged": unchanged}[kind].append(ident)
        return AssemblyResult(tuple(queued), tuple(ignored), tuple(unchanged))

    def _assemble(
        self, session: Session, study_id: int, seen: dt.datetime, now: dt.datetime
    ) -> tuple[str, int] | None:
        study = session.get(Study, study_id)
        if study is None:
            return None
        facts = _series_facts(session, study)
        modalities = {f.modality for f in facts if f.modality}
        if (now - seen).total_seconds() < self._settings.stable_age.for_modalities(modalities):
            return None
        claimed = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.state == StudyState.RECEIVING.value,
                Study.last_received_at == seen,
            )
            .values(state=StudyState.STABLE.value)
        )
        if claimed.rowcount != 1:
            return None  # an instance arrived meanwhile; decide on a later pass
        analysable = sum(f.analysable_instances for f in facts)
        previous = session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id.desc())).first()
        if previous is not None and previous.instance_count == analysable:
            log.info("study %s stable again with no new analysable instance; no new job", uid_ref(study.study_instance_uid))
            return ("unchanged", study_id)
        decision = route_study(self._rules, self._settings.routing.default_action, facts)
        job = self._create_job(session, study, previous, decision, analysable)
        log.info(
            "study %s stable: job %d %s (%s)",
            uid_ref(study.study_instance_uid),
            job.id,
            job.state,
            decision.reason,
        )
        return ("queued" if job.state == JobState.QUEUED.value else "ignored", job.id)

    @staticmethod
    def _create_job(
        session: Session, study: Study, previous: Job | None, decision: RoutingDecision, analysable: int
    ) -> Job:
        job = Job(
            study_id=study.id,
            state=(JobState.QUEUED if decision.process else JobState.IGNORED).value,
            reason=None if decision.process else decision.reason,
            supersedes_job_id=previous.id if previous else None,
            revision=(previous.revision + 1) if previous else 0,
            instance_count=analysable,
            routing=decision.as_json(),
            finished_at=None if decision.process else utcnow(),
        )
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, kind="created", detail=decision.reason))
        if previous is not None:
            session.add(JobEvent(job_id=job.id, kind="supersedes", detail=f"job {previous.id}"))
            # Not started yet: the new job covers everything the old one would have seen. Only
            # while still queued: a worker may claim it meanwhile (PostgreSQL does not serialise
            # this transaction with the claim); a running one ends superseded when it would
            # record its results (jobs.newer_job).
            superseded = session.execute(
                update(Job)
                .where(Job.id == previous.id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.SUPERSEDED.value, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if superseded.rowcount == 1:
                session.add(JobEvent(job_id=previous.id, kind="superseded", detail=f"by job {job.id}"))
        return job
