"""What storage commitment means for the deliveries (the DIMSE side is ``dimse.commitment``).

A delivery to a destination with ``storage_commitment`` goes sending → committing when the PACS
acknowledges the C-STORE, and committing → sent only when the PACS's report says it holds the
object. The Transaction UID is written on the rows *before* the request leaves, so a report can
never arrive for a transaction the index does not know; it is random (``2.25.`` + a UUID), so it
is also what a report must know to move a row.

What the PACS reports missing, what a refused request concerned, and what it has not reported
on within ``delivery.commitment_timeout_s`` goes back to pending (one more attempt: sent and
asked about again; the PACS keeps one copy, the UIDs being the same) or, past
``delivery.max_attempts``, to the dead letters that ``status`` shows and ``resend`` replays.
Each outcome is also an event in its job's audit trail (``ortho-node jobs events JOB``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from pydicom.uid import generate_uid
from sqlalchemy import select, update

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery, DeliveryState, JobEvent, StoredResult, utcnow
from ortho_node.dimse.commitment import CommitmentReport
from ortho_node.pipeline.attempts import after_failed_attempt

log = logging.getLogger(__name__)


def begin(db: Database, delivery_ids: Sequence[int]) -> str:
    """A new Transaction UID, written on the (committing) rows it will ask about."""
    transaction_uid = generate_uid(prefix=None)
    with db.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.COMMITTING.value)
            .values(commitment_uid=transaction_uid)
        )
    return transaction_uid


def refused(db: Database, settings: Settings, transaction_uid: str, detail: str) -> int:
    """The request of ``transaction_uid`` did not reach or was refused by the PACS: its rows go
    back to pending (or dead). Returns how many rows moved."""
    moved = _settle(db, settings, transaction_uid, committed=set(), failures={}, default_failure=f"storage commitment: {detail}")
    return sum(moved.values())


def record_report(db: Database, settings: Settings, report: CommitmentReport, pacs_ae: str) -> dict[str, int]:
    """Apply a PACS's report: committed rows become sent; failed ones, and any the report does
    not mention, go back to pending (or dead). Returns counts of committed / retry / dead."""
    failures = {f.ref.sop_instance_uid: f"storage commitment failed: {f.reason_text}" for f in report.failed}
    committed = {ref.sop_instance_uid for ref in report.committed} - set(failures)
    counts = _settle(
        db, settings, report.transaction_uid, committed=committed, failures=failures,
        default_failure="storage commitment: the PACS's report did not mention the object",
    )
    if not sum(counts.values()):
        log.warning("storage commitment report from %s for an unknown or settled transaction", pacs_ae)
    else:
        log.info(
            "storage commitment report from %s: %s", pacs_ae, ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        )
    return counts


def _settle(
    db: Database,
    settings: Settings,
    transaction_uid: str,
    *,
    committed: set[str],
    failures: dict[str, str],
    default_failure: str,
) -> dict[str, int]:
    """Move the committing rows of ``transaction_uid``; counts of committed / retry / dead."""
    now = utcnow()
    tally = {"committed": 0, "retry": 0, "dead": 0}
    events: dict[tuple[int, str, str], int] = {}  # (job, destination, outcome) -> objects
    with db.session() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.job_id, Delivery.destination, Delivery.attempts, StoredResult.sop_instance_uid)
            .join(StoredResult, Delivery.result_id == StoredResult.id)
            .where(Delivery.commitment_uid == transaction_uid, Delivery.state == DeliveryState.COMMITTING.value)
        ).all()
        for delivery_id, job_id, destination, attempts, sop_instance_uid in rows:
            if sop_instance_uid in committed:
                values = dict(state=DeliveryState.SENT.value, committed_at=now, commitment_uid=None, last_error=None)
                tally["committed"] += 1
                outcome = "committed"
            else:
                why = failures.get(sop_instance_uid, default_failure)
                values = after_failed_attempt(settings, attempts, why, now=now)
                tally["retry" if values["state"] == DeliveryState.PENDING.value else "dead"] += 1
                outcome = why
                log.warning("delivery %d: %s", delivery_id, why)
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.COMMITTING.value)
                .values(**values)
            )
            events[(job_id, destination, outcome)] = events.get((job_id, destination, outcome), 0) + 1
        for (job_id, destination, outcome), count in events.items():
            session.add(_event(job_id, destination, outcome, count))
    return tally


def _event(job_id: int, destination: str, outcome: str, count: int) -> JobEvent:
    """The audit trail's line for ``count`` objects of a job with one commitment outcome."""
    if outcome == "committed":
        return JobEvent(job_id=job_id, kind="committed", detail=f"{count} object(s) committed by {destination!r}")
    return JobEvent(
        job_id=job_id, kind="not-committed", is_error=True,
        detail=f"{count} object(s) not committed by {destination!r}: {outcome}"[:2000],
    )


def expire(db: Database, settings: Settings, *, now: dt.datetime | None = None) -> int:
    """Rows whose PACS has not reported within the timeout go back to pending (or dead)."""
    now = now or utcnow()
    with db.session() as session:
        overdue = session.execute(
            select(Delivery.id, Delivery.job_id, Delivery.destination, Delivery.attempts).where(
                Delivery.state == DeliveryState.COMMITTING.value, Delivery.next_attempt_at < now
            )
        ).all()
        why = f"storage commitment: no report from the PACS within {settings.delivery.commitment_timeout_s:g} s"
        events: dict[tuple[int, str], int] = {}
        for delivery_id, job_id, destination, attempts in overdue:
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.COMMITTING.value)
                .values(**after_failed_attempt(settings, attempts, why, now=now))
            )
            events[(job_id, destination)] = events.get((job_id, destination), 0) + 1
        for (job_id, destination), count in events.items():
            session.add(_event(job_id, destination, why, count))
    if overdue:
        log.warning("%d deliveries had no storage commitment report in time: pending again (or dead)", len(overdue))
    return len(overdue)
