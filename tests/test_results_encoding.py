"""Result objects encode to pydicom's own bytes, with the ambiguous-VR correction run at most once."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom import filewriter
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ortho_node.results import build_result_objects
from ortho_node.results.encoding import encode_part10
from tests.results_support import acl_finding, failed, kl_finding, make_dx, make_mr_series, ref, replace, study


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    copy.deepcopy(dataset).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def corrections(monkeypatch) -> list[Dataset]:
    """The data sets pydicom's ambiguous-VR correction is started on (each call walks the
    data set's whole subtree; the calls it makes itself for the items on its way are not listed)."""
    seen: list[Dataset] = []
    original = filewriter.correct_ambiguous_vr

    def counting(ds, is_little_endian, ancestors=None):
        if ancestors is None and not isinstance(ds, FileMetaDataset):  # the few meta elements
            seen.append(ds)
        return original(ds, is_little_endian, ancestors)

    monkeypatch.setattr(filewriter, "correct_ambiguous_vr", counting)
    return seen


def _objects():
    su = generate_uid()
    dx = make_dx(su, laterality="L")
    xray = study(su, findings=(replace(kl_finding(dx), title="Gonarthrose \u2014 Kellgren\u2013Lawrence"),), evaluated_images=(ref(dx),))
    su_mr = generate_uid()
    series = make_mr_series(su_mr, n_slices=4)
    mri = study(
        su_mr,
        findings=(acl_finding(series[2], series),),
        not_evaluated=(failed(),),
        evaluated_images=tuple(ref(d) for d in series),
    )
    for findings, sources in ((xray, [dx]), (mri, series)):
        yield from build_result_objects(findings, sources=sources, include_key_objects=True)


def test_every_result_object_encodes_to_pydicoms_bytes_with_at_most_one_correction_pass(corrections):
    kinds = set()
    for obj in _objects():
        expected = _pydicom_bytes(obj.dataset)
        corrections.clear()
        assert encode_part10(obj.dataset) == expected, obj.kind
        # SR and KO hold no ambiguous VR: no pass; an SC's Pixel Data is "OB or OW": one, from the root.
        assert corrections == ([obj.dataset] if obj.kind.value == "sc" else []), obj.kind
        kinds.add(obj.kind.value)
        # A second encoding (a re-run writing the same object) gives the same bytes.
        assert encode_part10(obj.dataset) == expected
    assert kinds == {"sr", "sc", "ko"}


def test_plain_pydicom_corrects_a_report_once_per_nested_item(corrections):
    """What the module avoids (if pydicom stops doing this, the module can go)."""
    sr = next(iter(_objects())).dataset
    _pydicom_bytes(sr)
    assert len(corrections) > 50


def _with_nested_ambiguous_value(transfer_syntax: str) -> Dataset:
    """A signed image whose nested item holds a ``US or SS`` value: only the root knows the sign."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelRepresentation = 1
    item = Dataset()
    item.add_new(0x00280106, "US or SS", -5)  # Smallest Image Pixel Value
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].SourceImageSequence = Sequence([item])
    return ds


def test_a_nested_ambiguous_value_is_corrected_once_from_the_root(corrections):
    ds = _with_nested_ambiguous_value(ExplicitVRLittleEndian)
    expected = _pydicom_bytes(ds)
    corrections.clear()
    encoded = encode_part10(ds)
    assert encoded == expected
    assert corrections == [ds]
    back = pydicom.dcmread(io.BytesIO(encoded))
    value = back.ReferencedImageSequence[0].SourceImageSequence[0][0x00280106]
    assert (value.VR, value.value) == ("SS", -5)


def test_other_transfer_syntaxes_are_left_to_pydicom(corrections):
    ds = _with_nested_ambiguous_value(ImplicitVRLittleEndian)
    expected = _pydicom_bytes(ds)
    assert encode_part10(ds) == expected
    assert ds.original_encoding == (None, None)  # not marked
