"""One inference engine shared by the worker processes of a host, over a Unix socket.

A prefork worker (``worker.pool: prefork``) runs jobs in child processes so that preparation,
which is Python under each process's interpreter lock, uses many cores. Each child with its own
engine means one model copy and one CUDA context per child, and batches made of one child's
images only. With ``worker.shared_engine`` the worker starts one engine process instead
(:func:`start_engine_process`): it loads the bundle's encoder onto the device, and the children
send it their prepared images (:class:`~ortho_node.model.engine_client.RemoteEngine`); the
engine batches the requests of all children together, as it batches the jobs of a thread pool.
Heads and explanations stay in the children, on the CPU.

Protocol (:mod:`ortho_node.model.engine_wire`): on connection the server says ``hello`` (bundle
name, version and weights checksum, input shape, precision, device); then the client sends
``encode`` (an id and one image tensor), ``flush`` or ``stats``, and the server answers
``encoded`` (id, grid, CLS and patch tensors), ``failed`` (id, error type and message) or
``stats``. Answers to ``encode`` come in completion order, not request order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.engine import MAX_REQUEST_IMAGES, InferenceEngine
from ortho_node.model.engine_wire import WireError, receive_message, send_message

__all__ = ["EngineProcess", "EngineServer", "EngineServerOptions", "serve_until_stopped", "start_engine_process"]

log = logging.getLogger(__name__)

_SOCKET_MODE = 0o600  # the node's user only: the socket accepts images from anyone who can connect


class EngineServer:
    """Serves ``engine`` on a Unix socket at ``socket_path`` (created; a stale file is replaced).

    Each connection has a reading thread (requests go straight to ``engine.submit``) and a
    writing thread (answers leave in completion order), so a slow client never holds up the
    engine's batching thread. :meth:`close` stops accepting, lets the engine finish what is
    queued, sends those answers and then closes the connections; a client's later requests
    fail until it connects to a new server.
    """

    def __init__(self, engine: InferenceEngine, socket_path: str | Path) -> None:
        self._engine = engine
        self._path = Path(socket_path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a dead server's file: binding would fail on it
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(str(self._path))
        finally:
            os.umask(old_umask)
        os.chmod(self._path, _SOCKET_MODE)
        self._listener.listen(64)
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._hello = _hello(engine)
        # One request of the most images the engine takes, in float32: what a client may make us allocate.
        self._max_payload = MAX_REQUEST_IMAGES * math.prod(engine.input_shape) * 4
        self._acceptor = threading.Thread(target=self._accept, name="ortho-engine-accept", daemon=True)
        self._acceptor.start()
        log.info("shared inference engine listening (%s)", self._path.name)

    @property
    def socket_path(self) -> Path:
        return self._path

    @property
    def engine(self) -> InferenceEngine:
        return self._engine

    def close(self) -> None:
        """Stop serving: no new connections; the engine finishes what is queued and its answers
        go out; then the connections close."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._engine.close()  # requests arriving meanwhile fail with EngineClosedError, answered too
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            # The reading side only: each reader ends, and its writer sends what is queued, then stops.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
        for thread in list(self._threads):
            thread.join(timeout=10)

    def __enter__(self) -> "EngineServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                log.exception("shared inference engine: accepting a connection failed")
                time.sleep(0.1)
                continue
            thread = threading.Thread(target=self._serve, args=(connection,), name="ortho-engine-client", daemon=True)
            with self._lock:
                self._connections.add(connection)
                self._threads.add(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        answers: queue.SimpleQueue[tuple[dict[str, Any], list[torch.Tensor]] | None] = queue.SimpleQueue()
        writer = threading.Thread(target=_write, args=(connection, answers), name="ortho-engine-answer", daemon=True)
        writer.start()
        answers.put((self._hello, []))
        try:
            while True:
                message = receive_message(connection, max_payload_bytes=self._max_payload)
                if message is None:
                    return
                self._handle(*message, answers)
        except (WireError, OSError) as exc:
            if not self._closed.is_set():
                log.warning("shared inference engine: dropped a client (%s)", exc)
        finally:
            answers.put(None)
            writer.join()
            with self._lock:
                self._connections.discard(connection)
                self._threads.discard(threading.current_thread())
            connection.close()

    def _handle(self, header: dict[str, Any], tensors: list[torch.Tensor], answers: queue.SimpleQueue) -> None:
        kind = header.get("kind")
        if kind == "encode" and len(tensors) == 1 and isinstance(header.get("id"), int):
            request_id = header["id"]
            try:
                future = self._engine.submit(tensors[0])
            except Exception as exc:  # noqa: BLE001 - EngineClosedError: the client's request fails
                future = Future()
                future.set_exception(exc)
            future.add_done_callback(lambda done: answers.put(_answer(request_id, done)))
        elif kind == "flush":
            self._engine.flush()
        elif kind == "stats":
            answers.put(({"kind": "stats", "stats": dataclasses.asdict(self._engine.stats())}, []))
        else:
            raise WireError(f"unexpected message {kind!r}")


def _hello(engine: InferenceEngine) -> dict[str, Any]:
    manifest = engine.bundle.manifest
    return {
        "kind": "hello",
        "bundle": {"name": manifest.name, "version": manifest.version, "weights_sha256": manifest.weights_sha256},
        "input_shape": list(engine.input_shape),
        "max_batch": engine.max_batch,
        "precision": engine.precision.value,
        "device": str(engine.device),
    }


def _answer(request_id: int, future: Future[EncoderOutput]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    try:
        output = future.result()
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the one request it concerns
        return {"kind": "failed", "id": request_id, "error": type(exc).__name__, "message": str(exc)}, []
    return {"kind": "encoded", "id": request_id, "grid": list(output.grid)}, [output.cls, output.patches]


def _write(connection: socket.socket, answers: queue.SimpleQueue) -> None:
    while (answer := answers.get()) is not None:
        try:
            send_message(connection, *answer)
        except Exception:  # noqa: BLE001 - no answer can follow: end the connection, the client fails what waits
            log.warning("shared inference engine: cannot answer a client; closing its connection", exc_info=True)
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            return


# --------------------------------------------------------------------------- the engine process


@dataclass(frozen=True)
class EngineServerOptions:
    """What the engine process needs: the bundle, the device and the engine's options."""

    bundle_dir: Path
    socket_path: Path
    device: str = "cpu"
    max_batch: int = 32
    max_wait_ms: float = 20.0
    precision: str = "auto"
    compile: bool = False
    log_level: str = "INFO"


class EngineProcess:
    """A running engine process (:func:`start_engine_process`)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, socket_path: Path, lifeline: Connection) -> None:
        self.process = process
        self.socket_path = socket_path
        self._lifeline = lifeline

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the process to finish its queued work and exit; kill it past ``timeout``."""
        self._lifeline.close()
        # SIGTERM too: processes forked from this one since (a prefork pool's children) hold
        # copies of the pipe's end, so the engine would not see it close while they live.
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("shared inference engine did not stop within %.0f s; killing it", timeout)
            self.process.kill()
            self.process.join(5)


def start_engine_process(options: EngineServerOptions, *, ready_timeout_s: float = 3600.0) -> EngineProcess:
    """Start the engine in its own process and wait until it accepts connections.

    The process is spawned (a fresh interpreter: forking a process that holds torch threads or
    CUDA state is unsafe). It loads the bundle (checksum verified), compiles and warms up when
    asked, then serves :class:`EngineServer` until :meth:`EngineProcess.stop` or until this
    process dies (a pipe between the two: its end closes with this process).

    Raises
    ------
    RuntimeError
        The process could not load the bundle or start serving (its reason), or was not ready
        within ``ready_timeout_s`` (compiling ViT-L/16 on a GPU takes about two minutes).
    """
    context = multiprocessing.get_context("spawn")
    lifeline_child, lifeline = context.Pipe(duplex=False)
    ready_parent, ready_child = context.Pipe(duplex=False)
    process = context.Process(
        target=_engine_main, args=(options, lifeline_child, ready_child), name="ortho-engine", daemon=True
    )
    process.start()
    lifeline_child.close()
    ready_child.close()
    handle = EngineProcess(process, options.socket_path, lifeline)
    try:
        if not ready_parent.poll(ready_timeout_s):
            raise RuntimeError(f"the shared inference engine was not ready within {ready_timeout_s:.0f} s")
        try:
            status = ready_parent.recv()
        except EOFError:
            status = f"the engine process exited (code {process.exitcode}) before it was ready"
        if status != "ready":
            raise RuntimeError(f"the shared inference engine did not start: {status}")
    except BaseException:
        handle.stop(timeout=5)
        raise
    finally:
        ready_parent.close()
    return handle


def _engine_main(options: EngineServerOptions, lifeline: Connection, ready: Connection) -> None:
    from ortho_node.model.bundle import load_bundle

    logging.basicConfig(  # a fresh interpreter: the worker's format, to the inherited stderr
        level=getattr(logging, options.log_level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal stops the worker, which stops us
    try:
        bundle = load_bundle(options.bundle_dir, device=options.device)
        engine = InferenceEngine(
            bundle, max_batch=options.max_batch, max_wait_ms=options.max_wait_ms,
            precision=options.precision, compile=options.compile,
        )
        if options.compile:
            engine.warmup()
        server = EngineServer(engine, options.socket_path)
    except Exception as exc:  # noqa: BLE001 - the parent reports it; the process ends
        log.exception("shared inference engine could not start")
        ready.send(f"{type(exc).__name__}: {exc}")
        return
    terminated: list[int] = []  # the handler only notes the signal: the loop below acts on it
    signal.signal(signal.SIGTERM, lambda signum, _frame: terminated.append(signum))
    ready.send("ready")
    ready.close()
    parent_gone = threading.Event()
    threading.Thread(target=_await_end, args=(lifeline, parent_gone), daemon=True).start()
    code = serve_until_stopped(server, terminated, parent_gone)
    server.close()
    if code:
        sys.exit(code)


def serve_until_stopped(server: EngineServer, terminated: list[int], parent_gone: threading.Event) -> int:
    """Wait for SIGTERM (noted in ``terminated``) or the parent's end: 0; or for the engine to
    close itself (its batching thread failed): 1, so that the worker's watcher restarts the
    process instead of keeping an engine that fails every request."""
    while not terminated and not parent_gone.wait(0.5):
        if server.engine.closed:
            log.error("shared inference engine closed itself; exiting so that it is restarted")
            return 1
    log.info("shared inference engine stopping")
    return 0


def _await_end(lifeline: Connection, parent_gone: threading.Event) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    parent_gone.set()
