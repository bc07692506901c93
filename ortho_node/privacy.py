"""Keep PHI out of logs, metrics and error messages.

UIDs can identify a patient's study, so logs carry a short keyed-free hash instead. The hash
is stable, so an admin can still match a log line to an index row (``ortho-node status``
shows the same short form), but it cannot be reversed into the UID.
"""

from __future__ import annotations

import hashlib
import logging
import re


def uid_ref(uid: str | None) -> str:
    """Return a short, stable, non-reversible reference for a DICOM UID (``u:`` + 12 hex)."""
    if not uid:
        return "u:-"
    return "u:" + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]


# --- third-party log records ----------------------------------------------------------------

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_THIRD_PARTY = ("pydicom", "pynetdicom", "py.warnings")
"""Loggers whose messages quote DICOM values (pydicom's "Invalid value for VR UI: '1.2.…'",
pynetdicom's "Non-conformant … value '…'"): a UID, a name or a date of the patient's."""


class RedactQuotedValues(logging.Filter):
    """Replace every quoted value in records of pydicom, pynetdicom and Python warnings with
    ``<redacted>``; the node's own records already refer to UIDs by :func:`uid_ref`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_THIRD_PARTY):
            record.msg = _QUOTED.sub("<redacted>", record.getMessage())
            record.args = None
        return True


def redact_third_party_logs() -> None:
    """Route Python warnings into logging and redact third-party records at every handler of
    the root logger (a filter on a handler sees the records of every child logger)."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactQuotedValues) for f in handler.filters):
            handler.addFilter(RedactQuotedValues())
