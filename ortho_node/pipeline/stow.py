"""STOW-RS delivery of result objects with dicomweb-client (basic or bearer auth).

Outcomes per object, from the response (PS3.18 10.5.3): 200 stored all; 202 stored some, the
Failed SOP Sequence lists the others with a Failure Reason; 400 and 409 stored none, and
their body may say why for each. A Failure Reason is transient or permanent as a C-STORE
status is (:func:`~ortho_node.dimse.scu.failure_is_transient`). A request that fails as a
whole: HTTP 4xx other than 408/429 is permanent, 5xx, 408, 429 and connection errors are
transient.

dicomweb-client parses a response body only when its Content-Type is exactly
``application/dicom+json`` (or XML); an archive that adds a parameter (``; charset=utf-8``)
would have its Failed SOP Sequence ignored and every object counted as stored. A response
hook strips the parameters before the client reads the header, and a 202 whose body still
cannot be read leaves every object of the request to be retried: which were stored is unknown.

A response that says "stored" is not always so: an origin server may answer 200 for an instance
its own rules then discard (Orthanc does, for an instance its ``ReceivedInstanceFilter``
drops). With ``verify_stored`` the node reads the result series back by QIDO-RS after the
request and counts as stored only the instances the server lists; the others are sent again,
as a storage commitment failure is for a DIMSE destination.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
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


def media_type(response: requests.Response) -> str:
    """The response's media type without parameters, lower case."""
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _bare_content_type(response: requests.Response, *args: object, **kwargs: object) -> None:
    if "Content-Type" in response.headers:
        response.headers["Content-Type"] = media_type(response)


def _client(destination: StowDestination, timeout_s: float, responses: list[requests.Response]) -> DICOMwebClient:
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
    return DICOMwebClient(destination.url, session=session, headers=headers, timeout=timeout_s)


def _json_body(response: requests.Response) -> Dataset | None:
    """The response body as a dataset, if it is DICOM JSON; None otherwise."""
    if not response.content or media_type(response) not in _JSON_TYPES:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError
        return None


def _per_instance(datasets: dict[Path, Dataset], body: Dataset, otherwise: SendOutcome) -> dict[Path, SendOutcome]:
    """Each instance's outcome: its Failure Reason where the Failed SOP Sequence lists it,
    else ``otherwise`` (for its own path)."""
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0))
        for item in body.get("FailedSOPSequence", [])
    }
    outcomes = {}
    for path, ds in datasets.items():
        reason = failed.get(str(ds.SOPInstanceUID))
        if reason is None:
            outcomes[path] = replace(otherwise, path=path)
        else:
            outcomes[path] = SendOutcome(
                path, ok=False, transient=failure_is_transient(reason),
                detail=f"STOW failure reason 0x{reason:04X}",
            )
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
    try:
        body = _client(destination, timeout_s, responses).store_instances(list(datasets.values()))
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        reasons = _json_body(exc.response) if code in _PER_INSTANCE_ERRORS and exc.response is not None else None
        if reasons is not None and "FailedSOPSequence" in reasons:
            log.warning("STOW-RS to %s refused the request: HTTP %d", destination.name, code)
            refused = SendOutcome(Path(), ok=False, detail=f"STOW-RS refused the request: HTTP {code}")
            return _per_instance(datasets, reasons, refused)
        transient = code >= 500 or code in _TRANSIENT_HTTP or code == 0
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: HTTP {code}", transient=transient) from exc
    except requests.RequestException as exc:
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: {type(exc).__name__}") from exc
    status = responses[-1].status_code if responses else 200
    if status == 202 and "FailedSOPSequence" not in body and "ReferencedSOPSequence" not in body:
        log.warning("STOW-RS to %s: HTTP 202 without a readable response body", destination.name)
        unknown = "HTTP 202 (some instances not stored) without a readable response: retried"
        return {path: SendOutcome(path, ok=False, transient=True, detail=unknown) for path in datasets}
    return _per_instance(datasets, body, SendOutcome(Path(), ok=True))
