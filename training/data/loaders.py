"""Images -> :class:`~training.data.corpus.Sample`, through the node's own pixel pipeline.

DICOM goes through exactly what the node runs at inference
(:func:`ortho_node.model.preprocess.preprocess_frame` for radiographs,
:func:`ortho_node.model.series.survey_series` + :func:`~ortho_node.model.series.prepare_series`
for MR series: VOI, MONOCHROME1, mirroring to the canonical side, aspect-preserving fit,
slice order and sampling), with mean 0 / std 1 so the result is the ``[0, 1]`` display plane.
Plain image files (PNG/JPEG/BMP, as the paper's exported corpus) are read with Pillow as grey
and given the same aspect-preserving fit; a left knee (``laterality == "L"``) is mirrored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from ortho_node.model.pixels import UnsupportedImageError
from ortho_node.model.preprocess import (
    Interpolation,
    PreprocessConfig,
    plan_geometry,
    preprocess_image,
)
from ortho_node.model.series import SliceSampling, prepare_series, survey_series
from training.data.corpus import Sample

__all__ = [
    "IMAGE_SUFFIXES",
    "PipelineOptions",
    "image_file_plane",
    "samples_from_datasets",
    "to_uint8",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File suffixes read as plain images rather than DICOM."""


@dataclass(frozen=True)
class PipelineOptions:
    """How DICOM becomes planes; keep it equal to what the node will run with the bundle.

    Parameters
    ----------
    image_size : int
        Side ``S`` of the planes (the bundle's input size).
    interpolation : str, optional
        ``"bicubic"`` (default: the bundle manifest's default, which the node follows) or
        ``"bilinear"``.
    max_slices : int, optional
        MR slices kept per series, evenly spread (default 16, the node's default).
    target_spacing_mm : float or None, optional
        None (default): the node's ``fit`` mode; a number: its ``spacing`` mode.
    """

    image_size: int
    interpolation: str = "bicubic"
    max_slices: int = 16
    target_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise TypeError(f"image_size must be an int, got {type(self.image_size).__name__}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must lie in [32, 1024], got {self.image_size}")
        Interpolation(self.interpolation)
        SliceSampling(max_slices=self.max_slices)

    def preprocess_config(self) -> PreprocessConfig:
        """The node config that yields ``[0, 1]`` planes (mean 0, std 1)."""
        return PreprocessConfig(
            input_size=self.image_size,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            interpolation=self.interpolation,
            target_spacing_mm=self.target_spacing_mm,
        )


def to_uint8(plane: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` float -> ``uint8`` (rounded)."""
    return (plane.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _plane_of(item_tensor: torch.Tensor) -> torch.Tensor:
    # The node repeats the plane to 3 channels; with mean 0 / std 1 channel 0 is the plane.
    return to_uint8(item_tensor[..., 0, :, :])


def samples_from_datasets(
    datasets: Sequence[Dataset],
    *,
    options: PipelineOptions,
    labels_by_series: Mapping[str, Mapping[str, int]] | None = None,
    patient_id: str | None = None,
    views_by_series: Mapping[str, str] | None = None,
) -> tuple[list[Sample], list[str]]:
    """Preprocess the instances of one study (or any instance list) into samples.

    Radiographs (any non-MR modality) become one sample per instance; MR instances are grouped
    by series, and each usable series becomes one sample of its sampled slices.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        The instances.
    options : PipelineOptions
        Size, interpolation and slice sampling.
    labels_by_series : Mapping, optional
        Series Instance UID -> task labels (head name -> class index).
    patient_id : str, optional
        Overrides the Patient ID of the datasets (e.g. a pseudonym from a labels CSV).
    views_by_series : Mapping, optional
        Series Instance UID -> view text when the header's View Position should not be used.

    Returns
    -------
    (list of Sample, list of str)
        The samples, and one reason per instance or series that was skipped.
    """
    config = options.preprocess_config()
    sampling = SliceSampling(max_slices=options.max_slices)
    labels_by_series = labels_by_series or {}
    views_by_series = views_by_series or {}
    samples: list[Sample] = []
    skipped: list[str] = []
    mr = [ds for ds in datasets if str(ds.get("Modality", "")) == "MR"]
    others = [ds for ds in datasets if str(ds.get("Modality", "")) != "MR"]

    def identity(ds: Dataset) -> dict[str, str]:
        series = str(ds.get("SeriesInstanceUID", ""))
        return dict(
            patient_id=patient_id or str(ds.get("PatientID", "")),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            series_uid=series,
            modality=str(ds.get("Modality", "")),
        )

    for ds in others:
        try:
            prepared = preprocess_image(ds, config=config)
        except UnsupportedImageError as exc:
            skipped.append(f"instance skipped: {exc}")
            continue
        ident = identity(ds)
        samples.append(
            Sample(
                **ident,
                view=views_by_series.get(ident["series_uid"], str(ds.get("ViewPosition", ""))),
                planes=_plane_of(prepared.tensor)[None],
                labels=labels_by_series.get(ident["series_uid"], {}),
            )
        )
    for candidate in survey_series(mr) if mr else ():
        if not candidate.usable:
            skipped.append(f"MR series skipped: {candidate.excluded_reason}")
            continue
        try:
            prepared_series = prepare_series(candidate, config=config, sampling=sampling)
        except (UnsupportedImageError, ValueError) as exc:
            skipped.append(f"MR series skipped: {exc}")
            continue
        ident = identity(candidate.slices[0].dataset)
        plane = candidate.signature.plane.value.upper() if candidate.signature else ""
        samples.append(
            Sample(
                **ident,
                view=views_by_series.get(ident["series_uid"], plane),
                planes=_plane_of(prepared_series.tensor),
                labels=labels_by_series.get(ident["series_uid"], {}),
            )
        )
    return samples, skipped


def image_file_plane(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    laterality: str = "",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Read a plain image file as a ``uint8`` ``[S, S]`` plane (fit, centred, black padding).

    Parameters
    ----------
    path : path-like
        PNG/JPEG/BMP/TIFF file; colour images are converted to grey.
    image_size : int
        Side ``S``.
    laterality : str, optional
        ``"L"`` mirrors the image to the canonical right side (the node's convention for
        radiographs); anything else leaves it as it is.
    interpolation : str, optional
        ``"bicubic"`` (default) or ``"bilinear"``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as handle:
            grey = np.asarray(handle.convert("F"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path.name}: {exc}") from exc
    low, high = float(grey.min()), float(grey.max())
    values = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    geometry = plan_geometry(
        values.shape, output_size=image_size, spacing=None, target_spacing_mm=None
    )
    column0, row0, column1, row1 = geometry.crop_box
    crop = torch.from_numpy(np.ascontiguousarray(values[row0:row1, column0:column1]))
    resized = F.interpolate(
        crop[None, None],
        size=geometry.resized_shape,
        mode=Interpolation(interpolation).value,
        align_corners=False,
        antialias=True,
    )[0, 0]
    top, left, bottom, right = geometry.pad
    plane = F.pad(resized, (left, right, top, bottom), value=0.0)
    if laterality.strip().upper() == "L":
        plane = torch.flip(plane, dims=[1])
    return to_uint8(plane)


def stack_planes(planes: Iterable[torch.Tensor]) -> torch.Tensor:
    """Stack ``[S, S]`` planes into ``[K, S, S]``."""
    return torch.stack(list(planes))
