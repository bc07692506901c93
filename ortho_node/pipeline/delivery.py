"""Delivery of result objects to the configured destinations, with retries and a dead letter.

One ``deliveries`` row per (result object, destination). The same outbox pattern as jobs: rows
commit first; the serving node publishes due rows (``next_attempt_at`` passed) as ``ortho.deliver``
messages, one per (job, destination) batch; a worker claims them (pending → sending), sends the
batch over one association or request, and records each object's outcome:

- sent; or, for a destination with ``storage_commitment``, committing until the PACS reports it
  holds the object (``ortho_node.pipeline.commitment``);
- a transient failure: back to pending with exponential backoff (``delivery.backoff_*``);
- a permanent failure, or ``delivery.max_attempts`` reached: ``dead`` (shown by ``status``;
  ``ortho-node resend`` puts dead rows back to pending, ``resend --destination OLD --to NEW``
  moves them to another destination).

Result UIDs are deterministic, so a re-send delivers the same objects again and the PACS keeps
one copy.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select, update

from ortho_node.config import DimseDestination, Settings, StowDestination
from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery, DeliveryState, JobEvent, StoredResult, utcnow
from ortho_node.dimse.associations import AssociationPool
from ortho_node.dimse.commitment import CommitmentReport, CommitmentRefused, ObjectRef, ReportSink
from ortho_node.dimse.scu import DestinationUnavailable, SendOutcome, request_commitment, send_files
from ortho_node.pipeline import commitment
from ortho_node.pipeline.attempts import after_failed_attempt
from ortho_node.privacy import redact
from ortho_node.pipeline.stow import store_files

log = logging.getLogger(__name__)

DELIVER_TASK = "ortho.deliver"
OutcomeCallback = Callable[[SendOutcome], None]
Transport = Callable[
    [DimseDestination | StowDestination, Sequence[Path], Settings, OutcomeCallback, AssociationPool | None, ReportSink],
    list[SendOutcome],
]

TRANSPORTS: dict[str, Transport] = {
    "dimse": lambda dest, paths, settings, done, associations, reports: send_files(
        dest, paths, calling_ae_title=settings.dimse.ae_title, on_outcome=done, associations=associations,
        commitment_reports=reports,
    ),
    "stow": lambda dest, paths, settings, done, associations, reports: store_files(dest, paths),
}


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: int
    destination: str
    path: Path
    attempts: int
    ref: ObjectRef


def due_batches(db: Database, *, republish_after: dt.timedelta, now: dt.datetime | None = None) -> list[list[int]]:
    """Pending deliveries due now, batched per (job, destination)."""
    now = now or utcnow()
    with db.session() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.job_id, Delivery.destination)
            .where(
                Delivery.state == DeliveryState.PENDING.value,
                Delivery.next_attempt_at <= now,
                or_(Delivery.published_at.is_(None), Delivery.published_at < now - republish_after),
            )
            .order_by(Delivery.id)
            .limit(1000)
        ).all()
    batches: dict[tuple[int, str], list[int]] = defaultdict(list)
    for delivery_id, job_id, destination in rows:
        batches[(job_id, destination)].append(delivery_id)
    return list(batches.values())


def pending_for_job(db: Database, job_id: int) -> list[int]:
    """The job's deliveries still waiting for their first attempt."""
    with db.session() as session:
        return list(
            session.scalars(
                select(Delivery.id)
                .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING.value, Delivery.attempts == 0)
                .order_by(Delivery.id)
            )
        )


def mark_published(db: Database, delivery_ids: Sequence[int]) -> None:
    with db.session() as session:
        session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids)).values(published_at=utcnow()))


def claim(db: Database, delivery_ids: Sequence[int], *, lease: dt.timedelta, results_dir: Path) -> list[ClaimedDelivery]:
    """Move due pending rows to sending; rows already taken, sent or not yet due are skipped."""
    now = utcnow()
    claimed = []
    with db.session() as session:
        for delivery_id in delivery_ids:
            moved = session.execute(
                update(Delivery)
                .where(
                    Delivery.id == delivery_id,
                    Delivery.state == DeliveryState.PENDING.value,
                    Delivery.next_attempt_at <= now,  # a stale message must not cut a backoff short
                )
                .values(state=DeliveryState.SENDING.value, attempts=Delivery.attempts + 1, next_attempt_at=now + lease)
            )
            if moved.rowcount != 1:
                continue
            delivery, result = session.execute(
                select(Delivery, StoredResult).join(StoredResult, Delivery.result_id == StoredResult.id).where(Delivery.id == delivery_id)
            ).one()
            claimed.append(ClaimedDelivery(
                delivery.id, delivery.destination, results_dir / result.path, delivery.attempts,
                ObjectRef(result.sop_class_uid, result.sop_instance_uid),
            ))
    return claimed


