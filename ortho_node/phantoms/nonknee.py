"""Phantom studies of other body parts, for testing that the node says "out of scope".

Two kinds, each with a correct Body Part Examined: a PA chest computed radiograph (``CHEST``)
and an axial T2 head MR series (``HEAD`` by default, or ``BRAIN``). The images are plausible
enough for a viewer and for the node's scope checks; they carry no knee labels.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
from pydicom.dataset import Dataset

from ortho_node.phantoms.detector import detector_values
from ortho_node.phantoms.dicom_common import SeriesInfo, new_instance, set_grey_pixels
from ortho_node.phantoms.dicom_mr import SlicePlane, new_mr_instance
from ortho_node.phantoms.dicom_xray import SOP_CLASS_BY_MODALITY, add_cr_image, add_projection_basics
from ortho_node.phantoms.geometry import Canvas, Pose
from ortho_node.phantoms.identity import MAX_PATIENT_INDEX, PatientIdentity, StudyIdentity, phantom_uid
from ortho_node.phantoms.mri import SequenceTiming
from ortho_node.phantoms.seeding import rng_for
from ortho_node.phantoms.specs import XrayModality
from ortho_node.phantoms.study import PhantomDatasets, PhantomStudy, write_datasets

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class NonKneeKind(str, enum.Enum):
    """Which out-of-scope study to make."""

    CHEST_CR = "chest_cr"
    """PA chest computed radiograph, Body Part Examined ``CHEST``."""
    HEAD_MR = "head_mr"
    """Axial T2 head MR series, Body Part Examined ``HEAD`` (or ``BRAIN``)."""


def render_chest_radiograph(*, seed: int, rows: int = 512, columns: int = 512,
                            pixel_spacing_mm: float = 0.7) -> np.ndarray:
    """Render a PA chest radiograph (patient's right on the image left), 12-bit, bone bright."""
    rng = rng_for(seed, "chest")
    pose = Pose(shift_x_mm=float(rng.uniform(-8, 8)), shift_y_mm=float(rng.uniform(-8, 8)),
                rotation_deg=float(rng.uniform(-2, 2)), scale=float(rng.uniform(0.92, 1.05)))
    canvas = Canvas(rows, columns, pixel_spacing_mm=pixel_spacing_mm, pose=pose)
    u, v = canvas.u, canvas.v

    def chord(cu: float, cv: float, ru: float, rv: float, depth: float) -> np.ndarray:
        q = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
        return depth * np.sqrt(np.maximum(1.0 - q, 0.0))

    line = 0.018 * chord(0.0, 30.0, 165.0, 260.0, 220.0)  # trunk
    for side in (-1.0, 1.0):  # lungs: air replaces tissue
        line -= 0.016 * chord(side * 72.0, -20.0, 58.0, 120.0, 150.0) * (v < 75.0 - 0.25 * side * u)
    line += 0.010 * chord(28.0, 35.0, 62.0, 58.0, 120.0)  # heart, to the patient's left
    line += 0.040 * (np.abs(u) < 14.0) * chord(0.0, 0.0, 20.0, 400.0, 30.0)  # spine
    for rib in range(10):  # ribs: curved bands sweeping down and out from the spine
        level = -120.0 + 24.0 * rib
        arc = level + 0.004 * (u * u) - 0.15 * np.abs(u)
        line += 0.05 * (np.abs(v - arc) < 5.0) * (np.abs(u) > 15.0) * (np.abs(u) < 140.0)
    for side in (-1.0, 1.0):  # clavicles
        line += 0.05 * (np.abs(v + 135.0 - 0.22 * side * u) < 6.0) * (np.abs(u) > 10) * (np.abs(u) < 90)
    return detector_values(line.astype(np.float32), rng, exposure=float(rng.uniform(0.8, 1.2)),
                           blur_factor=max(2, round(8.0 / pixel_spacing_mm)))


def render_head_mr(*, seed: int, slices: int = 12, rows: int = 128, columns: int = 128,
                   pixel_spacing_mm: float = 1.8, slice_spacing_mm: float = 6.0) -> np.ndarray:
    """Render an axial T2 head series (scalp, skull, CSF, grey and white matter, ventricles)."""
    rng = rng_for(seed, "head")
    canvas = Canvas(rows, columns, pixel_spacing_mm=pixel_spacing_mm,
                    pose=Pose(rotation_deg=float(rng.uniform(-5, 5)), scale=float(rng.uniform(0.93, 1.05))))
    u, v = canvas.u, canvas.v
    gain, sigma = float(rng.uniform(6000, 9000)), float(rng.uniform(60, 120))
    volume = np.empty((slices, rows, columns), np.uint16)
    for k in range(slices):
        z = (k - (slices - 1) / 2) * slice_spacing_mm
        size = np.sqrt(max(1.0 - (z / 95.0) ** 2, 0.05))

        def inside(grow: float) -> np.ndarray:
            return ((u / (72.0 * size + grow)) ** 2 + (v / (90.0 * size + grow)) ** 2) <= 1.0

        signal = np.zeros((rows, columns), np.float32)
        # T2 signal, painted from outside in: scalp fat, skull, CSF, grey matter, white matter.
        for grow, value in ((0.0, 0.45), (-4.0, 0.02), (-10.0, 1.0), (-12.0, 0.55), (-20.0, 0.35)):
            signal[inside(grow)] = value
        if abs(z) < 20.0:  # lateral ventricles
            for side in (-1.0, 1.0):
                signal[((u - side * 9.0) / 6.0) ** 2 + ((v + 5.0) / 22.0) ** 2 <= 1.0] = 1.0
        real = signal * gain + rng.standard_normal(signal.shape).astype(np.float32) * sigma
        imaginary = rng.standard_normal(signal.shape).astype(np.float32) * sigma
        volume[k] = np.clip(np.rint(np.hypot(real, imaginary)), 0, 65535).astype(np.uint16)
    return volume


def _check_kind(kind: NonKneeKind | str, body_part: str | None) -> tuple[NonKneeKind, str]:
    kind = NonKneeKind(kind)
    if body_part is None:
        return kind, "CHEST" if kind is NonKneeKind.CHEST_CR else "HEAD"
    allowed = {"CHEST"} if kind is NonKneeKind.CHEST_CR else {"HEAD", "BRAIN"}
    if body_part not in allowed:
        raise ValueError(f"body_part for {kind.value} must be one of {sorted(allowed)}, got {body_part!r}")
    return kind, body_part


def build_non_knee_study(*, seed: int, kind: NonKneeKind | str = NonKneeKind.CHEST_CR,
                         patient_index: int | None = None,
                         body_part: str | None = None) -> PhantomDatasets:
    """Build an out-of-scope (non-knee) phantom study in memory.

    Parameters
    ----------
    seed : int
        Decides identities, pixels and noise.
    kind : NonKneeKind or str, optional
        ``"chest_cr"`` (default) or ``"head_mr"``.
    patient_index : int, optional
        Synthetic patient number; defaults to ``seed`` modulo 10^8.
    body_part : str, optional
        Body Part Examined; ``"CHEST"`` for the chest, ``"HEAD"`` (default) or ``"BRAIN"``
        for the head.

    Returns
    -------
    PhantomDatasets
        The datasets, with empty labels.

    Raises
    ------
    ValueError
        For an unknown kind or a body part that does not fit it.
    """
    kind, body_part = _check_kind(kind, body_part)
    if patient_index is None:
        patient_index = seed % (MAX_PATIENT_INDEX + 1)
    patient = PatientIdentity.from_index(patient_index)
    description = "XR CHEST" if kind is NonKneeKind.CHEST_CR else "MR BRAIN"
    study = StudyIdentity.from_seed(seed, patient_index=patient_index, description=description)
    series_uid = phantom_uid("series", seed, patient_index, kind.value, 0)
    if kind is NonKneeKind.CHEST_CR:
        datasets = (_chest_dataset(seed, patient, study, series_uid, body_part),)
    else:
        datasets = tuple(_head_datasets(seed, patient, study, series_uid, body_part))
    return PhantomDatasets(
        study_instance_uid=study.study_instance_uid, patient_id=patient.patient_id,
        datasets=datasets, labels=MappingProxyType({}),
        series_labels=MappingProxyType({series_uid: MappingProxyType({"body_part": body_part})}),
    )


def _chest_dataset(seed: int, patient: PatientIdentity, study: StudyIdentity, series_uid: str,
                   body_part: str) -> Dataset:
    pixels = render_chest_radiograph(seed=seed)
    series = SeriesInfo(series_uid, 1, "CHEST PA", "CR", body_part, study.study_time)
    ds = new_instance(
        sop_class_uid=SOP_CLASS_BY_MODALITY[XrayModality.CR],
        sop_instance_uid=phantom_uid("instance", seed, patient.patient_index, "chest", 1),
        patient=patient, study=study, series=series, instance_number=1,
    )
    low, high = np.percentile(pixels[::4, ::4], [1.0, 99.5])
    add_projection_basics(ds, view_position="PA", patient_orientation=["L", "F"], kvp=120.0,
                          exposure_mas=2.0, window=((low + high) / 2, max(64.0, high - low)),
                          spacing=["0.7", "0.7"])
    add_cr_image(ds)
    set_grey_pixels(ds, pixels, bits_stored=12, photometric="MONOCHROME2")
    return ds


def _head_datasets(seed: int, patient: PatientIdentity, study: StudyIdentity, series_uid: str,
                   body_part: str) -> list[Dataset]:
    spacing, step = 1.8, 6.0
    volume = render_head_mr(seed=seed, pixel_spacing_mm=spacing, slice_spacing_mm=step)
    slices, rows, columns = volume.shape
    series = SeriesInfo(series_uid, 1, "AX T2 BRAIN", "MR", body_part, study.study_time)
    timing = SequenceTiming(4200.0, 95.0, 15, False, 3.0)
    frame = phantom_uid("frame", seed, patient.patient_index, "head", 0)
    low, high = np.percentile(volume[slices // 2, ::2, ::2], [1.0, 99.5])
    datasets = []
    for k in range(slices):
        plane = SlicePlane(
            position=(-(columns - 1) / 2 * spacing, -(rows - 1) / 2 * spacing,
                      1400.0 + (k - (slices - 1) / 2) * step),
            orientation=_AXIAL, pixel_spacing_mm=spacing, thickness_mm=5.0, spacing_between_mm=step,
        )
        datasets.append(new_mr_instance(
            plane=plane, timing=timing, pixels=volume[k], window=((low + high) / 2, max(64.0, high - low)),
            patient=patient, study=study, series=series,
            sop_instance_uid=phantom_uid("instance", seed, patient.patient_index, "head", k + 1),
            frame_of_reference_uid=frame, instance_number=k + 1,
            coil="HEAD 20CH",
        ))
    return datasets


def write_non_knee_study(out_dir: Path, *, seed: int, kind: NonKneeKind | str = NonKneeKind.CHEST_CR,
                         transfer_syntaxes: Sequence[str] | None = None,
                         patient_index: int | None = None,
                         body_part: str | None = None) -> PhantomStudy:
    """Write an out-of-scope phantom study under ``out_dir``; see :func:`build_non_knee_study`.

    ``transfer_syntaxes`` cycles over the instances as in
    :func:`ortho_node.phantoms.write_knee_study`.
    """
    built = build_non_knee_study(seed=seed, kind=kind, patient_index=patient_index, body_part=body_part)
    files = tuple(write_datasets(Path(out_dir), built.datasets, transfer_syntaxes=transfer_syntaxes))
    return PhantomStudy(study_instance_uid=built.study_instance_uid, patient_id=built.patient_id,
                        files=files, labels=built.labels, series_labels=built.series_labels)
