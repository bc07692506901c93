"""Whole phantom studies: radiographs and MR series of one synthetic patient, in memory or on disk.

All instances of a study share the patient, Study Instance UID and accession; each radiograph
spec becomes its own series (one instance), each MR spec a series of its slices. UIDs, names
and pixels follow from ``seed`` (and ``patient_index``) alone, so writing the same study twice
gives identical files. Knee anatomy follows from the patient and side, so the AP and lateral
views of one knee, or a follow-up study of the same patient, show the same knee.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ortho_node.phantoms.dicom_common import SeriesInfo
from ortho_node.phantoms.dicom_mr import SERIES_DESCRIPTIONS, build_mr_slice_dataset
from ortho_node.phantoms.dicom_xray import build_radiograph_dataset
from ortho_node.phantoms.identity import MAX_PATIENT_INDEX, PatientIdentity, StudyIdentity, phantom_uid
from ortho_node.phantoms.mri import render_knee_mr
from ortho_node.phantoms.seeding import derive_seed
from ortho_node.phantoms.specs import MRPhantomSpec, XrayPhantomSpec
from ortho_node.phantoms.transfer import SUPPORTED_TRANSFER_SYNTAXES, encode_transfer_syntax, save_phantom
from ortho_node.phantoms.xray import render_knee_radiograph


@dataclass(frozen=True)
class PhantomFile:
    """One written instance."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    sop_class_uid: str = ""
    laterality: str = ""
    instance_number: int = 1


@dataclass(frozen=True)
class PhantomStudy:
    """A written phantom study and its ground truth.

    ``labels`` maps task name to side to value, e.g.
    ``{"kl_grade": {"L": 3}, "acl_tear": {"R": True}, "meniscus_tear": {"R": False}}``.
    """

    study_instance_uid: str
    patient_id: str
    files: tuple[PhantomFile, ...]
    labels: Mapping[str, Any]
    series_labels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Series Instance UID -> what that series shows (laterality, view, task values)."""


@dataclass(frozen=True)
class PhantomDatasets:
    """A phantom study in memory: datasets in Explicit VR Little Endian, not yet written."""

    study_instance_uid: str
    patient_id: str
    datasets: tuple[Dataset, ...]
    labels: Mapping[str, Any]
    series_labels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Series Instance UID -> the labels that series shows (side and task values)."""


def _check_specs(xrays: Sequence[XrayPhantomSpec], mr_series: Sequence[MRPhantomSpec]) -> None:
    for name, specs, kind in (("xrays", xrays, XrayPhantomSpec), ("mr_series", mr_series, MRPhantomSpec)):
        if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
            raise TypeError(f"{name} must be a sequence of {kind.__name__}, got {type(specs).__name__}")
        for spec in specs:
            if not isinstance(spec, kind):
                raise TypeError(f"{name} must hold {kind.__name__} items, found {type(spec).__name__}")
    if not xrays and not mr_series:
        raise ValueError("a phantom study needs at least one radiograph or MR series; got neither")


def _record(labels: dict[str, dict[str, Any]], task: str, side: str, value: Any) -> None:
    known = labels.setdefault(task, {})
    if side in known and known[side] != value:
        raise ValueError(f"conflicting {task} labels for side {side}: {known[side]!r} and {value!r}")
    known[side] = value


def _series_time(study: StudyIdentity, number: int) -> str:
    hours, minutes, seconds = int(study.study_time[:2]), int(study.study_time[2:4]), int(study.study_time[4:6])
    total = min(hours * 3600 + minutes * 60 + seconds + 90 * (number - 1), 23 * 3600 + 59 * 60)
    return f"{total // 3600:02d}{total // 60 % 60:02d}{total % 60:02d}"


def knee_anatomy_seed(patient_index: int, side: str, kind: str) -> int:
    """Seed of the knee ``side`` of patient ``patient_index`` for ``kind`` ("xray" or "mr")."""
    return derive_seed(patient_index, "knee", side, kind)