def _destination(settings: Settings, name: str) -> DimseDestination | StowDestination | None:
    return next((d for d in settings.destinations if d.name == name), None)


def run_deliveries(
    db: Database, settings: Settings, delivery_ids: Sequence[int], *, associations: AssociationPool | None = None
) -> dict[str, int]:
    """Claim, send and record a batch; returns counts of sent / retry / dead (and "stale":
    outcomes dropped because the row's claim had expired and been taken again). A worker passes
    its ``associations`` so that DIMSE batches reuse associations kept open for a few seconds."""
    claimed = claim(db, delivery_ids, lease=dt.timedelta(seconds=settings.worker.job_lease_s), results_dir=settings.results_dir)
    counts = {"sent": 0, "retry": 0, "dead": 0}
    by_destination: dict[str, list[ClaimedDelivery]] = defaultdict(list)
    for item in claimed:
        by_destination[item.destination].append(item)
    for name, items in by_destination.items():
        by_path = {item.path: item for item in items}
        recorded: set[Path] = set()
        destination = _destination(settings, name)
        commits = isinstance(destination, DimseDestination) and destination.storage_commitment
        to_commit: list[ClaimedDelivery] = []

        def record(outcome: SendOutcome) -> None:
            item = by_path.get(outcome.path)
            if item is not None and outcome.path not in recorded:
                recorded.add(outcome.path)
                verdict = _record(db, settings, item, outcome, commits=commits)
                counts[verdict] = counts.get(verdict, 0) + 1
                if verdict == "committing":
                    to_commit.append(item)

        if destination is None:
            outcomes = [SendOutcome(i.path, ok=False, detail=f"destination {name!r} is no longer configured") for i in items]
        else:
            try:
                outcomes = TRANSPORTS[destination.kind](
                    destination, [i.path for i in items], settings, record, associations, _report_sink(db, settings)
                )
            except DestinationUnavailable as exc:
                outcomes = [SendOutcome(i.path, ok=False, transient=exc.transient, detail=str(exc)) for i in items]
            except Exception as exc:  # noqa: BLE001 - every claimed row gets an outcome, never stays "sending"
                why = f"delivery failed unexpectedly: {_error_name(exc)}"
                log.error("delivery to %s: %s", name, why)
                outcomes = [SendOutcome(i.path, ok=False, transient=True, detail=why) for i in items]
        for outcome in outcomes:
            record(outcome)  # those not reported as they happened
        if to_commit:
            _request_commitment(db, settings, destination, to_commit, associations)
    if claimed:
        log.info("delivery batch: %s", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    return counts


def _report_sink(db: Database, settings: Settings) -> ReportSink:
    """Records a storage commitment report that comes back on an association the node opened."""

    def sink(report: CommitmentReport, pacs: str) -> None:
        commitment.record_report(db, settings, report, pacs)

    return sink


def _request_commitment(
    db: Database,
    settings: Settings,
    destination: DimseDestination,
    items: Sequence[ClaimedDelivery],
    associations: AssociationPool | None,
) -> None:
    """Ask the PACS to commit to what it acknowledged; a refused request sends them again."""
    transaction_uid = commitment.begin(db, [item.delivery_id for item in items])
    try:
        request_commitment(
            destination, [item.ref for item in items], transaction_uid=transaction_uid,
            calling_ae_title=settings.dimse.ae_title, associations=associations,
            commitment_reports=_report_sink(db, settings),
        )
    except (DestinationUnavailable, CommitmentRefused) as exc:
        log.warning("storage commitment request to %s: %s", destination.name, exc)
        commitment.refused(db, settings, transaction_uid, str(exc))
    except Exception as exc:  # noqa: BLE001 - as for sending: the rows get an outcome, the worker goes on
        why = f"the commitment request failed unexpectedly: {_error_name(exc)}"
        log.error("storage commitment request to %s: %s", destination.name, why)
        commitment.refused(db, settings, transaction_uid, why)


def _error_name(exc: Exception) -> str:
    """An error's type, and an OS error's reason: never its message, which may hold a
    result file's path (made of the study's UIDs) or values of the object."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__} ({exc.strerror})"
    return type(exc).__name__


def _record(db: Database, settings: Settings, item: ClaimedDelivery, outcome: SendOutcome, *, commits: bool = False) -> str:
    now = utcnow()
    if outcome.ok and commits:  # acknowledged; delivered once the PACS commits to it
        values = dict(
            state=DeliveryState.COMMITTING.value, sent_at=now, last_error=None,
            next_attempt_at=now + dt.timedelta(seconds=settings.delivery.commitment_timeout_s),
        )
        verdict = "committing"
    elif outcome.ok:
        values = dict(state=DeliveryState.SENT.value, sent_at=now, last_error=None)
        verdict = "sent"
    else:
        values = (
            after_failed_attempt(settings, item.attempts, outcome.detail, now=now) if outcome.transient
            else dict(state=DeliveryState.DEAD.value, last_error=redact(outcome.detail)[:2000])  # permanent: no retry
        )
        verdict = "retry" if values["state"] == DeliveryState.PENDING.value else "dead"
        if verdict == "dead":
            log.error("delivery %d to %s dead-lettered: %s", item.delivery_id, item.destination, values["last_error"])
    with db.session() as session:
        # The claim's attempt number is its token: a worker that outlived its lease (the row
        # went back to pending and another worker claimed it) must not overwrite that claim.
        recorded = session.execute(
            update(Delivery)
            .where(
                Delivery.id == item.delivery_id,
                Delivery.state == DeliveryState.SENDING.value,
                Delivery.attempts == item.attempts,
            )
            .values(**values)
        )
    if recorded.rowcount != 1:
        log.warning("delivery %d: outcome of attempt %d dropped, the row was claimed again", item.delivery_id, item.attempts)
        return "stale"
    return verdict


def requeue_stale_sending(db: Database, *, max_attempts: int, now: dt.datetime | None = None) -> int:
    """Rows left in ``sending`` past their lease (worker died mid-send) go back to pending, or
    are dead-lettered when that was their last attempt (a batch that kills its worker must
    not loop). Returns the number of rows moved."""
    now = now or utcnow()
    stale = (Delivery.state == DeliveryState.SENDING.value, Delivery.next_attempt_at < now)
    with db.session() as session:
        dead = session.execute(
            update(Delivery)
            .where(*stale, Delivery.attempts >= max_attempts)
            .values(state=DeliveryState.DEAD.value, last_error=f"gave up after {max_attempts} attempts: the worker was lost while sending")
        )
        moved = session.execute(
            update(Delivery).where(*stale).values(state=DeliveryState.PENDING.value, published_at=None, next_attempt_at=now)
        )
        if dead.rowcount:
            log.error("%d deliveries dead-lettered: their worker was lost during the last attempt", dead.rowcount)
        return (dead.rowcount or 0) + (moved.rowcount or 0)


def retarget(
    db: Database, *, source: str, target: str, job_id: int | None = None, include_sent: bool = False
) -> int:
    """Move dead (and with ``include_sent`` also sent) deliveries from destination ``source`` to
    ``target``, pending and due now: a PACS replaced or renamed in the configuration. Returns
    how many deliveries were taken from ``source``.

    Each moved row keeps its history in the job's events ("retarget"). A result object that has
    a delivery to ``target`` already keeps that one, put back to pending if it is dead (or sent,
    with ``include_sent``); its row for ``source`` is then dropped, as a move would make two
    rows for one object and one destination.
    """
    if source == target:
        raise ValueError(f"source and target are the same destination ({source!r})")
    states = [DeliveryState.DEAD.value] + ([DeliveryState.SENT.value] if include_sent else [])
    query = select(Delivery).where(Delivery.destination == source, Delivery.state.in_(states))
    if job_id is not None:
        query = query.where(Delivery.job_id == job_id)
    pending = {
        "state": DeliveryState.PENDING.value, "attempts": 0, "published_at": None, "last_error": None,
        "commitment_uid": None, "committed_at": None,
    }
    moved_per_job: dict[int, int] = defaultdict(int)
    with db.session() as session:
        rows = list(session.scalars(query.with_for_update()))
        existing = {
            row.result_id: row
            for row in session.scalars(
                select(Delivery).where(Delivery.destination == target, Delivery.result_id.in_([r.result_id for r in rows]))
            )
        } if rows else {}
        now = utcnow()
        for row in rows:
            twin = existing.get(row.result_id)
            if twin is None:
                row.destination = target
                twin = row
            else:
                session.delete(row)
            if twin.state in states or twin is row:
                for key, value in pending.items():
                    setattr(twin, key, value)
                twin.next_attempt_at = now
            moved_per_job[row.job_id] += 1
        for moved_job, count in moved_per_job.items():
            session.add(JobEvent(
                job_id=moved_job, kind="retarget",
                detail=f"{count} deliveries moved from destination {source!r} to {target!r}",
            ))
    log.info("%d deliveries moved from destination %r to %r", sum(moved_per_job.values()), source, target)
    return sum(moved_per_job.values())


def resend(
    db: Database, *, job_id: int | None = None, destination: str | None = None, include_sent: bool = False
) -> int:
    """Put dead (and with ``include_sent`` also sent) deliveries back to pending, due now."""
    states = [DeliveryState.DEAD.value] + ([DeliveryState.SENT.value] if include_sent else [])
    query = update(Delivery).where(Delivery.state.in_(states))
    if job_id is not None:
        query = query.where(Delivery.job_id == job_id)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with db.session() as session:
        moved = session.execute(
            query.values(
                state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=utcnow(), published_at=None,
                last_error=None, commitment_uid=None, committed_at=None,
            )
        )
        return moved.rowcount or 0
