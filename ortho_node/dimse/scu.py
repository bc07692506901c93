"""C-STORE SCU: send result objects to a PACS over one association per batch (kept open for the
next batch when the caller passes an ``AssociationPool``).

Outcomes are per object: a PACS may accept the SR and refuse the SC. Errors are classified as
*transient* (retry later: peer down, association rejected-transient, out of resources) or
*permanent* (the PACS will never accept this object as it is).

Objects go on the wire as they are stored: when the PACS accepts the file's own transfer
syntax, pynetdicom streams the file's dataset bytes (``STORE_SEND_CHUNKED_DATASET``) instead of
decoding and re-encoding it (a 30-slice MRI report took ~0.1 s to re-encode); only a PACS
that accepts another syntax gets a decoded, converted copy.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
)

from ortho_node.config import DimseDestination
from ortho_node.dimse.associations import AssociationPool
from ortho_node.dimse.commitment import SOP_CLASS as COMMITMENT_SOP_CLASS
from ortho_node.dimse.commitment import ObjectRef, ReportSink, make_report_handler, send_request
from ortho_node.dimse.tcp import LOW_LATENCY_HANDLERS
from ortho_node.ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ortho_node.privacy import uid_ref

log = logging.getLogger(__name__)

# Paths handed to send_c_store are streamed from the file, never decoded (this process only
# sends files it wrote itself; datasets handed over as objects are encoded as before).
_config.STORE_SEND_CHUNKED_DATASET = True

# Every association proposes the classes of the node's result objects, whatever its batch holds,
# so that one kept open after an SR can carry the captures and key objects after it.
RESULT_SOP_CLASSES = frozenset(
    str(uid) for uid in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage, KeyObjectSelectionDocumentStorage)
)


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one object: ``ok``, or an error that is ``transient`` or not."""

    path: Path
    ok: bool
    transient: bool = False
    detail: str = ""


