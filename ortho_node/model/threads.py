"""One OpenMP team per process: the encoder's. Threads that prepare images run torch single-threaded.

PyTorch's CPU kernels parallelise with OpenMP, and GNU OpenMP gives every thread that opens a
parallel region a team of its own. Once a second thread (one preparing images: resize, pad,
stack; or running the heads) has a team beside the engine's, the process manages more OpenMP
threads than it has CPUs, and libgomp then stops letting idle team members spin: every parallel
region wakes its team from sleep. On this project's 2-core machine each small torch operation of
the preparing thread cost ~130 µs more (a padding 12 -> 146 µs, stacking 16 slices 0.23 -> 1.24
ms), and preparing a 16-slice MR series went from ~16 to ~27 ms as soon as the engine's thread
had run one forward pass. Preparation's tensors are small (one image or slice at a time): on one
thread the series takes ~21 ms, a little more than with an uncontended team and far less than
with a woken one, and the encoder keeps the process's threads to itself.

``torch.set_num_threads`` sets the calling thread's OpenMP thread count and the default for
threads that start using torch later. The engine therefore remembers the process's setting
(:func:`engine_threads`, read before any preparing thread changes it) and its batching thread
sets it for itself (:func:`use_engine_threads`); :func:`single_threaded` switches the calling
thread to one for the span of a study's preparation and heads, and back afterwards (a test
process, or a prefork child whose main thread prepares, keeps its own setting for the rest).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["configure_engine_threads", "engine_threads", "single_threaded", "use_engine_threads"]

_lock = threading.Lock()
_engine_threads: int | None = None


def engine_threads() -> int:
    """Intra-op threads for the encoder's forward: torch's setting as this module first saw it
    (or as :func:`configure_engine_threads` set it)."""
    global _engine_threads
    with _lock:
        if _engine_threads is None:
            _engine_threads = torch.get_num_threads()
        return _engine_threads


def configure_engine_threads(threads: int) -> None:
    """Set the process's torch threads (and so the encoder's), e.g. a prefork child's share."""
    global _engine_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    with _lock:
        _engine_threads = threads
        torch.set_num_threads(threads)


def use_engine_threads() -> None:
    """In the engine's batching thread: run the forward with the process's threads."""
    threads = engine_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Around preparing images and running heads: the calling thread's torch operations open no
    OpenMP team; its own setting comes back afterwards."""
    engine_threads()  # remembered before the change below reaches torch's default
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
