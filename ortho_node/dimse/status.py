"""DIMSE status codes the node returns, each with its meaning and source.

PS3.4 Annex B.2.3 (Storage Service Class statuses) and PS3.7 Annex C (general statuses);
PS3.18 Table I.2-2 for the STOW-RS Failure Reasons.
"""

from __future__ import annotations

import enum
import logging

from ortho_node.ingest.header import InvalidDatasetError, UnsupportedSOPClassError, UnsupportedTransferSyntaxError
from ortho_node.ingest.indexer import IndexUnavailableError
from ortho_node.store import StoreFullError, StoreWriteError


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses used by :func:`ortho_node.dimse.handlers.handle_store`."""

    SUCCESS = 0x0000
    """Success: the instance is durable on disk and committed to the index."""

    OUT_OF_RESOURCES = 0xA700
    """Refused: Out of Resources (PS3.4 B.2.3): the store's file system is full."""

    OUT_OF_RESOURCES_WRITE_FAILED = 0xA701
    """Refused: Out of Resources (A7xx, PS3.4 B.2.3): the file could not be written (I/O error,
    permissions, read-only file system). Nothing was stored."""

    OUT_OF_RESOURCES_INDEX = 0xA702
    """Refused: Out of Resources (A7xx, PS3.4 B.2.3): the index database is unavailable. The
    sender should retry; nothing was acknowledged."""

    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """Error: Data Set does not match SOP Class (PS3.4 B.2.3): a required UID is missing or
    invalid, or the data set contradicts the request's Affected SOP Class/Instance UID."""

    CANNOT_UNDERSTAND = 0xC000
    """Error: Cannot understand (Cxxx, PS3.4 B.2.3): the data set does not parse as DICOM."""

    PROCESSING_FAILURE = 0x0110
    """Processing failure (PS3.7 C.4): an unexpected error; the traceback is logged."""


class StowFailureReason(enum.IntEnum):
    """STOW-RS Failure Reasons (PS3.18 Table I.2-2) beyond :class:`StoreStatus`.

    Kept out of ``StoreStatus``, which lists exactly what the C-STORE SCP returns: over DIMSE an
    unsupported SOP class or transfer syntax never reaches ingest, it is refused at presentation
    context negotiation.
    """

    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """Referenced SOP Class not supported: not a storage SOP class the SCP accepts."""

    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    """Referenced Transfer Syntax not supported: not a transfer syntax the SCP accepts."""


class EchoStatus(enum.IntEnum):
    SUCCESS = 0x0000


def failure_status(exc: BaseException) -> StoreStatus:
    """The C-STORE status for an exception of :meth:`IngestService.receive`.

    An :class:`UnsupportedTransferSyntaxError` or :class:`UnsupportedSOPClassError` maps to
    0xA900 with the other invalid data sets: the SCP's negotiation keeps both from ingest, so a
    C-STORE never sees them. STOW-RS, which has no negotiation, uses :func:`stow_failure_reason`.
    """
    if isinstance(exc, InvalidDatasetError):
        return StoreStatus.CANNOT_UNDERSTAND if exc.unparseable else StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    if isinstance(exc, StoreFullError):
        return StoreStatus.OUT_OF_RESOURCES
    if isinstance(exc, StoreWriteError):
        return StoreStatus.OUT_OF_RESOURCES_WRITE_FAILED
    if isinstance(exc, IndexUnavailableError):
        return StoreStatus.OUT_OF_RESOURCES_INDEX
    return StoreStatus.PROCESSING_FAILURE


def stow_failure_reason(exc: BaseException) -> StoreStatus | StowFailureReason:
    """The STOW-RS Failure Reason (0008,1197) for an exception of a STOW-RS part: PS3.18 Table
    I.2-2 uses the C-STORE codes, plus 0x0122 and 0xC122 for what DIMSE refuses at negotiation."""
    if isinstance(exc, UnsupportedTransferSyntaxError):
        return StowFailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    if isinstance(exc, UnsupportedSOPClassError):
        return StowFailureReason.SOP_CLASS_NOT_SUPPORTED
    return failure_status(exc)


def log_level_for(status: int) -> int:
    """Bad input from the sender is a warning; the node's own trouble is an error."""
    bad_input = (
        StoreStatus.CANNOT_UNDERSTAND,
        StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        *StowFailureReason,
    )
    return logging.WARNING if status in bad_input else logging.ERROR
