"""STOW-RS delivery of result objects with dicomweb-client (basic or bearer auth).

Outcomes per object, from the response (PS3.18 10.5.3): 200 stored all; 202 stored some, the
Failed SOP Sequence lists the others with a Failure Reason; 400 and 409 stored none, and
their body may say why for each. A Failure Reason is transient or permanent as a C-STORE
status is (:func:`~ortho_node.dimse.scu.failure_is_transient`). A request that fails as a
whole: HTTP 4xx other than 408/429 is permanent, 5xx, 408, 429 and connection errors are
transient.

A 2xx counts an object as stored only where the body is a Store Instances Response (PS3.18
Annex I: DICOM JSON, or DICOM XML as PS3.19's Native DICOM Model) whose Referenced SOP Sequence
lists its SOP Instance UID. A 200 or 202 without such a body (a proxy's or single-sign-on login
page, an empty body), or one that neither references nor lists an object as failed, leaves it
to be retried: the response did not confirm it. The request asks for DICOM JSON or XML
(``Accept``); dicomweb-client would send ``*/*``. The body is read here, from the response kept
by a hook, with any media type parameters (``; charset=utf-8``) ignored, not from what
dicomweb-client makes of it.

A response that says "stored" is not always so: an origin server may answer 200 for an instance
its own rules then discard (Orthanc does, for an instance its ``ReceivedInstanceFilter``
drops). With ``verify_stored`` the node reads the result series back by QIDO-RS after the
request and counts as stored only the instances the server lists; the others are sent again,
as a storage commitment failure is for a DIMSE destination.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ortho_node.config import StowDestination
from ortho_node.dimse.scu import DestinationUnavailable, SendOutcome, failure_is_transient, unreadable

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = {408, 429}
_PER_INSTANCE_ERRORS = {400, 409}  # none stored; the body may give a reason per instance
_JSON_TYPES = {"application/dicom+json", "application/json"}
_XML_TYPES = {"application/dicom+xml", "application/xml"}
# What the Store Instances Response may be (PS3.18 10.5.3); a server answering */* may pick anything.
_STOW_ACCEPT = "application/dicom+json, application/dicom+xml"
# Raised by dicomweb-client reading a 2xx body it takes for DICOM JSON or XML but cannot parse.
_CLIENT_BODY_ERRORS = (ValueError, TypeError, KeyError, AttributeError, SyntaxError)
_UNCONFIRMED = "the response did not confirm it"


def media_type(response: requests.Response) -> str:
    """The response's media type without parameters, lower case."""
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _bare_content_type(response: requests.Response, *args: object, **kwargs: object) -> None:
    if "Content-Type" in response.headers:
        response.headers["Content-Type"] = media_type(response)


def _client(
    destination: StowDestination, timeout_s: float, responses: list[requests.Response], *, accept: str | None = None,
) -> DICOMwebClient:
    """A client whose responses have bare media types and are kept in ``responses``."""
    if destination.username and destination.password is not None:
        session = create_session_from_user_pass(destination.username, destination.password.get_secret_value())
    else:
        session = create_session()
    session.verify = destination.verify_tls
    session.hooks["response"].append(_bare_content_type)
    session.hooks["response"].append(lambda response, *args, **kwargs: responses.append(response))
    headers = {}
    if destination.bearer_token is not None:
        headers["Authorization"] = f"Bearer {destination.bearer_token.get_secret_value()}"
    if accept is not None:
        headers["Accept"] = accept
    return DICOMwebClient(destination.url, session=session, headers=headers, timeout=timeout_s)


@dataclass(frozen=True)
class _StoreResponse:
    """What a Store Instances Response (PS3.18 Annex I) says, by SOP Instance UID."""

    referenced: frozenset[str]  # Referenced SOP Sequence: stored
    failed: dict[str, int]  # Failed SOP Sequence: Failure Reason


