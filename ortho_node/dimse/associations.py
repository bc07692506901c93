"""Associations kept open between deliveries to the same PACS, for a few idle seconds.

Negotiating an association costs a round trip and a thread start on our side and an
association's setup at the PACS (~4 ms to a local Orthanc), and releasing it another round
trip (2.4 ms, or 12 ms when pynetdicom's release polls); a node that sends an SR and, moments
later, the study's captures, or studies back to back, would pay that for every batch. Like
Orthanc's own SCU (``DicomAssociationCloseDelay``, 5 s) the node keeps an association open
after a batch and lends it to the next batch for the same destination within
``delivery.association_idle_s``; a background thread releases it (A-RELEASE, as after any
batch) once it has been idle that long.

An association serves one batch at a time: a batch that finds none idle opens its own, and at
most one idle association per destination is kept. One the PACS has closed meanwhile is
dropped unused. A process that forked (prefork workers) never uses its parent's associations,
and starts with a lock of its own: a fork taken while another thread held the pool's lock would
otherwise leave the child's copy locked for good.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

from pynetdicom.association import Association

log = logging.getLogger(__name__)


@dataclass
class _Idle:
    association: Association
    since: float


class AssociationPool:
    """Idle established associations by key (destination, calling AE, requested contexts)."""

    def __init__(self, idle_s: float) -> None:
        if idle_s < 0:
            raise ValueError("idle_s must be >= 0")
        self.idle_s = idle_s
        self._idle: dict[Hashable, _Idle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._pid = os.getpid()
        self._reaper: threading.Thread | None = None
        pool = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_in_child(pool))

    def take(self, key: Hashable) -> Association | None:
        """An idle association for ``key`` still established, now lent to the caller; or None."""
        with self._lock:
            self._forget_parents()
            entry = self._idle.pop(key, None)
        if entry is None:
            return None
        if entry.association.is_established:
            return entry.association
        log.debug("an idle association was closed by its peer; opening another")
        return None

    def give_back(self, key: Hashable, association: Association) -> None:
        """Keep ``association`` for the next batch with ``key``, or release it when it is not
        wanted (pool closed or not keeping any, one already kept for ``key``, not established)."""
        if not association.is_established:
            return
        with self._lock:
            self._forget_parents()
            keep = not self._closed and self.idle_s > 0 and key not in self._idle
            if keep:
                self._idle[key] = _Idle(association, time.monotonic())
                self._start_reaper()
                self._wake.notify()
        if not keep:
            _release(association)

    def close(self) -> None:
        """Release every idle association; later batches open and release their own."""
        with self._lock:
            self._closed = True
            idle = [entry.association for entry in self._idle.values()] if self._pid == os.getpid() else []
            self._idle.clear()
            self._wake.notify()
        for association in idle:
            _release(association)

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def _forget_parents(self) -> None:
        """In a forked child the parent's associations (sockets shared with it, threads left
        behind) are not ours to use or release: drop them. Lock held, or from the fork hook;
        also a guard for a child that forked without running Python's fork hooks."""
        if self._pid != os.getpid():
            self._idle.clear()
            self._pid = os.getpid()
            self._reaper = None

    def _after_fork_in_child(self) -> None:
        """A fresh lock and no associations: the parent's lock may have been taken by one of its
        threads, which do not exist here, at the moment of the fork."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._forget_parents()

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="dimse-association-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Release associations idle for ``idle_s``; exit when none is left."""
        with self._lock:
            while not self._closed and self._idle:
                now = time.monotonic()
                expired = [key for key, entry in self._idle.items() if now - entry.since >= self.idle_s]
                for association in [self._idle.pop(key).association for key in expired]:
                    self._lock.release()  # a release is a network round trip: not under the lock
                    try:
                        _release(association)
                    finally:
                        self._lock.acquire()
                if self._idle:
                    soonest = min(entry.since for entry in self._idle.values())
                    self._wake.wait(max(0.0, soonest + self.idle_s - time.monotonic()))
            self._reaper = None


def _renew_in_child(pool: weakref.ReferenceType[AssociationPool]) -> None:
    alive = pool()
    if alive is not None:
        alive._after_fork_in_child()


def _release(association: Association) -> None:
    try:
        if association.is_established:
            association.release()
    except Exception:  # noqa: BLE001 - a release that fails leaves nothing to do; the peer aborts
        log.debug("releasing an idle association failed", exc_info=True)
