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


# --- UIDs in free text -----------------------------------------------------------------------

# A UID-like token: root arc 0-2, at least three arcs, ten characters or more (so "2.14.1" or
# an IP address such as 10.0.0.1 is not one); DICOM's own UIDs (1.2.840.10008.*: SOP classes,
# transfer syntaxes) name no patient and stay readable.
_UID_TOKEN = re.compile(r"(?<![\w.])[0-2](?:\.\d+){2,}(?!\w|\.\d)")
_STANDARD_ROOT = "1.2.840.10008."


def redact(text: str) -> str:
    """``text`` with every patient-specific UID in it replaced by its :func:`uid_ref`: for
    messages the node does not compose itself (an exception's text, a path in the store)."""
    return _UID_TOKEN.sub(_uid_ref_of_match, text)


def _uid_ref_of_match(match: re.Match[str]) -> str:
    token = match.group(0)
    if len(token) < 10 or token.startswith(_STANDARD_ROOT):
        return token
    return uid_ref(token)


class RedactUids(logging.Filter):
    """Patient-specific UIDs as :func:`uid_ref` wherever the node did not compose the text: an
    exception's message or traceback (a store path ``…/<study>/<series>/<sop>.dcm``), the
    records of other libraries (Celery reports a failed task with its exception). The node's
    own messages already name UIDs by reference and keep, say, a SOP class UID readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("ortho_node"):
            message = record.getMessage()
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        elif isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
            record.args = tuple(redact(str(a)) if isinstance(a, BaseException) else a for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


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


def redact_logs() -> None:
    """Route Python warnings into logging and redact at every handler of the root logger (a
    filter on a handler sees the records of every child logger): quoted values of third-party
    records, patient-specific UIDs of all."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        for kind in (RedactQuotedValues, RedactUids):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
