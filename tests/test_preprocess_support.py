"""Shared helpers for the preprocess / series / scope tests: real pydicom files, and real
files given the headers a test needs (new UIDs, orientation, functional groups)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

import data_store

DATA_STORE = Path(os.path.dirname(data_store.__file__)) / "data"

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
"""Rows run anterior→posterior, columns head→feet: normal along patient x."""
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
"""Rows run right→left (patient x), columns head→feet: normal along y."""
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""Rows run right→left (patient x), columns anterior→posterior: normal along z."""


def test_file(name: str) -> Path:
    """Path of a file shipped by pydicom (test_files) or pydicom-data (data_store)."""
    in_store = DATA_STORE / name
    if in_store.exists():
        return in_store
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(name)
    return Path(found)


test_file.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def read(name: str, **kwargs: object) -> Dataset:
    return pydicom.dcmread(test_file(name), **kwargs)


def set_pixels(ds: Dataset, pixels: np.ndarray) -> Dataset:
    """Replace the pixel data with ``pixels``, stored natively at the dataset's bit depth."""
    kind = "i" if ds.PixelRepresentation else "u"
    ds.PixelData = np.ascontiguousarray(pixels).astype(f"<{kind}{ds.BitsAllocated // 8}").tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def mr_slice(
    *,
    series_uid: str,
    orientation: Sequence[float],
    position: Sequence[float],
    instance_number: int,
    description: str | None = None,
    echo_time: float | None = None,
    repetition_time: float | None = None,
    image_type: Sequence[str] | None = None,
    laterality: str | None = None,
    series_number: int = 1,
    pixel_scale: float = 1.0,
    keep_window: bool = True,
) -> Dataset:
    """A copy of MR_small (real pixels) posing as one slice of a series."""
    ds = read("MR_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageType = list(image_type) if image_type is not None else ["ORIGINAL", "PRIMARY", "M"]
    for keyword, value in (
        ("SeriesDescription", description),
        ("EchoTime", echo_time),
        ("RepetitionTime", repetition_time),
        ("Laterality", laterality),
    ):
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if pixel_scale != 1.0:
        set_pixels(ds, np.rint(ds.pixel_array.astype(np.float64) * pixel_scale))
    if not keep_window:
        del ds.WindowCenter
        del ds.WindowWidth
    return ds


def mr_series(
    count: int,
    *,
    orientation: Sequence[float],
    spacing_mm: float = 3.0,
    origin: Sequence[float] = (-80.0, -90.0, 60.0),
    instance_order: Sequence[int] | None = None,
    **kwargs: object,
) -> list[Dataset]:
    """``count`` slices stepping along the orientation's normal; instance numbers shuffled by
    ``instance_order`` (default: reversed, so Instance Number never equals position order)."""
    uid = generate_uid()
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, column)
    numbers = list(instance_order) if instance_order is not None else list(range(count, 0, -1))
    return [
        mr_slice(
            series_uid=uid,
            orientation=orientation,
            position=np.asarray(origin) + normal * spacing_mm * i,
            instance_number=numbers[i],
            **kwargs,  # type: ignore[arg-type]
        )
        for i in range(count)
    ]


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def enhanced_mr(
    *,
    orientation: Sequence[float] = SAGITTAL,
    positions_x: Sequence[float] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    spacings: Sequence[tuple[float, float]] | None = None,
    frame_laterality: str | None = None,
    variant: str = "emri_small.dcm",
) -> Dataset:
    """pydicom-data's real 10-frame Enhanced MR with per-frame functional groups added.

    The anonymised original has its functional groups stripped; this puts back Plane
    Position / Orientation, Pixel Measures, Frame VOI LUT and Frame Anatomy, per frame.
    """
    ds = read(variant)
    frames = int(ds.NumberOfFrames)
    positions_x = positions_x if positions_x is not None else [2.0 * i for i in range(frames)]
    shared = _item(
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=list(orientation))])
    )
    per_frame = []
    for index in range(frames):
        group = _item(
            PlanePositionSequence=DicomSequence(
                [_item(ImagePositionPatient=[float(positions_x[index]), -60.0, 40.0])]
            ),
            FrameContentSequence=DicomSequence([_item(InStackPositionNumber=index + 1)]),
        )
        if windows is not None:
            center, width = windows[index]
            group.FrameVOILUTSequence = DicomSequence(
                [_item(WindowCenter=center, WindowWidth=width)]
            )
        if spacings is not None:
            group.PixelMeasuresSequence = DicomSequence(
                [_item(PixelSpacing=list(spacings[index]), SliceThickness=2.0)]
            )
        if frame_laterality is not None:
            group.FrameAnatomySequence = DicomSequence(
                [_item(FrameLaterality=frame_laterality, AnatomicRegionSequence=DicomSequence([]))]
            )
        per_frame.append(group)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return ds


def with_headers(ds: Dataset, **attributes: object) -> Dataset:
    """A deep copy of ``ds`` with attributes set (None deletes)."""
    changed = copy.deepcopy(ds)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in changed:
                delattr(changed, keyword)
        else:
            setattr(changed, keyword, value)
    return changed
