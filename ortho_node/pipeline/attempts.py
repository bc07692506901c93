"""What a failed delivery attempt does to its row: one rule for sending and for storage commitment."""

from __future__ import annotations

import datetime as dt

from ortho_node.config import Settings
from ortho_node.db.models import DeliveryState
from ortho_node.privacy import redact


def after_failed_attempt(settings: Settings, attempts: int, why: str, *, now: dt.datetime) -> dict:
    """A row's values after its ``attempts``-th attempt failed for a reason worth retrying:
    pending again after the backoff, or dead when that was the last attempt."""
    if attempts < settings.delivery.max_attempts:
        return dict(
            state=DeliveryState.PENDING.value, next_attempt_at=now + settings.delivery.backoff(attempts),
            published_at=None, commitment_uid=None, last_error=redact(why)[:2000],
        )
    return dict(
        state=DeliveryState.DEAD.value, commitment_uid=None,
        last_error=redact(f"gave up after {attempts} attempts: {why}")[:2000],
    )
