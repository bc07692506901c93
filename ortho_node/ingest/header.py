"""Read just the header fields ingest needs from a received data set, without decoding pixels.

The SCP hands over the data set bytes exactly as they came off the wire (no file meta). Only
the elements listed in ``_KEYWORDS`` are read, as raw elements straight from pydicom's element
generator (no Dataset is built), and reading stops after the last of them, so a 10 MB
radiograph costs the same as a 100 kB slice: about 0.2 ms.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.datadict import keyword_for_tag
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from ortho_node.ingest.structure import TruncatedDatasetError, check_complete
from ortho_node.privacy import uid_ref

_KEYWORDS = (
    "SpecificCharacterSet",
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


class UnsupportedTransferSyntaxError(InvalidDatasetError):
    """The data set is encoded in a transfer syntax the node does not accept (STOW-RS Failure
    Reason 0xC122). Over DIMSE such a syntax is refused at presentation context negotiation."""

    def __init__(self, transfer_syntax_uid: str) -> None:
        # A transfer syntax UID is not PHI; repr and the UI length limit keep odd input short.
        super().__init__(f"transfer syntax not supported: {transfer_syntax_uid[:64]!r}")
        self.transfer_syntax_uid = transfer_syntax_uid


class UnsupportedSOPClassError(InvalidDatasetError):
    """The instance's SOP class is not a storage SOP class the node accepts (STOW-RS Failure
    Reason 0x0122). Over DIMSE such a class is refused at presentation context negotiation."""

    def __init__(self, sop_class_uid: str) -> None:
        super().__init__(f"SOP class not supported: {sop_class_uid[:64]!r}")
        self.sop_class_uid = sop_class_uid


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


def _ascii(value: bytes | None) -> str | None:
    if not value:
        return None
    return value.decode("ascii", "replace").strip(" \x00") or None


def _text(value: bytes | None, encodings: list[str], limit: int) -> str | None:
    if not value:
        return None
    text = decode_bytes(value, encodings, set()).strip(" \x00")
    return text[:limit] or None


def _integer(value: bytes | None) -> int | None:
    text = _ascii(value)
    if text is None:
        return None
    try:
        return int(text.split("\\")[0])
    except ValueError:
        return None


def _required_uid(values: dict[str, Any], keyword: str) -> str:
    uid = _ascii(values.get(keyword))
    if not uid:
        raise InvalidDatasetError(f"{keyword} (Type 1) is missing or empty")
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


def _contents(stream: BinaryIO) -> bytes | memoryview:
    if isinstance(stream, io.BytesIO):
        return stream.getbuffer()  # no copy
    position = stream.tell()
    stream.seek(0)
    contents = stream.read()
    stream.seek(position)
    return contents


def parse_header(data: BinaryIO | bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Parse the ingest header from raw data set bytes encoded in ``transfer_syntax_uid``.

    Raises
    ------
    UnsupportedTransferSyntaxError
        ``transfer_syntax_uid`` is not a transfer syntax pydicom can read.
    InvalidDatasetError
        The bytes do not parse, end inside an element (truncated), or a required UID is
        missing or invalid.
    """
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_transfer_syntax:
        raise UnsupportedTransferSyntaxError(transfer_syntax_uid)
    stream = _readable_stream(data, syntax)
    values: dict[str, Any] = {}
    try:
        for element in data_element_generator(
            stream,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_stop_after_wanted,
            specific_tags=list(_TAGS),
        ):
            values[keyword_for_tag(element.tag)] = element.value
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot parse"
        raise InvalidDatasetError(f"data set does not parse: {type(exc).__name__}", unparseable=True) from exc
    if not values:
        raise InvalidDatasetError("data set is empty or not DICOM", unparseable=True)
    try:  # the rest, unparsed so far, must be whole too (e.g. Pixel Data not cut short)
        check_complete(_contents(stream), stream.tell(), implicit_vr=syntax.is_implicit_VR,
                       little_endian=syntax.is_little_endian)
    except TruncatedDatasetError as exc:
        raise InvalidDatasetError(f"data set is truncated or malformed: {exc}", unparseable=True) from exc
    charset = _ascii(values.get("SpecificCharacterSet"))
    encodings = convert_encodings(charset.split("\\") if charset else None)
    return InstanceHeader(
        sop_class_uid=_required_uid(values, "SOPClassUID"),
        sop_instance_uid=_required_uid(values, "SOPInstanceUID"),
        study_instance_uid=_required_uid(values, "StudyInstanceUID"),
        series_instance_uid=_required_uid(values, "SeriesInstanceUID"),
        modality=_ascii(values.get("Modality")),
        body_part=_ascii(values.get("BodyPartExamined")),
        study_description=_text(values.get("StudyDescription"), encodings, 64),
        series_description=_text(values.get("SeriesDescription"), encodings, 64),
        series_number=_integer(values.get("SeriesNumber")),
        instance_number=_integer(values.get("InstanceNumber")),
    )
