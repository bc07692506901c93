"""DICOMweb STOW-RS origin server (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``.

The request is ``multipart/related; type="application/dicom"``, one DICOM Part 10 file per
part. Each instance goes through the same :class:`~ortho_node.ingest.service.IngestService` as
a C-STORE: durable file, committed index row, then it counts as stored. The response is the
PS3.18 store instances response (DICOM JSON, Annex I): Referenced SOP Sequence for what was
stored, Failed SOP Sequence with a Failure Reason (the C-STORE status codes, plus 0x0122 / 0xC122
for a SOP class / transfer syntax the DIMSE SCP would not negotiate) for what was not.
200 when every instance was stored, 202 when some were, 409 when none was; 400 for a body
that is not valid multipart, 413 above ``http.stow_max_bytes``, 415 for any other media type
(metadata + bulk data requests are not supported).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts
from starlette.concurrency import run_in_threadpool

from ortho_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES
from ortho_node.dimse.status import StoreStatus, StowFailureReason, log_level_for, stow_failure_reason
from ortho_node.ingest.header import (
    InvalidDatasetError,
    UnsupportedSOPClassError,
    UnsupportedTransferSyntaxError,
    parse_header,
)
from ortho_node.ingest.part10 import read_part10_meta
from ortho_node.ingest.service import IngestService, ReceivedInstance
from ortho_node.privacy import uid_ref
from ortho_node.web.metrics import StowMetrics

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"

# What the DIMSE SCP negotiates (dimse.scp.build_ae: every storage context, these syntaxes).
# STOW-RS has no negotiation, so each part is held to the same sets, refused per instance.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
TRANSFER_SYNTAXES: frozenset[str] = frozenset(str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES)


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related body."""


