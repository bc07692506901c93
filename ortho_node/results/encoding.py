"""Encode a result object the node built as a DICOM Part 10 file (Explicit VR Little Endian).

pydicom's writer corrects ambiguous VRs (``US or SS`` and the like) of a data set it did not
read from a file, and it does so at every nesting level: ``write_dataset`` corrects the data set,
recursing into its sequences, then writes each sequence item with ``write_dataset`` again, which
corrects that item's subtree once more. A TID 1500 SR nests content items eight or nine levels
deep, so every element was checked as many times (~20 % of writing a 30-slice MRI report).

Here the tree is walked once: each data set is stated to be in the encoding it is about to be
written in (pydicom's own ``set_original_encoding``, which is all the writer consults), and the
correction runs once, from the root, only if an ambiguous VR occurs anywhere. The bytes are
pydicom's, unchanged (``tests/test_results_encoding.py`` compares them with a plain
``save_as``).
"""

from __future__ import annotations

import io

from pydicom import filewriter
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, VR


def _state_written_encoding(dataset: Dataset) -> bool:
    """Mark ``dataset`` and every nested item as Explicit VR Little Endian in its own character
    set; return whether an element with an ambiguous VR occurs anywhere in the tree."""
    dataset.set_original_encoding(False, True, dataset._character_set)
    ambiguous = False
    for element in dataset.elements():
        if element.VR == VR.SQ:
            for item in dataset[element.tag].value:
                ambiguous |= _state_written_encoding(item)
        elif element.VR in AMBIGUOUS_VR:
            ambiguous = True
    return ambiguous


def encode_part10(dataset: Dataset) -> bytes:
    """The Part 10 bytes of ``dataset``, a data set the node built.

    In Explicit VR Little Endian (all the node writes), the data set afterwards records that
    encoding as its original one, which it now is; any other transfer syntax is left to
    pydicom's writer as it is.
    """
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None and file_meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian:
        if _state_written_encoding(dataset):
            filewriter.correct_ambiguous_vr(dataset, is_little_endian=True)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
