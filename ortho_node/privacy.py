"""Keep PHI out of logs, metrics and error messages.

UIDs can identify a patient's study, so logs carry a short keyed-free hash instead. The hash
is stable, so an admin can still match a log line to an index row (``ortho-node status``
shows the same short form), but it cannot be reversed into the UID.
"""

from __future__ import annotations

import hashlib


def uid_ref(uid: str | None) -> str:
    """Return a short, stable, non-reversible reference for a DICOM UID (``u:`` + 12 hex)."""
    if not uid:
        return "u:-"
    return "u:" + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]
