"""Read just the header fields ingest needs from a received data set, without decoding pixels.

The SCP hands over the data set bytes exactly as they came off the wire (no file meta). Only
the elements listed in ``_TAGS`` are read, values stay raw until accessed, and reading stops
before Pixel Data, so a 10 MB radiograph costs the same as a 100 kB slice.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ortho_node.privacy import uid_ref

_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDescription",
    "SeriesDescription",
    "Modality",
    "BodyPartExamined",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
)
_TAGS = [Tag(kw) for kw in _KEYWORDS]
_PIXEL_DATA = Tag("PixelData")
_LAST_WANTED = max(_TAGS)


class InvalidDatasetError(ValueError):
    """A received data set that cannot be stored as it is.

    ``unparseable`` is True when the bytes are not a DICOM data set at all (DIMSE: 0xC000
    family); otherwise the data set parsed but breaks a rule ingest relies on (0xA900).
    The message never contains PHI.
    """

    def __init__(self, message: str, *, unparseable: bool = False) -> None:
        super().__init__(message)
        self.unparseable = unparseable


@dataclass(frozen=True)
class InstanceHeader:
    """The header fields of one instance that the index and the routing rules use."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    body_part: str | None
    study_description: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None


def _stop_after_wanted(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag > _LAST_WANTED or tag == _PIXEL_DATA


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    return str(value).strip()[:limit] or None


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if not value:
        raise InvalidDatasetError(f"{keyword} (Type 1) is missing or empty")
    uid = str(value).strip()
    if not UID(uid).is_valid:
        raise InvalidDatasetError(f"{keyword} is not a valid UID ({uid_ref(uid)})")
    return uid


def _readable_stream(data: BinaryIO | bytes, transfer_syntax: UID) -> BinaryIO:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = io.BytesIO(bytes(data))
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        data.seek(0)
        try:
            return io.BytesIO(zlib.decompress(data.read(), -zlib.MAX_WBITS))
        except zlib.error as exc:
            raise InvalidDatasetError("deflated data set does not inflate", unparseable=True) from exc
    data.seek(0)
    return data


def parse_header(data: BinaryIO | bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Parse the ingest header from raw data set bytes encoded in ``transfer_syntax_uid``.

    Raises
    ------
    InvalidDatasetError
        The bytes do not parse, or a required UID is missing or invalid.
    """
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_transfer_syntax:
        raise InvalidDatasetError(f"unknown transfer syntax {transfer_syntax_uid}")
    stream = _readable_stream(data, syntax)
    try:
        ds = read_dataset(
            stream,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_stop_after_wanted,
            specific_tags=list(_TAGS),
        )
        # Touch each value now, so a malformed element fails here and not later in a worker.
        fields: dict[str, Any] = {kw: ds.get(kw) for kw in _KEYWORDS}
    except InvalidDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot parse"
        raise InvalidDatasetError(f"data set does not parse: {type(exc).__name__}", unparseable=True) from exc
    if not fields.get("SOPInstanceUID") and not fields.get("SOPClassUID") and len(ds) == 0:
        raise InvalidDatasetError("data set is empty or not DICOM", unparseable=True)
    return InstanceHeader(
        sop_class_uid=_required_uid(ds, "SOPClassUID"),
        sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality", 16),
        body_part=_text(ds, "BodyPartExamined", 64),
        study_description=_text(ds, "StudyDescription", 64),
        series_description=_text(ds, "SeriesDescription", 64),
        series_number=_integer(ds, "SeriesNumber"),
        instance_number=_integer(ds, "InstanceNumber"),
    )

