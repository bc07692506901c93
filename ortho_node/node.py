"""The serving node: wires store, index, SCP, assembler, outbox and (embedded) worker together.

``ortho-node serve`` builds one :class:`Node` and runs it until SIGTERM/SIGINT. This module is
the composition root: the only place that knows every stage; the stages know only their
neighbours' typed interfaces.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.dimse.scp import RunningScp, start_scp
from ortho_node.ingest.assembler import Assembler
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.rules import load_rules
from ortho_node.ingest.service import IngestService
from ortho_node.pipeline.celery_app import NodeCelery
from ortho_node.pipeline.jobs import requeue_stale
from ortho_node.pipeline import commitment
from ortho_node.pipeline.delivery import due_batches, requeue_stale_sending
from ortho_node.pipeline.outbox import OutboxPublisher, delivery_message, due_jobs, job_message
from ortho_node.store import InstanceStore
from ortho_node.web.app import create_app
from ortho_node.web.metrics import IndexCollector, IngestMetrics
from ortho_node.web.server import HttpServer

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_REPUBLISH_AFTER = dt.timedelta(minutes=30)
_STALE_CHECK_EVERY_S = 10.0


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (even by SIGKILL), so no orphan worker."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedWorker:
    """An ``ortho-node worker`` child process, restarted if it dies while the node runs."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self._restarts = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "ortho_node.cli", "worker"]
        self._process = subprocess.Popen(command, env=self._env, preexec_fn=_die_with_parent)  # noqa: S603
        log.info("embedded worker started (pid %d)", self._process.pid)

    def check(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._restarts += 1
            log.error("embedded worker exited with code %s; restarting (%d)", self._process.returncode, self._restarts)
            time.sleep(min(30.0, 2.0**self._restarts))
            self.start()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Node:
    """Everything ``serve`` runs, in one object with start/stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_worker: bool | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._start_worker = settings.worker.embedded if start_worker is None else start_worker
        self._worker_env = dict(os.environ if worker_env is None else worker_env)
        self._stop = threading.Event()
        self._outbox_wakeup = threading.Event()
        self._last_stale_check = 0.0
        self._threads: list[threading.Thread] = []
        self.scp: RunningScp | None = None
        self.http: HttpServer | None = None
        self.worker: EmbeddedWorker | None = None

    def start(self) -> None:
        settings = self.settings
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.effective_database_url)
        self.db = Database(settings.effective_database_url)
        self.store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
        self.store.discard_temporary_files()
        self.ingest = IngestService(self.store, Indexer(self.db))
        self.assembler = Assembler(self.db, settings, load_rules(settings.routing))
        self.app = NodeCelery(settings)
        self.publisher = OutboxPublisher(self.app)
        self.registry = CollectorRegistry()
        self.registry.register(IndexCollector(self.db, settings.quarantine_dir))
        if settings.http.enabled:  # built first: an unsafe HTTP setup stops start-up before any port opens
            self.http = HttpServer(create_app(settings, self.db, self.registry, self.ingest), settings.http)
            self.http.start()
        self.scp = start_scp(
            settings.dimse, self.ingest, IngestMetrics(self.registry),
            commitment_reports=lambda report, pacs_ae: commitment.record_report(self.db, settings, report, pacs_ae),
        )
        if self._start_worker:
            self.worker = EmbeddedWorker(self._worker_env)
            self.worker.start()
        for name, target in (("assembler", self._assembler_loop), ("outbox", self._outbox_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def run_until_signalled(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        self._stop.wait()
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self.scp is not None:
            self.scp.stop()
        if self.http is not None:
            self.http.stop()
        self._outbox_wakeup.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.worker is not None:
            self.worker.stop()
        if hasattr(self, "db"):
            self.db.dispose()
        log.info("node stopped")

    def run_assembly_pass(self) -> None:
        """Assemble stable studies; wake the outbox when jobs were created."""
        result = self.assembler.run_once()
        if result.queued_job_ids:
            self._outbox_wakeup.set()

    def run_outbox_pass(self) -> None:
        """Publish what is due, and recover jobs whose worker went silent."""
        worker_settings = self.settings.worker
        if time.monotonic() - self._last_stale_check > _STALE_CHECK_EVERY_S:
            self._last_stale_check = time.monotonic()
            requeue_stale(
                self.db,
                lease=dt.timedelta(seconds=worker_settings.job_lease_s),
                max_attempts=worker_settings.max_attempts,
            )
            requeue_stale_sending(self.db, max_attempts=self.settings.delivery.max_attempts)
            commitment.expire(self.db, self.settings)
        messages = [job_message(self.db, job_id) for job_id in due_jobs(self.db, republish_after=_REPUBLISH_AFTER)]
        messages += [delivery_message(self.db, batch) for batch in due_batches(self.db, republish_after=_REPUBLISH_AFTER)]
        self.publisher.publish(messages)

    def _assembler_loop(self) -> None:
        while not self._stop.wait(self.settings.assembler_interval_s):
            try:
                self.run_assembly_pass()
                if self.worker is not None:
                    self.worker.check()
            except Exception:  # the loop must survive a bad pass (e.g. the database restarting)
                log.exception("assembler pass failed; retrying next interval")

    def _outbox_loop(self) -> None:
        # Its own thread: a broker that is down (seconds per attempt) never delays assembly.
        while not self._stop.is_set():
            self._outbox_wakeup.wait(self.settings.assembler_interval_s)
            self._outbox_wakeup.clear()
            if self._stop.is_set():
                return
            try:
                self.run_outbox_pass()
            except Exception:
                log.exception("outbox pass failed; retrying next interval")