def build_knee_study(*, seed: int, xrays: Sequence[XrayPhantomSpec] = (),
                     mr_series: Sequence[MRPhantomSpec] = (),
                     patient_index: int | None = None) -> PhantomDatasets:
    """Build a phantom knee study in memory.

    Parameters
    ----------
    seed : int
        Decides study identity, acquisition details and noise.
    xrays : sequence of XrayPhantomSpec, optional
        One single-image series per spec.
    mr_series : sequence of MRPhantomSpec, optional
        One sagittal series per spec.
    patient_index : int, optional
        The synthetic patient (``PHANTOM^KNEE^<index>``); defaults to ``seed`` modulo 10^8.
        Reuse it to make several studies of one patient.

    Returns
    -------
    PhantomDatasets
        Datasets in series order, the Study Instance UID, Patient ID and labels.

    Raises
    ------
    TypeError
        If a spec has the wrong type.
    ValueError
        If no spec is given, or two images of the same knee disagree on a label.
    """
    _check_specs(xrays, mr_series)
    if patient_index is None:
        patient_index = seed % (MAX_PATIENT_INDEX + 1)
    patient = PatientIdentity.from_index(patient_index)
    modalities = ("XR " if xrays else "") + ("MR " if mr_series else "")
    study = StudyIdentity.from_seed(seed, patient_index=patient_index, description=f"{modalities}KNEE")
    labels: dict[str, dict[str, Any]] = {}
    series_labels: dict[str, Mapping[str, Any]] = {}
    datasets: list[Dataset] = []
    series_number = itertools.count(1)

    for index, spec in enumerate(xrays):
        number = next(series_number)
        side = spec.side.value
        _record(labels, "kl_grade", side, spec.kl_grade)
        image = render_knee_radiograph(spec, seed=derive_seed(seed, "xray", index),
                                       anatomy_seed=knee_anatomy_seed(patient_index, side, "xray"))
        series = SeriesInfo(
            series_instance_uid=phantom_uid("series", seed, patient_index, "xray", index),
            series_number=number, series_description=f"XR KNEE {spec.view.value} {side}",
            modality=spec.modality.value, body_part="KNEE", series_time=_series_time(study, number),
        )
        datasets.append(build_radiograph_dataset(
            image, spec, patient=patient, study=study, series=series,
            sop_instance_uid=phantom_uid("instance", seed, patient_index, "xray", index, 1),
        ))
        series_labels[series.series_instance_uid] = MappingProxyType(
            {"laterality": side, "view": spec.view.value, "kl_grade": spec.kl_grade})

    for index, spec in enumerate(mr_series):
        number = next(series_number)
        side = spec.side.value
        _record(labels, "acl_tear", side, spec.acl_tear)
        _record(labels, "meniscus_tear", side, spec.meniscus_tear)
        volume = render_knee_mr(spec, seed=derive_seed(seed, "mr", index),
                                anatomy_seed=knee_anatomy_seed(patient_index, side, "mr"))
        series = SeriesInfo(
            series_instance_uid=phantom_uid("series", seed, patient_index, "mr", index),
            series_number=number, series_description=f"{SERIES_DESCRIPTIONS[spec.contrast]} {side}",
            modality="MR", body_part="KNEE", series_time=_series_time(study, number),
        )
        frame_of_reference = phantom_uid("frame", seed, patient_index, "mr", index)
        for k in range(spec.slices):
            datasets.append(build_mr_slice_dataset(
                volume, k, patient=patient, study=study, series=series,
                sop_instance_uid=phantom_uid("instance", seed, patient_index, "mr", index, k + 1),
                frame_of_reference_uid=frame_of_reference,
            ))
        series_labels[series.series_instance_uid] = MappingProxyType(
            {"laterality": side, "acl_tear": spec.acl_tear, "meniscus_tear": spec.meniscus_tear})

    return PhantomDatasets(
        study_instance_uid=study.study_instance_uid,
        patient_id=patient.patient_id,
        datasets=tuple(datasets),
        labels=MappingProxyType({task: MappingProxyType(sides) for task, sides in labels.items()}),
        series_labels=MappingProxyType(series_labels),
    )


