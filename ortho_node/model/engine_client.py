"""A worker process's handle on the host's shared inference engine (:mod:`.engine_server`).

:class:`RemoteEngine` offers what :class:`~ortho_node.model.study.StudyAnalyser` uses of an
:class:`~ortho_node.model.engine.InferenceEngine`: ``submit`` (a future per request), ``flush``,
``stats``, ``close`` and the bundle. Input is checked here as the engine checks it, so a bad
image fails its own future without a round trip. The client keeps its own copy of the bundle
for the task heads (they run here, on the CPU) and refuses an engine serving other weights.

When the connection breaks (the engine process died or was restarted), every pending request
fails with :class:`~ortho_node.model.engine.EngineClosedError` and the next ``submit``
connects again; the pipeline retries the jobs that failed so.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

import torch

from ortho_node.model.bundle import LoadedBundle
from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.engine import EncodingError, EngineClosedError, EngineStats, Precision, validate_images
from ortho_node.model.engine_wire import WireError, receive_message, send_message

__all__ = ["EngineMismatchError", "RemoteEngine"]

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "EncodingError": EncodingError,
    "EngineClosedError": EngineClosedError,
}


class EngineMismatchError(ValueError):
    """The shared engine serves another bundle or input size than this worker loaded."""


class _Connection:
    """One connection and the requests waiting on it; its reader thread resolves them."""

    def __init__(self, path: Path, bundle: LoadedBundle, timeout_s: float) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.settimeout(timeout_s)
            self.socket.connect(str(path))
            message = receive_message(self.socket)
            self.socket.settimeout(None)
            if message is None or message[0].get("kind") != "hello":
                raise WireError("the shared engine did not introduce itself")
            self.hello = message[0]
            _check_same_model(self.hello, bundle)
        except BaseException:
            self.socket.close()
            raise
        self.pending: dict[int, Future[EncoderOutput]] = {}
        self.stats_waiters: collections.deque[Future[dict[str, Any]]] = collections.deque()
        self.lock = threading.Lock()  # pending, stats_waiters, lost
        self.send_lock = threading.Lock()
        self.lost = False
        self.reader = threading.Thread(target=self._read, name="ortho-engine-client", daemon=True)
        self.reader.start()

    def send(self, header: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> None:
        try:
            with self.send_lock:
                send_message(self.socket, header, tensors)
        except OSError as exc:
            self.drop(f"the shared inference engine cannot be reached ({type(exc).__name__})")

    def drop(self, reason: str) -> None:
        """Fail everything waiting here and close (idempotent)."""
        with self.lock:
            if self.lost:
                return
            self.lost = True
            pending, self.pending = list(self.pending.values()), {}
            waiters = list(self.stats_waiters)
            self.stats_waiters.clear()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for future in [*pending, *waiters]:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # done or cancelled meanwhile
                future.set_exception(EngineClosedError(reason))

    def _read(self) -> None:
        reason = "the shared inference engine closed the connection"
        try:
            while (message := receive_message(self.socket)) is not None:
                self._resolve(*message)
        except (WireError, OSError) as exc:
            reason = f"the connection to the shared inference engine broke ({type(exc).__name__})"
        finally:
            self.drop(reason)
            self.socket.close()

    def _resolve(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        kind = header.get("kind")
        if kind == "stats":
            with self.lock:
                waiter = self.stats_waiters.popleft() if self.stats_waiters else None
            if waiter is not None:
                waiter.set_result(header["stats"])
            return
        with self.lock:
            future = self.pending.pop(header.get("id"), None)
        if future is None:
            raise WireError(f"an answer to no request ({kind!r})")
        try:
            if kind == "encoded" and len(tensors) == 2:
                rows, columns = header["grid"]
                future.set_result(EncoderOutput(cls=tensors[0], patches=tensors[1], grid=(int(rows), int(columns))))
            elif kind == "failed":
                error = _ERRORS.get(header.get("error"), EncodingError)
                future.set_exception(error(str(header.get("message", ""))))
            else:
                future.set_exception(EncodingError(f"unexpected answer from the shared engine ({kind!r})"))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled: its caller gave up waiting (the study's time limit), the answer came late


def _check_same_model(hello: dict[str, Any], bundle: LoadedBundle) -> None:
    served = hello.get("bundle") or {}
    manifest = bundle.manifest
    if served.get("weights_sha256") != manifest.weights_sha256:
        raise EngineMismatchError(
            f"the shared inference engine serves {served.get('name')} {served.get('version')}, "
            f"not this worker's bundle {manifest.name} {manifest.version} (weights differ)"
        )
    shape = (bundle.encoder.in_chans, *manifest.input_size)
    if tuple(hello.get("input_shape") or ()) != shape:
        raise EngineMismatchError(
            f"the shared inference engine takes images of shape {hello.get('input_shape')}, this bundle {list(shape)}"
        )


class RemoteEngine:
    """The host's shared engine, for one worker process (see the module docstring).

    Parameters
    ----------
    bundle : LoadedBundle
        This process's copy of the bundle the engine serves (heads, manifest); checked against
        the engine's weights checksum and input shape.
    socket_path : str or Path
        The engine's Unix socket.
    connect_timeout_s : float, optional
        Longest wait to connect and be greeted (default 10 s).

    Raises
    ------
    EngineMismatchError
        The engine serves other weights or another input size.
    EngineClosedError
        Nothing listens on ``socket_path`` (the engine is starting or restarting), or it does
        not speak the engine's protocol.
    """

    def __init__(self, bundle: LoadedBundle, socket_path: str | Path, *, connect_timeout_s: float = 10.0) -> None:
        if not isinstance(bundle, LoadedBundle):
            raise TypeError(f"bundle must be a LoadedBundle, got {type(bundle).__name__}")
        self._bundle = bundle
        self._path = Path(socket_path)
        self._timeout = connect_timeout_s
        self._ids = itertools.count()
        self._lock = threading.Lock()  # _connection, _closed
        self._closed = False
        try:
            self._connection = _Connection(self._path, bundle, connect_timeout_s)
        except (OSError, WireError) as exc:  # not there yet, or restarting: the job can be retried
            raise EngineClosedError(f"the shared inference engine cannot be reached: {exc}") from exc
        hello = self._connection.hello
        self._precision = Precision(hello["precision"])
        self._max_batch = int(hello["max_batch"])
        self._input_shape = (bundle.encoder.in_chans, *bundle.manifest.input_size)
        log.info(
            "using the shared inference engine: %s %s on %s, %s",
            bundle.manifest.name, bundle.manifest.version, hello.get("device"), self._precision.value,
        )

    @property
    def bundle(self) -> LoadedBundle:
        return self._bundle

    @property
    def device(self) -> torch.device:
        """Where outputs live: host memory (the engine's device is another process's)."""
        return torch.device("cpu")

    @property
    def precision(self) -> Precision:
        return self._precision

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._input_shape  # type: ignore[return-value]

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        return ()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, images: torch.Tensor | Sequence[torch.Tensor]) -> Future[EncoderOutput]:
        """As :meth:`InferenceEngine.submit`; a broken connection fails the future with
        :class:`EngineClosedError` (raised only once :meth:`close` was called)."""
        future: Future[EncoderOutput] = Future()
        try:
            batch = validate_images(images, self._input_shape)
        except (TypeError, ValueError) as exc:
            if self._closed:
                raise EngineClosedError("the inference engine client is closed") from None
            future.set_exception(exc)
            return future
        try:
            connection = self._live_connection()
        except (OSError, WireError, EngineMismatchError) as exc:
            future.set_exception(EngineClosedError(f"the shared inference engine cannot be reached: {exc}"))
            return future
        request_id = next(self._ids)
        with connection.lock:
            if connection.lost:
                future.set_exception(EngineClosedError("the shared inference engine went away"))
                return future
            connection.pending[request_id] = future
        connection.send({"kind": "encode", "id": request_id}, [batch])
        return future

    def encode(self, images: torch.Tensor | Sequence[torch.Tensor], *, timeout: float | None = None) -> EncoderOutput:
        return self.submit(images).result(timeout=timeout)

    def flush(self) -> None:
        with self._lock:
            connection = self._connection
        if not connection.lost:
            connection.send({"kind": "flush"})

    def stats(self, *, timeout: float = 10.0) -> EngineStats:
        """The shared engine's counters (all of its clients together).

        Raises
        ------
        EngineClosedError
            The client is closed, or the engine cannot be reached or does not answer in time.
        """
        try:
            connection = self._live_connection()
        except (OSError, WireError, EngineMismatchError) as exc:
            raise EngineClosedError(f"the shared inference engine cannot be reached: {exc}") from exc
        waiter: Future[dict[str, Any]] = Future()
        with connection.lock:
            if connection.lost:
                raise EngineClosedError("the shared inference engine went away")
            connection.stats_waiters.append(waiter)
        connection.send({"kind": "stats"})
        try:
            values = waiter.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise EngineClosedError(f"the shared inference engine did not answer within {timeout:g} s") from None
        values["recent_batch_sizes"] = tuple(values["recent_batch_sizes"])
        values["recent_batch_requests"] = tuple(values["recent_batch_requests"])
        return EngineStats(**values)

    def warmup(self) -> None:
        """Nothing to do: the engine process compiled and warmed up before it accepted connections."""

    def close(self, *, timeout: float | None = 10.0) -> None:
        """Disconnect; requests still waiting fail with :class:`EngineClosedError`."""
        with self._lock:
            self._closed = True
            connection = self._connection
        connection.drop("the inference engine client was closed")
        connection.reader.join(timeout)

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _live_connection(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise EngineClosedError("the inference engine client is closed")
            if self._connection.lost:
                self._connection = _Connection(self._path, self._bundle, self._timeout)
                log.info("reconnected to the shared inference engine")
            return self._connection
