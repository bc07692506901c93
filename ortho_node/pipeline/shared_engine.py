"""The prefork worker's shared engine process: started before the pool, kept running, stopped last.

With ``worker.shared_engine`` (and ``worker.pool: prefork``) the worker's main process starts
one engine process (:func:`ortho_node.model.engine_server.start_engine_process`) before Celery
forks the pool's children; each child connects to it (``StudyAnalyser.from_bundle_dir(...,
engine_socket=...)``). A watcher thread restarts the engine if it dies; meanwhile the children's
jobs fail transiently and are retried (their clients connect again on the next request).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
from pathlib import Path

from ortho_node.config import Settings
from ortho_node.model.engine_server import EngineProcess, EngineServerOptions, start_engine_process

__all__ = ["SharedEngine", "engine_socket_path"]

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, with its terminating NUL
_RESTART_DELAY_S = 5.0


def engine_socket_path(settings: Settings, worker_pid: int) -> Path:
    """Where the engine of worker ``worker_pid`` listens: under the var dir when the path fits
    a Unix socket address, else in a private folder of the temporary directory."""
    preferred = settings.var_dir.resolve() / "run" / f"engine-{worker_pid}.sock"
    if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    private = Path(tempfile.gettempdir()) / f"ortho-node-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    info = private.lstat()  # not stat(): a symbolic link planted there must not be followed
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(
            f"{private} is not a private folder of this user: cannot put the engine's socket there"
        )
    path = private / f"engine-{worker_pid}.sock"
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise RuntimeError(f"no socket path short enough for the shared engine (TMPDIR {tempfile.gettempdir()!r} is too long)")
    return path


class SharedEngine:
    """Runs and watches the engine process of one worker (see the module docstring)."""

    def __init__(self, settings: Settings, bundle_dir: Path) -> None:
        worker = settings.worker
        self.socket_path = engine_socket_path(settings, os.getpid())
        self._options = EngineServerOptions(
            bundle_dir=bundle_dir,
            socket_path=self.socket_path,
            device=worker.device,
            max_batch=worker.max_batch,
            max_wait_ms=worker.max_wait_ms,
            precision=worker.precision,
            compile=worker.compile,
            log_level=settings.log_level,
        )
        self._process: EngineProcess | None = None
        self._lock = threading.Lock()  # _process, between a restart and stop()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def process(self) -> EngineProcess | None:
        """The engine process now (a new one after a restart); None once stopped."""
        return self._process

    def start(self) -> None:
        """Start the engine and wait until it serves (raises what kept it from starting)."""
        self._process = start_engine_process(self._options)
        log.info("shared inference engine running (pid %d)", self._process.process.pid)
        self._watcher = threading.Thread(target=self._watch, name="ortho-engine-watch", daemon=True)
        self._watcher.start()

    def shutting_down(self) -> None:
        """The worker is shutting down: an engine exiting now is not restarted."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:  # a restart in progress finishes first, so its process is stopped too
            process, self._process = self._process, None
        if process is not None:
            process.stop()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            process = self._process
            if process is None or process.alive:
                continue
            log.error("shared inference engine exited (code %s); restarting it", process.process.exitcode)
            if self._stopping.wait(_RESTART_DELAY_S):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._process = start_engine_process(self._options)
                except Exception:  # noqa: BLE001 - try again after the delay; jobs meanwhile fail transiently
                    log.exception("shared inference engine could not be restarted")
