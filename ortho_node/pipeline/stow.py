"""STOW-RS delivery of result objects with dicomweb-client (basic or bearer auth).

The STOW response lists refused instances in FailedSOPSequence with a reason; HTTP 4xx other
than 408/429 is permanent (the archive will not take this as sent), 5xx and connection errors
are transient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass

from ortho_node.config import StowDestination
from ortho_node.dimse.scu import DestinationUnavailable, SendOutcome

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = {408, 429}


def _client(destination: StowDestination, timeout_s: float) -> DICOMwebClient:
    if destination.username and destination.password is not None:
        session = create_session_from_user_pass(destination.username, destination.password.get_secret_value())
    else:
        session = create_session()
    session.verify = destination.verify_tls
    headers = {}
    if destination.bearer_token is not None:
        headers["Authorization"] = f"Bearer {destination.bearer_token.get_secret_value()}"
    return DICOMwebClient(destination.url, session=session, headers=headers, timeout=timeout_s)


def store_files(destination: StowDestination, paths: Sequence[Path], *, timeout_s: float = 60) -> list[SendOutcome]:
    """STOW-RS the files in one request; per-object outcomes from the response.

    Raises
    ------
    DestinationUnavailable
        The request failed as a whole (connection error, HTTP error).
    """
    datasets = [pydicom.dcmread(path) for path in paths]
    try:
        response = _client(destination, timeout_s).store_instances(datasets)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        transient = code >= 500 or code in _TRANSIENT_HTTP or code == 0
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: HTTP {code}", transient=transient) from exc
    except requests.RequestException as exc:
        raise DestinationUnavailable(f"STOW-RS to {destination.name} failed: {type(exc).__name__}") from exc
    failed = {
        str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0))
        for item in response.get("FailedSOPSequence", [])
    }
    outcomes = []
    for path, ds in zip(paths, datasets):
        reason = failed.get(str(ds.SOPInstanceUID))
        if reason is None:
            outcomes.append(SendOutcome(path, ok=True))
        else:
            transient = 0xA700 <= reason <= 0xA7FF or reason == 0x0110
            outcomes.append(SendOutcome(path, ok=False, transient=transient, detail=f"STOW failure reason 0x{reason:04X}"))
    return outcomes
