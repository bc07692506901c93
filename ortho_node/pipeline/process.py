"""The processing step of a job: read the study, run the model, build and keep the result objects.

Data flows one way: instances (store) → ``StudyAnalyser`` (model stage) → ``StudyFindings`` →
``ResultBuilder`` (results stage) → files + index rows + deliveries. The SR goes first: it is
built, stored, indexed and (when the worker passes ``deliver_now``) sent before the Secondary
Captures are rendered, so the structured result reaches PACS without waiting for megabytes of
images. The step returns a PHI-free summary that is stored on the job and shown by ``status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.model.engine import EngineClosedError
from ortho_node.model.findings import StudyFindings
from ortho_node.pipeline.errors import PermanentJobError, SupersededJobError, TransientJobError
from ortho_node.pipeline.jobs import ClaimedJob, JobInstance, LeaseKeeper, newer_job
from ortho_node.pipeline.results_record import previous_report, record_results
from ortho_node.privacy import uid_ref
from ortho_node.results import ResultBuilder, ResultObject
from ortho_node.store import InstanceStore

log = logging.getLogger(__name__)

# Pixel data stays on disk until the model asks for it (series it does not select are never read).
_DEFER_SIZE = "256 KB"


class StudyAnalyser(Protocol):
    """What the model stage offers the pipeline (``ortho_node.model.study.StudyAnalyser``)."""

    def analyse(self, datasets: Sequence[Dataset], *, study_instance_uid: str) -> StudyFindings: ...

    def close(self) -> None: ...


def read_instances(store: InstanceStore, instances: Sequence[JobInstance]) -> list[Dataset]:
    """Open the job's stored instances (headers now, pixels on demand)."""
    datasets = []
    for instance in instances:
        path = store.absolute(instance.relative_path)
        try:
            datasets.append(pydicom.dcmread(path, defer_size=_DEFER_SIZE))
        except FileNotFoundError as exc:
            raise PermanentJobError(f"stored instance {uid_ref(instance.sop_instance_uid)} is missing from the store") from exc
        except OSError as exc:
            raise TransientJobError(f"cannot read the store: {exc.strerror}") from exc
    return datasets


def summarise(findings: StudyFindings, *, results: dict[str, int], revision: int) -> dict:
    """What the job row records: findings without PHI, outcomes, counts of result objects."""
    return {
        "model": findings.model.label,
        "synthetic_model": findings.model.synthetic,
        "revision": revision,
        "out_of_scope": findings.out_of_scope_reason,
        "findings": [
            {
                "task": f.task,
                "title": f.title,
                "side": f.laterality.value if f.laterality else None,
                "result": f.label,
                "probability": round(f.probability, 4),
            }
            for f in findings.findings
        ],
        "not_evaluated": [
            {
                "task": o.task,
                "title": o.title,
                "status": o.status.value,
                "reason": o.reason,
                "side": o.laterality.value if o.laterality else None,
            }
            for o in findings.not_evaluated
        ],
        "results": results,
    }


class AnalyseStudyStep:
    """The job step the worker runs: model → result objects → deliveries."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        store: InstanceStore,
        analyser: StudyAnalyser,
        deliver_now: Callable[[int], object] | None = None,
    ) -> None:
        """``deliver_now(job_id)`` sends the job's recorded, never-attempted deliveries (the
        worker's first attempt); the step calls it once the SR is recorded. Without it every
        object waits for the worker's attempt after the job (or for the outbox)."""
        self._settings = settings
        self._db = db
        self._store = store
        self._analyser = analyser
        self._deliver_now = deliver_now

    def close(self) -> None:
        self._analyser.close()

    def __call__(self, job: ClaimedJob) -> dict:
        if not job.instances:
            raise PermanentJobError("the job has no analysable instance left to process")
        clock = _Stopwatch()
        lease = LeaseKeeper.for_lease(self._db, job.job_id, self._settings.worker.job_lease_s)
        datasets = read_instances(self._store, job.instances)
        clock.lap("read")
        try:
            forward_before = self._forward_seconds()
            findings = self._analyser.analyse(datasets, study_instance_uid=job.study_instance_uid)
            clock.lap("analyse")
            clock.laps["model_forward"] = self._forward_seconds() - forward_before
        except EngineClosedError as exc:  # the shared engine restarting: try the job again later
            raise TransientJobError(f"the inference engine is not available: {exc}") from exc
        lease.renew_if_due()  # a long analysis must not make the job look abandoned
        previous = previous_report(self._db, job.study_id, job.study_instance_uid, exclude_job_id=job.job_id)
        revision = previous.revision + 1 if previous else 0
        builder = ResultBuilder(
            findings,
            datasets,
            revision=revision,
            predecessor=previous.reference if previous else None,
            include_key_objects=self._settings.delivery.include_key_objects,
        )
        report = builder.report()
        clock.lap("build_report")
        # Only the newest job of a study records results: a job that ran while a late series
        # made a newer one would take its revision, or overtake it as the newest result.
        newer = newer_job(self._db, job.job_id)
        if newer is not None:
            raise SupersededJobError(newer)
        self._record(job, revision, [report])
        clock.lap("record_report")
        if self._deliver_now is not None:
            try:
                self._deliver_now(job.job_id)
            except Exception:  # noqa: BLE001 - the SR is recorded; the outbox delivers it later
                log.exception("job %d: first delivery of the SR failed; the outbox will retry it", job.job_id)
            clock.lap("deliver_report")
            lease.renew_if_due()  # nor a slow PACS
        attachments = builder.attachments(report)
        clock.lap("build_attachments")
        self._record(job, revision, attachments)
        clock.lap("record_attachments")
        built = (report, *attachments)
        counts: dict[str, int] = {}
        for item in built:
            counts[item.kind.value] = counts.get(item.kind.value, 0) + 1
        log.info(
            "job %d: %d finding(s), %d not evaluated, %s",
            job.job_id,
            len(findings.findings),
            len(findings.not_evaluated),
            ", ".join(f"{n} {k}" for k, n in counts.items()) or "no result object",
        )
        summary = summarise(findings, results=counts, revision=revision)
        summary["timing_s"] = {name: round(seconds, 4) for name, seconds in clock.laps.items()}
        return summary

    def _record(self, job: ClaimedJob, revision: int, objects: Sequence[ResultObject]) -> None:
        record_results(
            self._db,
            self._settings,
            job_id=job.job_id,
            study_id=job.study_id,
            revision=revision,
            objects=[(o.kind.value, o.dataset) for o in objects],
        )

    def _forward_seconds(self) -> float:
        """Encoder time so far (the engine's counter; shared by concurrent jobs, so approximate then)."""
        engine = getattr(self._analyser, "engine", None)
        return engine.stats().forward_seconds if engine is not None else 0.0


class _Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
