"""The Celery application: built from Settings, one per process, tasks registered on it.

Embedded default broker: kombu's SQLAlchemy transport on a SQLite file under the var dir (no
server to run). Production: ``broker_url: redis://…``. Either way tasks take job ids only,
claim their job atomically, and are safe to run twice (``acks_late``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown, worker_shutdown, worker_shutting_down

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import JobState
from ortho_node.pipeline import embedded_broker  # noqa: F401 - registers the 'orthosqla' kombu transport
from ortho_node.pipeline import jobs
from ortho_node.pipeline.context import JobStep, WorkerContext
from ortho_node.pipeline.errors import PermanentJobError, SupersededJobError, TransientJobError
from ortho_node.pipeline.delivery import DELIVER_TASK, pending_for_job, run_deliveries
from ortho_node.pipeline.outbox import PROCESS_STUDY_TASK
from ortho_node.store import InstanceStore

if TYPE_CHECKING:  # torch loads in workers only, not in serve, which publishes tasks
    from ortho_node.pipeline.shared_engine import SharedEngine

log = logging.getLogger(__name__)


def _broker_transport_options(settings: Settings) -> dict:
    url = settings.effective_broker_url
    if settings.broker_is_embedded:
        # Passed to create_engine by kombu: wait on a locked SQLite file instead of failing.
        return {"connect_args": {"timeout": 30}}
    if url.startswith(("redis://", "rediss://")):
        # A task may run for minutes on a slow CPU; redelivery must not start before the lease.
        return {
            "visibility_timeout": int(settings.worker.job_lease_s * 2),
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        }
    return {}


class NodeCelery(Celery):
    """Celery app carrying the node's Settings and a lazily built worker context."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("ortho_node", broker=settings.effective_broker_url)
        self.settings = settings
        self._context: WorkerContext | None = None
        self._context_lock = threading.Lock()
        self._shared_engine: SharedEngine | None = None
        self.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            result_backend=None,
            task_acks_late=True,
            task_reject_on_worker_lost=False,  # a job that kills workers must not loop; the lease sweeper retries it
            worker_prefetch_multiplier=1,
            task_default_queue="ortho",
            broker_connection_retry_on_startup=True,
            broker_connection_timeout=3,
            broker_transport_options=_broker_transport_options(settings),
            worker_hijack_root_logger=False,
            worker_send_task_events=False,
            enable_utc=True,
        )
        register_tasks(self)
        # worker_init and worker_shutdown fire in the worker itself (before the pool forks, after
        # it stopped), worker_process_shutdown in prefork children.
        worker_init.connect(self._on_worker_init, weak=False)
        worker_shutting_down.connect(lambda **_: self._shared_engine and self._shared_engine.shutting_down(), weak=False)
        worker_shutdown.connect(lambda **_: self._on_worker_shutdown(), weak=False)
        worker_process_shutdown.connect(lambda **_: self.close_worker_context(), weak=False)

    @property
    def shared_engine_socket(self) -> Path | None:
        """The socket of this worker's shared engine (prefork children inherit it); None without one."""
        return self._shared_engine.socket_path if self._shared_engine is not None else None

    def _on_worker_init(self, sender: object = None, **_: object) -> None:
        if getattr(sender, "app", self) is not self or not self.settings.worker.shared_engine:
            return
        from ortho_node.model.study import default_bundle_dir
        from ortho_node.pipeline.shared_engine import SharedEngine

        engine = SharedEngine(self.settings, self.settings.worker.bundle or default_bundle_dir())
        engine.start()  # a failure stops the worker before any child runs a job
        self._shared_engine = engine

    def _on_worker_shutdown(self) -> None:
        self.close_worker_context()
        if self._shared_engine is not None:
            self._shared_engine.stop()
            self._shared_engine = None

    def close_worker_context(self) -> None:
        with self._context_lock:
            if self._context is not None:
                self._context.close()
                self._context = None

    def worker_context(self) -> WorkerContext:
        """The process-wide context, built on first use (in the worker, not at import)."""
        with self._context_lock:
            if self._context is None:
                self._context = build_worker_context(self.settings, engine_socket=self.shared_engine_socket)
            return self._context


