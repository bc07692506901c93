"""Storage Commitment Push Model (PS3.4 Annex J), the node's side: the SCU ("evidence creator").

After a batch of results is acknowledged by C-STORE, the node asks the PACS to *commit* to them:
an N-ACTION (action type 1) with a Transaction UID and the objects' SOP class / instance UIDs.
The PACS answers at once that it took the request, and later reports (N-EVENT-REPORT, event
type 1: all committed; 2: failures exist) which objects it holds and which it does not, with a
failure reason per object. The standard lets the PACS send the report on an association of its
own, proposing the SCP role for this SOP class (Orthanc always does; the node's SCP accepts that
role, ``scp.build_ae``), or on the association that carried the request while it is still open
(the node's SCU binds the same handler to its associations, ``scu``, which stay open a few
seconds after a batch).

This module only speaks DIMSE; what a report means for the deliveries is
``ortho_node.pipeline.commitment``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

log = logging.getLogger(__name__)

# PS3.4 J.3.2 / J.3.3: the SOP Class's well-known instance, the request's action type, the
# report's event types.
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_ACTION_TYPE = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# PS3.3 C.14.1.1: Failure Reason (0008,1197) of a Failed SOP Sequence item.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}

SOP_CLASS = str(StorageCommitmentPushModel)


class CommitmentRefused(Exception):
    """The PACS did not take the commitment request (no accepted context, an error status, or
    no response); the objects it concerned are to be sent and asked about again."""


@dataclass(frozen=True)
class ObjectRef:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class FailedObject:
    ref: ObjectRef
    reason: int

    @property
    def reason_text(self) -> str:
        return f"{FAILURE_REASONS.get(self.reason, 'failure')} (0x{self.reason:04X})"


@dataclass(frozen=True)
class CommitmentReport:
    """What a PACS reported for one transaction."""

    transaction_uid: str
    committed: tuple[ObjectRef, ...]
    failed: tuple[FailedObject, ...]


def request_dataset(transaction_uid: str, refs: Sequence[ObjectRef]) -> Dataset:
    """The N-ACTION's Action Information (PS3.4 Table J.3-1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_ref_item(ref) for ref in refs]
    return ds


def _ref_item(ref: ObjectRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def send_request(assoc: Association, transaction_uid: str, refs: Sequence[ObjectRef]) -> None:
    """Send the N-ACTION over ``assoc`` and check its response.

    Raises
    ------
    CommitmentRefused
        The PACS did not accept the SOP class on this association, answered with an error
        status, or did not answer.
    """
    if not any(str(c.abstract_syntax) == SOP_CLASS for c in assoc.accepted_contexts):
        raise CommitmentRefused("the PACS did not accept Storage Commitment Push Model on the association")
    try:
        status, _ = assoc.send_n_action(
            request_dataset(transaction_uid, refs), REQUEST_ACTION_TYPE, SOP_CLASS, WELL_KNOWN_INSTANCE
        )
    except (RuntimeError, ValueError) as exc:
        raise CommitmentRefused(f"the commitment request could not be sent ({type(exc).__name__})") from exc
    if not status or "Status" not in status:
        why = (
            "the association was aborted" if assoc.is_aborted
            else "the association was released" if assoc.is_released
            else "no answer in time"
        )
        raise CommitmentRefused(f"no N-ACTION response ({why})")
    code = int(status.Status)
    if code != 0x0000:
        raise CommitmentRefused(f"the PACS refused the commitment request (N-ACTION status 0x{code:04X})")


def parse_report(event_type: int, info: Dataset) -> CommitmentReport:
    """A report's Event Information (PS3.4 Table J.3-2) as a :class:`CommitmentReport`.

    Raises
    ------
    ValueError
        An unknown event type, or no Transaction UID.
    """
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST):
        raise ValueError(f"event type {event_type} is not a storage commitment result")
    transaction_uid = str(info.get("TransactionUID", "") or "")
    if not transaction_uid:
        raise ValueError("the report has no Transaction UID")
    committed = tuple(
        ObjectRef(str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
        for item in info.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        FailedObject(
            ObjectRef(str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", ""))),
            int(item.get("FailureReason", 0x0110)),
        )
        for item in info.get("FailedSOPSequence", [])
    )
    return CommitmentReport(transaction_uid, committed, failed)


ReportSink = Callable[[CommitmentReport, str], None]
"""Records a report; called with the report and the AE title of the PACS that sent it."""


def make_report_handler(sink: ReportSink) -> Callable[[Event], tuple[int, None]]:
    """EVT_N_EVENT_REPORT handler, for the node's SCP and its SCU's associations: parse, hand
    to ``sink``, answer.

    Answers 0x0000 once the report is recorded; 0x0113 (no such event type) or 0x0115 (invalid
    argument value) for what is not a storage commitment result; 0x0110 (processing failure)
    when recording failed, so that the PACS reports again later.
    """

    def handle_event_report(event: Event) -> tuple[int, None]:
        request = event.request
        if str(request.AffectedSOPClassUID) != SOP_CLASS:
            log.warning("N-EVENT-REPORT for an unsupported SOP class refused")
            return 0x0118, None
        try:
            report = parse_report(int(request.EventTypeID), event.event_information)
        except ValueError as exc:
            log.warning("storage commitment report refused: %s", exc)
            return (0x0113 if "event type" in str(exc) else 0x0115), None
        except Exception as exc:  # noqa: BLE001 - an undecodable data set is the peer's error, not a crash
            log.warning("storage commitment report refused: undecodable event information (%s)", type(exc).__name__)
            return 0x0115, None
        assoc = event.assoc
        pacs = str((assoc.acceptor if assoc.is_requestor else assoc.requestor).ae_title).strip()
        try:
            sink(report, pacs)
        except Exception:  # noqa: BLE001 - the PACS may report again; the node must not die of it
            log.exception("storage commitment report from %s could not be recorded", pacs)
            return 0x0110, None
        return 0x0000, None

    return handle_event_report
