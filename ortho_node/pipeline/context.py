"""What a worker process holds for its whole life: settings, index, store and the job step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.pipeline.jobs import ClaimedJob
from ortho_node.store import InstanceStore

JobStep = Callable[[ClaimedJob], dict]


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    store: InstanceStore
    process: JobStep
