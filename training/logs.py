"""Metrics as JSON lines and progress bars with rich.

:class:`MetricsLog` appends one JSON object per line (``{"event": ..., "step": ..., ...}``) and
flushes after each, so a crashed or resumed run keeps every line written before. Non-finite
floats are written as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["MetricsLog", "progress_bar"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines log; ``path=None`` keeps records in memory only.

    Parameters
    ----------
    path : str or Path or None
        File to append to (parent folders are created).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event (a wall-clock ``time`` is added) and return it."""
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=False) + "\n")
        return record

    def events(self, event: str) -> list[dict[str, Any]]:
        """Records of one event kind written through this object."""
        return [r for r in self.records if r["event"] == event]


@contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool = True, console: Console | None = None
) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``advance(n=1, **fields)`` (fields shown after the bar).

    With ``enabled=False`` (other DDP ranks, tests) nothing is drawn.
    """
    if not enabled:
        yield lambda n=1, **fields: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
            )
            progress.update(task, advance=n, info=info)

        yield advance
