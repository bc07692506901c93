"""Is a received data set whole? Element lengths must end exactly where the data set ends.

Ingest parses only the header fields it needs, then stops: a data set cut short after them (a
Pixel Data element that declares 32 bytes and carries 12, a sequence without its delimiter)
parsed fine and was acknowledged, to fail later when the worker decoded it. This walks the
rest of the data set's element headers, skipping every value without reading it (PS3.5 7.1:
tag, VR in explicit syntaxes, 16- or 32-bit length; 7.5: sequences and items of undefined
length; A.4: encapsulated Pixel Data as a sequence of fragments), and fails where a length
points past the end. It costs microseconds per element and reads no value.
"""

from __future__ import annotations

import struct

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# Explicit VRs with a reserved 2 bytes and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 64  # nested sequences; deeper is taken as garbage, not recursion without end


class TruncatedDatasetError(ValueError):
    """The data set ends inside an element, or a sequence or item lacks its delimiter."""


def check_complete(data: bytes | memoryview, start: int, *, implicit_vr: bool, little_endian: bool) -> None:
    """Walk the top-level elements of ``data`` from ``start`` (an element boundary) to its end.

    Raises
    ------
    TruncatedDatasetError
        An element's value, a fragment or an item runs past the end of ``data``, or a sequence
        of undefined length has no delimiter before it.
    """
    _Walker(memoryview(data), "<" if little_endian else ">").elements(start, implicit_vr, nested=False, depth=0)


class _Walker:
    def __init__(self, data: memoryview, order: str) -> None:
        self.data = data
        self.end = len(data)
        self.tag_length = struct.Struct(order + "HHI")  # group, element, 32-bit length
        self.short_length = struct.Struct(order + "H")
        self.long_length = struct.Struct(order + "I")

    def elements(self, pos: int, implicit: bool, *, nested: bool, depth: int) -> int:
        """Walk elements from ``pos``; at top level to the end of the data, in an item of
        undefined length to its Item Delimitation. Return the position after them."""
        if depth > _MAX_DEPTH:
            raise TruncatedDatasetError("sequences nested too deep")
        while pos < self.end:
            if self.end - pos < 8:
                raise TruncatedDatasetError(f"{self.end - pos} stray byte(s) at the end")
            group, element, length = self.tag_length.unpack_from(self.data, pos)
            tag = group << 16 | element
            if nested and tag == _ITEM_END:
                return pos + 8
            if group == 0xFFFE:
                raise TruncatedDatasetError(f"item tag ({group:04X},{element:04X}) outside a sequence")
            header = 8
            vr = None if implicit else bytes(self.data[pos + 4 : pos + 6])
            if vr is not None:
                if vr in _LONG_VRS:
                    if self.end - pos < 12:
                        raise TruncatedDatasetError(f"element ({group:04X},{element:04X}) header cut short")
                    (length,) = self.long_length.unpack_from(self.data, pos + 8)
                    header = 12
                else:
                    (length,) = self.short_length.unpack_from(self.data, pos + 6)
            pos += header
            if length == _UNDEFINED:
                # a sequence, encapsulated Pixel Data, or UN of undefined length (implicit VR inside, PS3.5 6.2.2)
                pos = self.items(pos, implicit or vr == b"UN", depth=depth + 1, tag=(group, element))
            elif pos + length > self.end:
                raise TruncatedDatasetError(
                    f"element ({group:04X},{element:04X}) declares {length} bytes, {self.end - pos} remain"
                )
            else:
                pos += length
        if nested:
            raise TruncatedDatasetError("an item of undefined length has no delimiter")
        return pos

    def items(self, pos: int, implicit: bool, *, depth: int, tag: tuple[int, int]) -> int:
        """Walk the items (or fragments) of a value of undefined length to its delimiter."""
        while True:
            if self.end - pos < 8:
                raise TruncatedDatasetError(f"sequence ({tag[0]:04X},{tag[1]:04X}) has no delimiter")
            group, element, length = self.tag_length.unpack_from(self.data, pos)
            item = group << 16 | element
            pos += 8
            if item == _SEQUENCE_END:
                return pos
            if item != _ITEM:
                raise TruncatedDatasetError(f"sequence ({tag[0]:04X},{tag[1]:04X}) holds a non-item tag")
            if length == _UNDEFINED:
                pos = self.elements(pos, implicit, nested=True, depth=depth)
            elif pos + length > self.end:
                raise TruncatedDatasetError(
                    f"an item of ({tag[0]:04X},{tag[1]:04X}) declares {length} bytes, {self.end - pos} remain"
                )
            else:
                pos += length