def media_type_and_params(content_type: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` → (type, params), via the
    standard library's MIME header parser."""
    header = Message()
    header["content-type"] = content_type
    params = {k.lower(): v for k, v in header.get_params(failobj=[])[1:]}
    return header.get_content_type(), params


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], memoryview]]:
    """The parts of a multipart body (RFC 2046 5.1): their headers and content, without copies.

    Raises
    ------
    MultipartError
        No delimiter, no closing delimiter, or a part without a header/body separator.
    """
    view = memoryview(body)
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("no multipart boundary in the body")
    parts: list[tuple[dict[str, str], memoryview]] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # the closing delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise MultipartError("truncated multipart body")
        content_start = line_end + 2
        following = body.find(b"\r\n" + delimiter, content_start)
        if following < 0:
            raise MultipartError("no closing multipart boundary")
        separator = body.find(b"\r\n\r\n", content_start - 2, following + 2)
        if separator < 0:
            raise MultipartError("a part has no blank line after its headers")
        headers: dict[str, str] = {}
        for line in body[content_start:separator].split(b"\r\n"):
            if line:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, view[separator + 4 : following]))
        position = following + 2 + len(delimiter)


@dataclass(frozen=True)
class _Outcome:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure: StoreStatus | StowFailureReason | None


def _supported_sop_class(declared: str | None, transfer_syntax_uid: str, dataset: memoryview) -> str:
    """The part's SOP class once it and the transfer syntax are among what the SCP accepts.

    Raises
    ------
    UnsupportedTransferSyntaxError, UnsupportedSOPClassError
        Outside the SCP's sets.
    InvalidDatasetError
        No SOP class in the File Meta and the data set does not give one.
    """
    if transfer_syntax_uid not in TRANSFER_SYNTAXES:
        raise UnsupportedTransferSyntaxError(transfer_syntax_uid)
    # Without a Media Storage SOP Class UID ingest has nothing to compare the data set with.
    sop_class = declared or parse_header(dataset, transfer_syntax_uid).sop_class_uid
    if sop_class not in STORAGE_SOP_CLASSES:
        raise UnsupportedSOPClassError(sop_class)
    return sop_class


def _store_part(ingest: IngestService, part: memoryview, study_uid: str | None) -> _Outcome:
    try:
        meta, offset = read_part10_meta(part)
    except InvalidDatasetError as exc:
        log.warning("STOW-RS part refused (0xC000): %s", exc)
        return _Outcome(None, None, StoreStatus.CANNOT_UNDERSTAND)
    declared_class = str(meta.get("MediaStorageSOPClassUID", "")) or None
    sop_class = declared_class
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "")) or None
    transfer_syntax = str(meta.TransferSyntaxUID)
    item = ReceivedInstance(
        dataset=part[offset:],
        transfer_syntax_uid=transfer_syntax,
        declared_sop_class_uid=declared_class,
        declared_sop_instance_uid=sop_instance,
        calling_ae=None,
        source="stow",
        expected_study_uid=study_uid,
    )
    try:
        sop_class = _supported_sop_class(declared_class, transfer_syntax, part[offset:])
        ingest.receive(item)
    except Exception as exc:  # the service boundary: every failure is reported per instance
        code = stow_failure_reason(exc)
        if code is StoreStatus.PROCESSING_FAILURE:
            log.exception("STOW-RS %s failed unexpectedly (0x0110)", uid_ref(sop_instance or ""))
        else:
            log.log(log_level_for(code), "STOW-RS %s refused (0x%04X): %s", uid_ref(sop_instance or ""), code, exc)
        return _Outcome(sop_class, sop_instance, code)
    return _Outcome(sop_class, sop_instance, None)


def _response_body(outcomes: list[_Outcome]) -> dict:
    """The Store Instances Response Module (PS3.18 Table I.1-1)."""
    response = Dataset()
    # Retrieve URL is Type 2, top level and per stored instance: present, empty, as the node
    # has no WADO-RS origin server to retrieve from.
    response.RetrieveURL = None
    stored, failed = [], []
    for outcome in outcomes:
        reference = Dataset()
        if outcome.sop_class_uid:
            reference.ReferencedSOPClassUID = outcome.sop_class_uid
        if outcome.sop_instance_uid:
            reference.ReferencedSOPInstanceUID = outcome.sop_instance_uid
        if outcome.failure is None:
            reference.RetrieveURL = None
            stored.append(reference)
        else:
            reference.FailureReason = int(outcome.failure)
            failed.append(reference)
    # Both sequences are Type 1C: present only when they have an item.
    if stored:
        response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    return response.to_json_dict()


def stow_router(
    ingest: IngestService,
    *,
    max_bytes: int,
    authorise: Callable[..., None],
    metrics: StowMetrics | None = None,
) -> APIRouter:
    """The STOW-RS routes; ``authorise`` is the dependency that checks the bearer token."""
    router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(authorise)])

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def store(body: bytes, content_type: str, study_uid: str | None) -> Response:
        media_type, params = media_type_and_params(content_type)
        part_type = params.get("type", "").lower()
        if media_type != "multipart/related" or part_type != "application/dicom":
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                'only multipart/related; type="application/dicom" is supported',
            )
        boundary = params.get("boundary")
        if not boundary:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart/related without a boundary")
        try:
            parts = split_multipart(body, boundary)
        except MultipartError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        if not parts:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the request holds no instance")
        outcomes = []
        for headers, content in parts:
            declared = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if declared != "application/dicom":
                outcomes.append(_Outcome(None, None, StoreStatus.CANNOT_UNDERSTAND))
                log.warning("STOW-RS part refused (0xC000): media type %s", declared)
                continue
            outcomes.append(_store_part(ingest, content, study_uid))
        if metrics is not None:
            for outcome in outcomes:
                metrics.observe(0 if outcome.failure is None else int(outcome.failure))
        stored = sum(o.failure is None for o in outcomes)
        code = 200 if stored == len(outcomes) else 202 if stored else 409
        log.info("STOW-RS: %d of %d instance(s) stored", stored, len(outcomes))
        return Response(json.dumps(_response_body(outcomes)), status_code=code, media_type=DICOM_JSON)

    @router.post("/studies")
    async def store_instances(request: Request) -> Response:
        body = await read_body(request)
        return await _in_thread(store, body, request.headers.get("content-type", ""), None)

    @router.post("/studies/{study_uid}")
    async def store_study_instances(study_uid: str, request: Request) -> Response:
        body = await read_body(request)
        return await _in_thread(store, body, request.headers.get("content-type", ""), study_uid)

    return router


async def _in_thread(function: Callable[..., Response], *args: object) -> Response:
    # fsync and database commits block: keep them off the event loop.
    return await run_in_threadpool(function, *args)