def _json_response(response: requests.Response) -> _StoreResponse | None:
    try:
        body = Dataset.from_json(response.json())
        referenced = {str(item.get("ReferencedSOPInstanceUID", "")) for item in body.get("ReferencedSOPSequence", [])}
        failed = {
            str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0))
            for item in body.get("FailedSOPSequence", [])
        }
    except (ValueError, TypeError, KeyError, AttributeError):  # JSONDecodeError is a ValueError
        return None
    if "ReferencedSOPSequence" not in body and "FailedSOPSequence" not in body:
        return None  # some other JSON (an API gateway's error, say)
    return _StoreResponse(frozenset(referenced), failed)


def _local(element: ElementTree.Element) -> str:
    """The tag name without its namespace (PS3.19's Native DICOM Model has one; not all servers use it)."""
    return element.tag.rsplit("}", 1)[-1]


def _xml_attributes(parent: ElementTree.Element) -> Iterator[tuple[str, ElementTree.Element]]:
    for child in parent:
        if _local(child) == "DicomAttribute":
            yield child.get("tag", "").upper(), child


def _xml_value(attribute: ElementTree.Element) -> str:
    value = next((child for child in attribute if _local(child) == "Value"), None)
    return (value.text or "").strip() if value is not None else ""


def _xml_items(sequence: ElementTree.Element) -> Iterator[dict[str, str]]:
    """Each item of a sequence attribute, as tag -> first value (Orthanc adds an empty
    ``<Value>`` beside the items: not an item)."""
    for item in sequence:
        if _local(item) == "Item":
            yield {tag: _xml_value(attribute) for tag, attribute in _xml_attributes(item)}


def _xml_response(response: requests.Response) -> _StoreResponse | None:
    try:
        root = ElementTree.fromstring(response.content)
        if _local(root) != "NativeDicomModel":
            return None
        sequences = {tag: list(_xml_items(attribute)) for tag, attribute in _xml_attributes(root)}
        referenced = frozenset(item.get("00081155", "") for item in sequences.get("00081199", []))
        failed = {item.get("00081155", ""): int(item.get("00081197") or 0) for item in sequences.get("00081198", [])}
    except (ElementTree.ParseError, ValueError):  # ValueError: a Failure Reason that is not a number
        return None
    if "00081199" not in sequences and "00081198" not in sequences:
        return None
    return _StoreResponse(referenced, failed)


def _store_response(response: requests.Response | None) -> _StoreResponse | None:
    """The body as a Store Instances Response, if it is one in DICOM JSON or XML; None otherwise."""
    if response is None or not response.content:
        return None
    if media_type(response) in _JSON_TYPES:
        return _json_response(response)
    if media_type(response) in _XML_TYPES:
        return _xml_response(response)
    return None


def _per_instance(
    datasets: dict[Path, Dataset], answer: _StoreResponse, *, referenced: SendOutcome, unlisted: SendOutcome,
) -> dict[Path, SendOutcome]:
    """Each instance's outcome: its Failure Reason where the Failed SOP Sequence lists it, else
    ``referenced`` where the Referenced SOP Sequence does, else ``unlisted`` (for its own path)."""
    outcomes = {}
    for path, ds in datasets.items():
        uid = str(ds.SOPInstanceUID)
        reason = answer.failed.get(uid)
        if reason is not None:  # listed as failed wins over referenced: never count a doubtful one
            outcomes[path] = SendOutcome(
                path, ok=False, transient=failure_is_transient(reason),
                detail=f"STOW failure reason 0x{reason:04X}",
            )
        elif uid in answer.referenced:
            outcomes[path] = replace(referenced, path=path)
        else:
            outcomes[path] = replace(unlisted, path=path)
    return outcomes


def store_files(destination: StowDestination, paths: Sequence[Path], *, timeout_s: float = 60) -> list[SendOutcome]:
    """STOW-RS the files in one request; per-object outcomes from the response.

    Raises
    ------
    DestinationUnavailable
        The request failed as a whole (connection error, HTTP error without per-instance
        reasons).
    """
    outcomes: dict[Path, SendOutcome] = {}
    datasets: dict[Path, Dataset] = {}
    for path in paths:  # one unreadable file fails alone, not its whole request
        try:
            datasets[path] = pydicom.dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            outcomes[path] = unreadable(path, exc)
    if datasets:
        outcomes.update(_store(destination, datasets, timeout_s))
        if destination.verify_stored:
            stored = {path: datasets[path] for path, outcome in outcomes.items() if outcome.ok}
            outcomes.update(_verify(destination, stored, timeout_s))
    return [outcomes[path] for path in paths]


