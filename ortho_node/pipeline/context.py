"""What a worker process holds for its whole life: settings, index, store and the job step.

The job step (model + results) is built on first use, so a worker starts fast and a bundle that
cannot be loaded fails the job that needed it with a readable reason instead of hiding in a log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.dimse.associations import AssociationPool
from ortho_node.pipeline.jobs import ClaimedJob
from ortho_node.store import InstanceStore

JobStep = Callable[[ClaimedJob], dict]


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    store: InstanceStore
    build_step: Callable[["WorkerContext"], JobStep]
    engine_socket: Path | None = None  # the worker's shared engine (prefork with worker.shared_engine)
    associations: AssociationPool = field(init=False)  # DIMSE associations kept open between deliveries
    _step: JobStep | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.associations = AssociationPool(self.settings.delivery.association_idle_s)

    def step(self) -> JobStep:
        with self._lock:
            if self._step is None:
                self._step = self.build_step(self)
            return self._step

    def close(self) -> None:
        """Release what the step holds (the model engine), idle associations and the database pool."""
        with self._lock:
            close = getattr(self._step, "close", None)
            if close is not None:
                close()
            self._step = None
        self.associations.close()
        self.db.dispose()