def build_analysis_step(context: WorkerContext) -> JobStep:
    """The model-backed job step: loads the bundle once for this worker process."""
    from ortho_node.allocator import keep_freed_memory_for_reuse
    from ortho_node.model.study import StudyAnalyser, default_bundle_dir
    from ortho_node.pipeline.process import AnalyseStudyStep

    worker = context.settings.worker
    keep_freed_memory_for_reuse()  # this process prepares the images
    if worker.pool == "prefork":
        from ortho_node.model.threads import configure_engine_threads

        # Each child its share of this process's CPUs: all of them each would oversubscribe.
        configure_engine_threads(max(1, len(os.sched_getaffinity(0)) // worker.concurrency))
    analyser = StudyAnalyser.from_bundle_dir(
        worker.bundle or default_bundle_dir(),
        engine_socket=context.engine_socket,
        device=worker.device,
        max_batch=worker.max_batch,
        max_wait_ms=worker.max_wait_ms,
        compile=worker.compile,
        precision=worker.precision,
    )
    db, settings, associations = context.db, context.settings, context.associations
    return AnalyseStudyStep(
        settings=settings,
        db=db,
        store=context.store,
        analyser=analyser,
        # The SR leaves as soon as it is recorded, before the captures are rendered.
        deliver_now=lambda job_id: run_deliveries(db, settings, pending_for_job(db, job_id), associations=associations),
    )


def build_worker_context(settings: Settings, *, engine_socket: Path | None = None) -> WorkerContext:
    db = Database(settings.effective_database_url)
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    return WorkerContext(
        settings=settings, db=db, store=store, build_step=build_analysis_step, engine_socket=engine_socket
    )


def _raising(exc: Exception) -> JobStep:
    def step(job: jobs.ClaimedJob) -> NoReturn:
        raise exc

    return step


def _backoff_s(retries: int) -> float:
    return min(600.0, 5.0 * (2**retries))


def register_tasks(app: NodeCelery) -> None:
    max_attempts = app.settings.worker.max_attempts
    # shared=False: each app's tasks close over that app's settings; shared tasks would be
    # added to every app created later, clashing by name with its own (a second app in one
    # process: tests, `ortho-node demo`).

    @app.task(
        name=PROCESS_STUDY_TASK, bind=True, acks_late=True, max_retries=max_attempts - 1,
        shared=False,
    )
    def process_study(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
        """Run one job: claim it, process it, record done/failed. Returns the outcome."""
        from ortho_node.model.engine import EngineClosedError

        context = self.app.worker_context()
        try:
            # The model loads (and compiles: minutes) before the job is claimed, so that its
            # lease does not run out meanwhile (a duplicate message, skipped below, may thus
            # load a model once per process); a failure to load fails the claimed job below.
            step = context.step()
        except EngineClosedError as exc:  # the shared engine (re)starting: not the job's fault
            step = _raising(TransientJobError(f"the inference engine is not available: {exc}"))
        except Exception as exc:  # noqa: BLE001 - recorded on the job once it is claimed
            step = _raising(exc)
        job = jobs.claim(context.db, job_id)
        if job is None:
            return "skipped"
        try:
            summary = step(job)
        except TransientJobError as exc:
            if self.request.retries >= self.max_retries:
                jobs.fail(context.db, job_id, f"gave up after {job.attempt} attempts: {exc}")
                return "failed"
            jobs.release_for_retry(context.db, job_id, str(exc))
            raise self.retry(exc=exc, countdown=_backoff_s(self.request.retries))
        except SupersededJobError as exc:
            jobs.supersede(context.db, job_id, by=exc.newer_job_id, states=(JobState.RUNNING,))
            return "superseded"
        except PermanentJobError as exc:
            jobs.fail(context.db, job_id, str(exc))
            return "failed"
        except Exception as exc:  # the task boundary: record, never lose the failure
            log.exception("job %d failed unexpectedly", job_id)
            jobs.fail(context.db, job_id, f"unexpected error: {type(exc).__name__}: {exc}")
            return "failed"
        jobs.complete(context.db, job_id, summary)
        # First delivery attempt of the rest (the SR went during the step) right here, in the
        # same worker: no second trip through the broker. Retries, backoff and dead letters
        # stay with the outbox (delivery.py).
        run_deliveries(context.db, context.settings, pending_for_job(context.db, job_id), associations=context.associations)
        return "done"

    @app.task(name=DELIVER_TASK, bind=True, acks_late=True, shared=False)
    def deliver(self, delivery_ids: list[int]) -> dict:  # type: ignore[no-untyped-def]
        """Send a batch of result objects to one destination; outcomes are recorded per row."""
        context = self.app.worker_context()
        return run_deliveries(context.db, context.settings, delivery_ids, associations=context.associations)
