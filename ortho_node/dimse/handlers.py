"""pynetdicom event handlers of the SCP, bound with their dependencies (no globals).

Intervention handlers (``handle_echo``, ``handle_store``) return a status. Notification handlers
(``handle_requested`` and the association loggers) observe; ``handle_requested`` is the one
place that refuses an association, because pynetdicom lets an EVT_REQUESTED handler send an
A-ASSOCIATE-RJ before negotiation starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pynetdicom import evt
from pynetdicom.events import Event

from ortho_node.config import AllowedCaller
from ortho_node.dimse.status import EchoStatus, StoreStatus, failure_status, log_level_for
from ortho_node.ingest.service import IngestOutcome, IngestService, ReceivedInstance
from ortho_node.privacy import uid_ref

if TYPE_CHECKING:
    from ortho_node.web.metrics import IngestMetrics

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent (1), DUL service user (1), calling AE title not recognised (3).
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title.strip()}@{requestor.address}"


def handle_echo(event: Event) -> int:
    """C-ECHO: always Success (0x0000) once the association is accepted."""
    return EchoStatus.SUCCESS


def handle_store(event: Event, ingest: IngestService, metrics: "IngestMetrics | None" = None) -> int:
    """C-STORE: make the instance durable and indexed, then answer.

    Returns
    -------
    int
        Success
          ``0x0000`` stored and indexed (also for an identical re-send, and for a re-send with
          different bytes: the original is kept and the new bytes are quarantined).
        Failure
          ``0xA700`` store full; ``0xA701`` store write failed; ``0xA702`` index unavailable
          (all PS3.4 B.2.3 "Refused: Out of Resources", retryable by the sender);
          ``0xA900`` data set does not match SOP class (missing/invalid UIDs, or contradicts
          the request); ``0xC000`` cannot understand (unparseable); ``0x0110`` processing
          failure (unexpected error, traceback logged).
    """
    started = time.perf_counter()
    status = _store(event, ingest)
    if metrics is not None:
        metrics.observe(status, len(event.request.DataSet.getbuffer()), time.perf_counter() - started)
    return status


def _store(event: Event, ingest: IngestService) -> int:
    request = event.request
    peer = _peer(event)
    sop_ref = uid_ref(request.AffectedSOPInstanceUID)
    item = ReceivedInstance(
        dataset=request.DataSet,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        declared_sop_class_uid=str(request.AffectedSOPClassUID),
        declared_sop_instance_uid=str(request.AffectedSOPInstanceUID),
        calling_ae=event.assoc.requestor.ae_title.strip(),
        source="dimse",
    )
    try:
        result = ingest.receive(item)
    except Exception as exc:  # the SCP boundary: never success, always a logged failure
        status = failure_status(exc)
        if status is StoreStatus.PROCESSING_FAILURE:
            log.exception("C-STORE %s from %s failed unexpectedly (0x0110)", sop_ref, peer)
        else:
            log.log(log_level_for(status), "C-STORE %s from %s refused (0x%04X): %s", sop_ref, peer, status, exc)
        return status
    if result.outcome is IngestOutcome.CONFLICT:
        log.warning("C-STORE %s from %s: different content for a stored UID, quarantined", sop_ref, peer)
    else:
        log.debug("C-STORE %s from %s: %s", sop_ref, peer, result.outcome.value)
    return StoreStatus.SUCCESS


def make_requested_handler(
    allowed_callers: tuple[AllowedCaller, ...],
) -> Callable[[Event], None]:
    """EVT_REQUESTED handler enforcing the calling-AE (and host) allow-list.

    An empty allow-list accepts any caller. A refused caller gets A-ASSOCIATE-RJ
    rejected-permanent / service-user / "calling AE title not recognised".
    """

    def handle_requested(event: Event) -> None:
        if not allowed_callers:
            return
        calling = event.assoc.requestor.primitive.calling_ae_title.strip()
        host = event.assoc.requestor.address
        if any(caller.permits(calling, host) for caller in allowed_callers):
            return
        log.warning("association from %s@%s rejected: calling AE title not allowed", calling, host)
        event.assoc.acse.send_reject(*_REJECT_CALLING_AE)
        event.assoc.kill()

    return handle_requested


def make_conn_open_handler(idle_poll_delay_s: float) -> Callable[[Event], None]:
    """EVT_CONN_OPEN handler that sets the association's DUL idle poll delay.

    pynetdicom's reactor sleeps ``_run_loop_delay`` (1 ms) whenever the socket is idle, which
    adds up to milliseconds per C-STORE round trip; see ``bench/ingest``.
    """

    def handle_conn_open(event: Event) -> None:
        event.assoc.dul._run_loop_delay = idle_poll_delay_s  # noqa: SLF001 - documented knob, no public API

    return handle_conn_open


_CONTEXT_RESULTS = {0x01: "user rejection", 0x02: "no reason", 0x03: "abstract syntax not supported", 0x04: "transfer syntaxes not supported"}


def handle_accepted(event: Event) -> None:
    log.info("association accepted from %s", _peer(event))
    for context in event.assoc.rejected_contexts:
        name = context.abstract_syntax.name if context.abstract_syntax else "?"
        log.warning(
            "presentation context refused for %s from %s: %s",
            name,
            _peer(event),
            _CONTEXT_RESULTS.get(context.result, f"result {context.result}"),
        )


def handle_released(event: Event) -> None:
    log.info("association released by %s", _peer(event))


def handle_aborted(event: Event) -> None:
    log.warning("association with %s aborted", _peer(event))


def handle_rejected(event: Event) -> None:
    log.info("association from %s rejected", _peer(event))


NOTIFICATION_LOGGERS = (
    (evt.EVT_ACCEPTED, handle_accepted),
    (evt.EVT_RELEASED, handle_released),
    (evt.EVT_ABORTED, handle_aborted),
    (evt.EVT_REJECTED, handle_rejected),
)