def _check_transfer_syntaxes(transfer_syntaxes: Sequence[str] | None) -> tuple[str, ...]:
    if transfer_syntaxes is None:
        return ()
    if isinstance(transfer_syntaxes, str) or not isinstance(transfer_syntaxes, Sequence):
        raise TypeError(
            f"transfer_syntaxes must be a sequence of UID strings, got {type(transfer_syntaxes).__name__}"
        )
    for uid in transfer_syntaxes:
        if uid not in SUPPORTED_TRANSFER_SYNTAXES:
            names = ", ".join(f"{UID(u).name}" for u in SUPPORTED_TRANSFER_SYNTAXES)
            raise ValueError(f"transfer_syntaxes must hold supported UIDs ({names}); found {uid!r}")
    return tuple(transfer_syntaxes)


def _file_name(ds: Dataset) -> Path:
    return Path(f"S{int(ds.SeriesNumber):03d}_{ds.Modality}") / f"I{int(ds.InstanceNumber):04d}.dcm"


def write_datasets(out_dir: Path, datasets: Sequence[Dataset], *,
                   transfer_syntaxes: Sequence[str] | None = None) -> Iterator[PhantomFile]:
    """Write ``datasets`` under ``out_dir`` (``S<series>_<modality>/I<instance>.dcm``).

    ``transfer_syntaxes`` cycles over the datasets in order; ``None`` keeps Explicit VR Little
    Endian. The datasets are re-encoded in place. Yields one :class:`PhantomFile` per file.
    """
    syntaxes = _check_transfer_syntaxes(transfer_syntaxes)
    cycle = itertools.cycle(syntaxes) if syntaxes else None
    for ds in datasets:
        if cycle is not None:
            encode_transfer_syntax(ds, next(cycle))
        path = Path(out_dir) / _file_name(ds)
        save_phantom(ds, path)
        yield PhantomFile(
            path=path,
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            modality=str(ds.Modality),
            sop_class_uid=str(ds.SOPClassUID),
            laterality=str(ds.get("ImageLaterality", ds.get("Laterality", ""))),
            instance_number=int(ds.InstanceNumber),
        )


def write_knee_study(out_dir: Path, *, seed: int, xrays: Sequence[XrayPhantomSpec] = (),
                     mr_series: Sequence[MRPhantomSpec] = (),
                     transfer_syntaxes: Sequence[str] | None = None,
                     patient_index: int | None = None) -> PhantomStudy:
    """Write a phantom knee study as DICOM files under ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into (created); files go to ``S<series>_<modality>/I<instance>.dcm``.
    seed, xrays, mr_series, patient_index :
        As for :func:`build_knee_study`.
    transfer_syntaxes : sequence of str, optional
        Transfer Syntax UIDs cycled over the instances in order (so one study can mix JPEG
        2000, JPEG-LS, RLE and uncompressed); default Explicit VR Little Endian. See
        :data:`ortho_node.phantoms.transfer.SUPPORTED_TRANSFER_SYNTAXES`.

    Returns
    -------
    PhantomStudy
        Study UID, Patient ID, the files written and the labels.

    Raises
    ------
    TypeError, ValueError
        For bad specs (see :func:`build_knee_study`) or an unsupported transfer syntax.

    Examples
    --------
    >>> from ortho_node.phantoms import XrayPhantomSpec, MRPhantomSpec, write_knee_study
    >>> study = write_knee_study(tmp_path, seed=7,
    ...     xrays=[XrayPhantomSpec(kl_grade=3, side="L")],
    ...     mr_series=[MRPhantomSpec(acl_tear=True, side="R")])
    >>> study.labels["kl_grade"]["L"]
    3
    """
    _check_transfer_syntaxes(transfer_syntaxes)  # fail before rendering anything
    built = build_knee_study(seed=seed, xrays=xrays, mr_series=mr_series, patient_index=patient_index)
    files = tuple(write_datasets(Path(out_dir), built.datasets, transfer_syntaxes=transfer_syntaxes))
    return PhantomStudy(
        study_instance_uid=built.study_instance_uid,
        patient_id=built.patient_id,
        files=files,
        labels=built.labels,
        series_labels=built.series_labels,
    )