def _verify(destination: StowDestination, stored: dict[Path, Dataset], timeout_s: float) -> dict[Path, SendOutcome]:
    """The outcome of each instance the STOW-RS response called stored, once QIDO-RS has
    looked for it (one search per series)."""
    client = _client(destination, timeout_s, [])
    by_series: dict[tuple[str, str], dict[Path, Dataset]] = {}
    for path, ds in stored.items():
        by_series.setdefault((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), {})[path] = ds
    outcomes = {}
    for (study, series), members in by_series.items():
        try:
            found = {
                str(Dataset.from_json(item).get("SOPInstanceUID", ""))
                for item in client.search_for_instances(
                    study_instance_uid=study, series_instance_uid=series, fields=["SOPInstanceUID"], get_remaining=True,
                )
            }
        except requests.RequestException as exc:
            code = exc.response.status_code if isinstance(exc, requests.HTTPError) and exc.response is not None else None
            why = f"HTTP {code}" if code else type(exc).__name__
            log.warning("QIDO-RS read-back from %s failed: %s", destination.name, why)
            found, missing_detail = set(), f"stored per the STOW-RS response, not verified: QIDO-RS failed ({why})"
        else:
            missing_detail = "stored per the STOW-RS response, but QIDO-RS does not find it"
        for path, ds in members.items():
            if str(ds.SOPInstanceUID) in found:
                outcomes[path] = SendOutcome(path, ok=True)
            else:
                outcomes[path] = SendOutcome(path, ok=False, transient=True, detail=missing_detail)
                log.warning("STOW-RS to %s: an instance the response called stored is not found by QIDO-RS", destination.name)
    return outcomes


def _store(destination: StowDestination, datasets: dict[Path, Dataset], timeout_s: float) -> dict[Path, SendOutcome]:
    responses: list[requests.Response] = []
    client = _client(destination, timeout_s, responses, accept=_STOW_ACCEPT)
    try:
        client.store_instances(list(datasets.values()))
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        reasons = _store_response(exc.response) if code in _PER_INSTANCE_ERRORS else None
        if reasons is not None:
            log.warning("STOW-RS to %s refused the request: HTTP %d", destination.name, code)
            # 400 and 409 store none (PS3.18 10.5.3), whatever the body references.
            refused = SendOutcome(Path(), ok=False, detail=f"STOW-RS refused the request: HTTP {code}")
            return _per_instance(datasets, reasons, referenced=refused, unlisted=refused)
        transient = code >= 500 or code in _TRANSIENT_HTTP or code == 0
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: HTTP {code}", transient=transient) from exc
    except _CLIENT_BODY_ERRORS:
        # dicomweb-client failed to parse a 2xx body (requests' JSONDecodeError is also a
        # RequestException, hence before it); the body is judged below, as any other.
        if not (responses and responses[-1].ok):
            raise
    except requests.RequestException as exc:
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: {type(exc).__name__}") from exc
    last = responses[-1] if responses else None
    status = last.status_code if last is not None else 0
    answer = _store_response(last)
    if answer is None:
        kind = (media_type(last) or "no Content-Type") if last is not None and last.content else "no body"
        log.warning("STOW-RS to %s: HTTP %d without a Store Instances Response (%s)", destination.name, status, kind)
        unknown = f"HTTP {status} without a Store Instances Response ({kind}): {_UNCONFIRMED}"
        return {path: SendOutcome(path, ok=False, transient=True, detail=unknown) for path in datasets}
    unconfirmed = SendOutcome(Path(), ok=False, transient=True, detail=f"HTTP {status}, not referenced: {_UNCONFIRMED}")
    outcomes = _per_instance(datasets, answer, referenced=SendOutcome(Path(), ok=True), unlisted=unconfirmed)
    if any(outcome.detail == unconfirmed.detail for outcome in outcomes.values()):
        log.warning("STOW-RS to %s: HTTP %d did not reference every instance sent", destination.name, status)
    return outcomes