class DestinationUnavailable(Exception):
    """The whole batch could not be attempted (no association); always transient unless said so."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


def _client_tls_context(destination: DimseDestination) -> ssl.SSLContext | None:
    if destination.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(destination.tls.ca) if destination.tls.ca else None)
    context.load_cert_chain(certfile=str(destination.tls.cert), keyfile=str(destination.tls.key))
    context.check_hostname = False  # PACS are addressed by IP in most hospitals; the CA pins trust
    return context


def failure_is_transient(status: int) -> bool:
    """Whether a refused object may be accepted later: out of resources (0xA7xx) or a
    processing failure (0x0110, e.g. the archive's disk or database). Both transports
    (C-STORE status, STOW-RS Failure Reason) classify alike; after the last attempt a
    transient failure is dead-lettered all the same."""
    return 0xA700 <= status <= 0xA7FF or status == 0x0110


def _status_outcome(path: Path, status: int) -> SendOutcome:
    # Success, or a warning (PS3.7 C: 0xBxxx; the object was stored, perhaps coerced).
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
        return SendOutcome(path, ok=True, detail=f"0x{status:04X}")
    return SendOutcome(
        path, ok=False, transient=failure_is_transient(status),
        detail=f"C-STORE failed with status 0x{status:04X}",
    )


def unreadable(path: Path, exc: Exception) -> SendOutcome:
    """A result file that cannot be read: permanent (retrying will not bring it back); the
    detail names the error's type only, as the path holds the object's UIDs."""
    return SendOutcome(path, ok=False, detail=f"result file cannot be read ({type(exc).__name__})")


def send_files(
    destination: DimseDestination,
    paths: Sequence[Path],
    *,
    calling_ae_title: str,
    timeout_s: float = 60,
    on_outcome: Callable[[SendOutcome], None] | None = None,
    associations: AssociationPool | None = None,
    commitment_reports: ReportSink | None = None,
) -> list[SendOutcome]:
    """C-STORE each file to ``destination`` over one association.

    ``on_outcome`` is called as soon as each object's response arrives (so a crash mid-batch
    does not forget what was already delivered). With ``associations`` the batch borrows an
    idle association to the destination from the pool and leaves its own there afterwards;
    without, it opens one and releases it. ``commitment_reports`` records storage commitment
    reports a destination sends on an association the node opened (see :func:`request_commitment`).

    Raises
    ------
    DestinationUnavailable
        No association could be established (refused connection, timeout, rejection).
    """
    outcomes: dict[Path, SendOutcome] = {}

    def settle(outcome: SendOutcome) -> None:
        outcomes[outcome.path] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    metas: dict[Path, FileMetaDataset] = {}
    for path in paths:  # one unreadable file fails alone, not its whole batch
        try:
            metas[path] = read_file_meta_info(path)
        except (OSError, InvalidDicomError) as exc:
            settle(unreadable(path, exc))
    if metas:
        sop_classes = sorted(RESULT_SOP_CLASSES | {str(meta.MediaStorageSOPClassUID) for meta in metas.values()})
        key = _pool_key(destination, calling_ae_title, sop_classes)
        borrowed = associations.take(key) if associations is not None else None
        if borrowed is not None:
            lost = _use(borrowed, key, associations, lambda assoc: _send(assoc, destination, metas, settle))
            unsent = {path: meta for path, meta in metas.items() if path not in outcomes}
            # Closed by the PACS before the first response: the batch once more, on a new one.
            metas = unsent if lost and len(unsent) == len(metas) else {}
            if metas:
                log.info("an idle association with %s was closed by the PACS; opening another", destination.name)
        if metas:
            assoc = _associate(destination, sop_classes, calling_ae_title, timeout_s, commitment_reports)
            _use(assoc, key, associations, lambda assoc: _send(assoc, destination, metas, settle))
    return [
        outcomes.get(path) or SendOutcome(path, ok=False, transient=True, detail="association lost before sending")
        for path in paths
    ]


def request_commitment(
    destination: DimseDestination,
    refs: Sequence[ObjectRef],
    *,
    transaction_uid: str,
    calling_ae_title: str,
    timeout_s: float = 60,
    associations: AssociationPool | None = None,
    commitment_reports: ReportSink | None = None,
) -> None:
    """Ask ``destination`` to commit to ``refs`` (N-ACTION, Storage Commitment Push Model).

    Sent over the association the batch just used when the pool still holds it, else over a new
    one. The PACS's answer on the objects comes later, as an N-EVENT-REPORT: to the node's SCP on
    an association of the PACS's own, or on this one while it is open (in the pool), where
    ``commitment_reports`` records it.

    Raises
    ------
    DestinationUnavailable
        No association could be established.
    CommitmentRefused
        The PACS did not take the request.
    """
    sop_classes = sorted(RESULT_SOP_CLASSES | {ref.sop_class_uid for ref in refs})
    key = _pool_key(destination, calling_ae_title, sop_classes)
    assoc = associations.take(key) if associations is not None else None
    if assoc is None:
        assoc = _associate(destination, sop_classes, calling_ae_title, timeout_s, commitment_reports)
    _use(assoc, key, associations, lambda assoc: send_request(assoc, transaction_uid, refs))


def _pool_key(destination: DimseDestination, calling_ae_title: str, sop_classes: Sequence[str]) -> tuple:
    return (destination.model_dump_json(), destination.calling_ae_title or calling_ae_title, tuple(sop_classes))


def _use(
    assoc: Association,
    key: tuple,
    associations: AssociationPool | None,
    work: Callable[[Association], None],
) -> bool:
    """Do ``work`` over ``assoc`` (a batch, a commitment request), then leave it in the pool (or
    release it); return whether the association was lost. One that the work left by an error
    is released, never lent again."""
    finished = False
    try:
        work(assoc)
        finished = True
    finally:
        lost = not assoc.is_established
        if associations is not None and finished:
            associations.give_back(key, assoc)
        elif not lost:
            assoc.release()
    return lost


def _associate(
    destination: DimseDestination,
    sop_classes: Sequence[str],
    calling_ae_title: str,
    timeout_s: float,
    commitment_reports: ReportSink | None = None,
) -> Association:
    """An established association proposing ``sop_classes`` (Explicit, then Implicit VR Little
    Endian), and Storage Commitment for a destination that commits."""
    ae = AE(ae_title=destination.calling_ae_title or calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = list(LOW_LATENCY_HANDLERS)
    if destination.storage_commitment:  # the same association then carries the commitment request
        ae.add_requested_context(COMMITMENT_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if commitment_reports is not None:  # and may bring the report back
            handlers.append((evt.EVT_N_EVENT_REPORT, make_report_handler(commitment_reports)))
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=(_client_tls_context(destination), None) if destination.tls else None,
        evt_handlers=handlers,
    )
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        transient = primitive is None or primitive.result == 0x02
        raise DestinationUnavailable(f"association rejected by {destination.name}", transient=transient)
    if not assoc.is_established:
        raise DestinationUnavailable(f"cannot associate with {destination.name} at {destination.host}:{destination.port}")
    return assoc


def _send(
    assoc: Association,
    destination: DimseDestination,
    metas: dict[Path, FileMetaDataset],
    settle: Callable[[SendOutcome], None],
) -> None:
    """C-STORE the files of ``metas`` over ``assoc``, settling each as its response arrives;
    files left unsettled when the association is lost are the caller's."""
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    for path, meta in metas.items():
        as_stored = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)) in accepted
        try:
            response = assoc.send_c_store(path if as_stored else pydicom.dcmread(path))
        except (OSError, InvalidDicomError) as exc:  # the copy to convert cannot be read
            settle(unreadable(path, exc))
            continue
        except ValueError as exc:  # no accepted presentation context for this SOP class
            settle(SendOutcome(path, ok=False, transient=False, detail=f"not accepted by the PACS: {exc}"))
            continue
        except RuntimeError:  # the peer aborted or dropped the association mid-batch
            log.warning("association with %s lost during a C-STORE", destination.name)
            break
        if not response or "Status" not in response:
            if not assoc.is_established:  # aborted: what is left is the caller's
                log.warning("association with %s lost during a C-STORE", destination.name)
                break
            settle(SendOutcome(path, ok=False, transient=True, detail="no C-STORE response (timeout or abort)"))
            continue
        outcome = _status_outcome(path, int(response.Status))
        if not outcome.ok:
            log.warning("C-STORE of %s to %s: %s", uid_ref(str(meta.MediaStorageSOPInstanceUID)), destination.name, outcome.detail)
        settle(outcome)
