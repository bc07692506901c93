"""DIMSE status codes the node returns, each with its meaning and source.

PS3.4 Annex B.2.3 (Storage Service Class statuses) and PS3.7 Annex C (general statuses).
"""

from __future__ import annotations

import enum
import logging

from ortho_node.ingest.header import InvalidDatasetError
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


class EchoStatus(enum.IntEnum):
    SUCCESS = 0x0000


def failure_status(exc: BaseException) -> StoreStatus:
    """The storage status for an exception of :meth:`IngestService.receive` (C-STORE status,
    or the STOW-RS Failure Reason: PS3.18 uses the same codes)."""
    if isinstance(exc, InvalidDatasetError):
        return StoreStatus.CANNOT_UNDERSTAND if exc.unparseable else StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    if isinstance(exc, StoreFullError):
        return StoreStatus.OUT_OF_RESOURCES
    if isinstance(exc, StoreWriteError):
        return StoreStatus.OUT_OF_RESOURCES_WRITE_FAILED
    if isinstance(exc, IndexUnavailableError):
        return StoreStatus.OUT_OF_RESOURCES_INDEX
    return StoreStatus.PROCESSING_FAILURE


def log_level_for(status: StoreStatus) -> int:
    """Bad input from the sender is a warning; the node's own trouble is an error."""
    bad_input = (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    return logging.WARNING if status in bad_input else logging.ERROR
