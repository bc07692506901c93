"""MRI series: which series of a study a task reads, its slice order, and its slice tensor.

**Survey** (:func:`survey_series`). Instances are grouped by Series Instance UID. A series is
*excluded*, with its reason, when it is not MR, is a localizer (Image Type LOCALIZER, or a
description word such as LOCALIZER / SCOUT / SURVEY / PILOT / 3-PLANE), is a reformat or
projection (Image Type MPR / MIP / PROJECTION IMAGE), is a computed map whose pixels are
parameters rather than signal (an Image Type value ending in MAP, such as ``T1 MAP``,
``T2 MAP``, ``T2* MAP``, ``R2* MAP``, or one of ADC, EADC, FA, FRACTIONAL ANISOTROPY,
SUBTRACT, SUBTRACTION, FAT FRACTION, WATER FRACTION, with ``_`` / ``-`` read as spaces; or a
description word MAP, MAPS, ``…MAP`` or ADC), lacks Image Orientation / Position
(Patient), mixes orientations (a multi-plane localizer or several stacks), has two slices at
the same position (several echoes or time points in one series), or has fewer than
``min_slices`` slices. Every single-frame instance is a slice; every frame of an Enhanced MR
object is a slice, with its frame-level functional groups. Weighted images that are derived
but not maps stay usable (Dixon WATER, diffusion TRACEW, motion-corrected MOCO); they are only
ranked below original acquisitions (see Selection).

**Plane** comes from Image Orientation (Patient): the slice normal (row × column direction)
is compared with the patient axes; the largest component wins (x: sagittal, y: coronal,
z: axial). The angle to that axis is kept as ``obliquity_deg``; oblique series are not rejected.

**Sequence** (:func:`classify_sequence`), first source that decides:

1. coded Enhanced MR attributes: Acquisition Contrast (T1, T2, PROTON_DENSITY) and Spectrally
   Selected Suppression (FAT, FAT_AND_WATER, SILICON_AND_FAT → fat suppressed; NONE, WATER →
   not);
2. words in Series Description / Protocol Name: PD, PDW, DP, IW, PROTON → PD; T1, T1W → T1;
   T2, T2W, STIR, TIRM → T2 (``T2*`` is not T2); FS, FATSAT, FAT SAT, SPAIR, SPIR, STIR, TIRM
   → fat suppressed; compound words such as ``PDFS`` or ``T2WFS`` count as both; a fat word
   right after NON, NO, W/O, WO or WITHOUT (``PD NON FS``, ``w/o fat sat``) states *not*
   suppressed; a description naming two weightings, or fat suppression both stated and
   negated, decides nothing about that;
3. Scan Options containing ``FS`` (fat saturation, PS3.3 C.8.3.1);
4. physics (Echo Time TE, Repetition Time TR, Inversion Time TI, in ms): inversion recovery
   with 100 ≤ TI ≤ 250 is STIR (T2, fat suppressed); TR < 1000 and TE < 30 is T1; TR ≥ 1500
   and TE < 50 is PD (MSK "intermediate" weighting); TR ≥ 1500 and TE ≥ 60 is T2; else unknown.

Fat suppression not stated by any source is taken as absent.

**Selection** (:func:`select_series`): the first entry of the task's preference list (e.g.
:data:`KNEE_MR_PREFERENCE`: sagittal PD-FS > sagittal T2-FS > sagittal T2 > sagittal PD > any
sagittal > coronal PD-FS > coronal T2-FS > coronal T2 > coronal PD > any coronal > axial PD-FS >
axial T2-FS > axial T2 > axial PD > any axial) that a usable series matches wins; among several matches an original
acquisition (Image Type value 1 ORIGINAL, or none) before a derived one (DERIVED or MIXED),
then the one with the most slices, then the lowest Series Number, then the smallest UID.

**Slices** are sorted by position along the plane's positive patient axis (sagittal: toward
the patient's left, coronal: posterior, axial: head), never by Instance Number. **Sampling**
(:class:`SliceSampling`) keeps at most ``max_slices``: evenly spread over the stack
(``uniform``, default) or the central run (``central``). When the knee is mirrored to the
canonical side and the plane is sagittal, mirroring is the reversal of that order (see
:mod:`.preprocess`); the stack is reversed *before* sampling, so the kept slices and slice k
have the same anatomical meaning for a left knee as for the mirrored right knee, whatever the
rounding of ``uniform`` or the odd remainder of ``central``. The side is read from every
slice's header first; slices that disagree reject the series.
Slices without a header VOI share one percentile window computed over the sampled stack, so
brightness is comparable between slices.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydicom.dataset import Dataset

from ortho_node.model.findings import ImageRef, Laterality
from ortho_node.model.pixels import (
    UnsupportedImageError,
    decode_frame,
    frame_count,
    frame_orientation,
    frame_position,
    functional_group_value,
    percentile_window,
)
from ortho_node.model.preprocess import (
    MirrorAxis,
    PreprocessConfig,
    PreprocessedImage,
    side_of,
    mirror_axis,
    preprocess_frame,
)

__all__ = [
    "Plane",
    "Weighting",
    "SamplingStrategy",
    "SequenceSignature",
    "SeriesPreference",
    "KNEE_MR_PREFERENCE",
    "preference_for_planes",
    "SliceSampling",
    "SliceSource",
    "SeriesCandidate",
    "PreparedSeries",
    "NoSuitableSeriesError",
    "classify_sequence",
    "survey_series",
    "select_series",
    "sample_slice_indices",
    "prepare_series",
]


class Plane(str, enum.Enum):
    """Acquisition plane, from the slice normal."""

    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"


class Weighting(str, enum.Enum):
    """Contrast weighting of an MR series."""

    PD = "PD"
    T1 = "T1"
    T2 = "T2"
    UNKNOWN = "unknown"


class SamplingStrategy(str, enum.Enum):
    """How slices are kept when a stack has more than ``max_slices``."""

    UNIFORM = "uniform"
    """Evenly spread over the whole stack, first and last slice included."""
    CENTRAL = "central"
    """The ``max_slices`` consecutive slices in the middle of the stack."""


class NoSuitableSeriesError(UnsupportedImageError):
    """No series of the study fits the task's preference list; ``reason`` lists every series
    and why it was not taken. A kind of :class:`UnsupportedImageError`: the input is out of
    scope for the task, not a fault."""


@dataclass(frozen=True)
class SequenceSignature:
    """What a series is: plane, weighting, fat suppression, and why we think so."""

    plane: Plane
    weighting: Weighting
    fat_suppressed: bool
    basis: str
    """The attributes that decided, e.g. ``"description 'SAG PD FS'"``."""
    obliquity_deg: float
    """Angle between the slice normal and the plane's patient axis."""

    @property
    def label(self) -> str:
        """Short text such as ``"sagittal PD-FS"``."""
        suffix = "-FS" if self.fat_suppressed else ""
        return f"{self.plane.value} {self.weighting.value}{suffix}"


@dataclass(frozen=True)
class SeriesPreference:
    """One entry of a task's preference list; ``None`` fields match anything."""

    plane: Plane
    weighting: Weighting | None = None
    fat_suppressed: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "plane", Plane(self.plane))
        if self.weighting is not None:
            object.__setattr__(self, "weighting", Weighting(self.weighting))
        if self.fat_suppressed is not None and not isinstance(self.fat_suppressed, bool):
            raise TypeError(
                f"fat_suppressed must be a bool or None, got {type(self.fat_suppressed).__name__}"
            )

    def matches(self, signature: SequenceSignature) -> bool:
        """True when ``signature`` has this plane and, where given, weighting and fat
        suppression."""
        return (
            signature.plane is self.plane
            and (self.weighting is None or signature.weighting is self.weighting)
            and (self.fat_suppressed is None or signature.fat_suppressed is self.fat_suppressed)
        )

    def __str__(self) -> str:
        weighting = "any" if self.weighting is None else self.weighting.value
        fat = {None: "", True: "-FS", False: " (no FS)"}[self.fat_suppressed]
        return f"{self.plane.value} {weighting}{fat}"


KNEE_MR_PREFERENCE: tuple[SeriesPreference, ...] = (
    SeriesPreference(Plane.SAGITTAL, Weighting.PD, True),
    SeriesPreference(Plane.SAGITTAL, Weighting.T2, True),
    SeriesPreference(Plane.SAGITTAL, Weighting.T2),
    SeriesPreference(Plane.SAGITTAL, Weighting.PD),
    SeriesPreference(Plane.SAGITTAL),
    SeriesPreference(Plane.CORONAL, Weighting.PD, True),
    SeriesPreference(Plane.CORONAL, Weighting.T2, True),
    SeriesPreference(Plane.CORONAL, Weighting.T2),
    SeriesPreference(Plane.CORONAL, Weighting.PD),
    SeriesPreference(Plane.CORONAL),
    SeriesPreference(Plane.AXIAL, Weighting.PD, True),
    SeriesPreference(Plane.AXIAL, Weighting.T2, True),
    SeriesPreference(Plane.AXIAL, Weighting.T2),
    SeriesPreference(Plane.AXIAL, Weighting.PD),
    SeriesPreference(Plane.AXIAL),
)
"""Default order for knee MRI tasks: fluid-sensitive fat-suppressed sagittal first."""


def preference_for_planes(
    planes: Collection[str | Plane], *, base: Sequence[SeriesPreference] = KNEE_MR_PREFERENCE
) -> tuple[SeriesPreference, ...]:
    """The entries of ``base`` whose plane a head accepts, in ``base``'s order.

    Parameters
    ----------
    planes : collection of str or Plane
        A head's declared MR planes (e.g. ``{"SAGITTAL", "CORONAL"}``); empty means all.
    base : sequence of SeriesPreference, optional
        The full order (default :data:`KNEE_MR_PREFERENCE`).
    """
    if isinstance(planes, str):
        raise TypeError(f"planes must be a collection of plane names, got {planes!r}")
    wanted = {Plane(p.lower()) if isinstance(p, str) else Plane(p) for p in planes}
    chosen = tuple(entry for entry in base if not wanted or entry.plane in wanted)
    if not chosen:
        raise ValueError(
            f"no entry of the preference order has plane {sorted(w.value for w in wanted)}"
        )
    return chosen


@dataclass(frozen=True)
class SliceSampling:
    """How many slices of a stack reach the model, and which."""

    max_slices: int = 16
    strategy: SamplingStrategy = SamplingStrategy.UNIFORM

    def __post_init__(self) -> None:
        if not isinstance(self.max_slices, int) or isinstance(self.max_slices, bool):
            raise TypeError(f"max_slices must be an int, got {type(self.max_slices).__name__}")
        if not 1 <= self.max_slices <= 1024:
            raise ValueError(f"max_slices must lie in [1, 1024], got {self.max_slices}")
        object.__setattr__(self, "strategy", SamplingStrategy(self.strategy))


@dataclass(frozen=True)
class SliceSource:
    """One slice: a single-frame instance (frame 0) or one frame of an Enhanced MR object."""

    dataset: Dataset
    frame_index: int
    position_mm: float
    """Position along the plane's positive patient axis."""


@dataclass(frozen=True)
class SeriesCandidate:
    """A series of the study as the survey saw it."""

    series_instance_uid: str
    series_number: int | None
    description: str
    signature: SequenceSignature | None
    """None when the series was excluded before it could be classified."""
    slices: tuple[SliceSource, ...]
    """Sorted along the plane's positive patient axis (empty when excluded early)."""
    excluded_reason: str | None
    derived: bool = False
    """Image Type value 1 is DERIVED or MIXED: ranked below an original acquisition."""

    @property
    def usable(self) -> bool:
        return self.excluded_reason is None and self.signature is not None

    def summary(self) -> str:
        """One line for logs and error messages (no PHI: UIDs are not included)."""
        name = f"series {self.series_number if self.series_number is not None else '?'}"
        what = self.signature.label if self.signature is not None else "unclassified"
        if self.excluded_reason is not None:
            return f"{name} ({what}): excluded, {self.excluded_reason}"
        return f"{name} ({what}, {len(self.slices)} slices)"


@dataclass(frozen=True)
class PreparedSeries:
    """The slices of one series as model input."""

    series_instance_uid: str
    signature: SequenceSignature
    tensor: torch.Tensor
    """float32 (K, 3, S, S), slices in :attr:`positions_mm` order."""
    slices: tuple[PreprocessedImage, ...]
    """Per-slice geometry, ImageRef and laterality, in tensor order."""
    positions_mm: tuple[float, ...]
    laterality: Laterality | None
    slice_order_mirrored: bool
    """True when the order was reversed to mirror a sagittal stack to the canonical side."""

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """The evaluated images (one per slice, frame numbers for Enhanced MR)."""
        return tuple(item.image for item in self.slices)


# --- sequence classification ----------------------------------------------------------------

_LOCALIZER_WORDS = {
    "LOCALIZER",
    "LOCALISER",
    "LOC",
    "SCOUT",
    "SURVEY",
    "PILOT",
    "3PLANE",
    "TRIPILOT",
    "AAHSCOUT",
}
_REFORMAT_TYPES = {"LOCALIZER", "MPR", "MIP", "PROJECTION IMAGE"}
# Computed maps (relaxation times, diffusivity, subtraction): pixels are parameters, not signal.
_MAP_TYPES = {
    "ADC",
    "EADC",
    "FA",
    "FRACTIONAL ANISOTROPY",
    "SUBTRACT",
    "SUBTRACTION",
    "FAT FRACTION",
    "WATER FRACTION",
}
_NEGATIONS = {"NON", "NO", "WO", "WITHOUT"}
_WEIGHTING_WORDS: dict[str, Weighting] = {
    word: weighting
    for weighting, words in (
        (Weighting.PD, "PD PDW DP IW PROTON"),
        (Weighting.T1, "T1 T1W T1WI"),
        (Weighting.T2, "T2 T2W T2WI STIR TIRM"),
    )
    for word in words.split()
}
_FAT_WORDS = {"FS", "FATSAT", "FSAT", "SPAIR", "SPIR", "STIR", "TIRM", "FATSUP"}
_COMPOUND = re.compile(r"^(PD|DP|IW|T1|T2)(W|WI)?(FS|FATSAT|SPAIR|SPIR)$")
_CODED_CONTRAST = {"T1": Weighting.T1, "T2": Weighting.T2, "PROTON_DENSITY": Weighting.PD}
_CODED_FAT = {
    "FAT": True,
    "FAT_AND_WATER": True,
    "SILICON_AND_FAT": True,
    "NONE": False,
    "WATER": False,
}


def _words(ds: Dataset) -> tuple[list[str], str]:
    text = " ".join(str(ds.get(k) or "") for k in ("SeriesDescription", "ProtocolName")).strip()
    # Keep '*' so that "T2*" (gradient echo) is not read as T2.
    tokens = [t for t in re.split(r"[^A-Z0-9*]+", text.upper()) if t]
    return tokens, text


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_strings(value: object) -> list[str]:
    """A CS value of any multiplicity as upper-case strings."""
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [str(v).strip().upper() for v in items]


def _physics_weighting(ds: Dataset, frame_index: int) -> tuple[Weighting, bool, str] | None:
    echo_group, timing_group = "MREchoSequence", "MRTimingAndRelatedParametersSequence"
    echo = _number(functional_group_value(ds, frame_index, echo_group, "EffectiveEchoTime"))
    echo = echo if echo is not None else _number(ds.get("EchoTime"))
    repetition = _number(functional_group_value(ds, frame_index, timing_group, "RepetitionTime"))
    inversion = _number(ds.get("InversionTime"))
    if inversion is None:
        times = _as_strings(
            functional_group_value(ds, frame_index, "MRModifierSequence", "InversionTimes")
        )
        inversion = _number(times[0]) if times else None
    inversion_recovery = "IR" in _as_strings(ds.get("ScanningSequence"))
    if inversion_recovery and inversion is not None and 100 <= inversion <= 250:
        return Weighting.T2, True, f"inversion recovery TI {inversion:g} ms (STIR)"
    if echo is None or repetition is None:
        return None
    basis = f"TE {echo:g} ms / TR {repetition:g} ms"
    if repetition < 1000 and echo < 30:
        return Weighting.T1, False, basis
    if repetition >= 1500 and echo < 50:
        return Weighting.PD, False, basis
    if repetition >= 1500 and echo >= 60:
        return Weighting.T2, False, basis
    return Weighting.UNKNOWN, False, basis


def _negated(tokens: list[str], index: int) -> bool:
    """True when the word at ``index`` follows NON, NO, WO, WITHOUT or W/O (split as W, O)."""
    previous = tokens[index - 1] if index >= 1 else ""
    return previous in _NEGATIONS or (previous == "O" and index >= 2 and tokens[index - 2] == "W")


def _described_sequence(tokens: list[str]) -> tuple[set[Weighting], bool | None]:
    """Weightings named by description words, and fat suppression as the words state it:
    True (named), False (only negated, e.g. ``NON FS``) or None (not stated, or both)."""
    named: set[Weighting] = set()
    fat_stated: set[bool] = set()
    for index, token in enumerate(tokens):
        compound = _COMPOUND.match(token)
        if compound:
            named.add(_WEIGHTING_WORDS[compound.group(1)])
            fat_stated.add(True)
        elif token in _WEIGHTING_WORDS:
            named.add(_WEIGHTING_WORDS[token])
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in _FAT_WORDS or (token == "FAT" and following.startswith(("SAT", "SUP"))):
            fat_stated.add(not _negated(tokens, index))
    return named, fat_stated.pop() if len(fat_stated) == 1 else None


def classify_sequence(ds: Dataset, *, frame_index: int = 0) -> tuple[Weighting, bool, str]:
    """(weighting, fat suppressed, basis) of an MR image, by the rules in the module docstring."""
    weighting: Weighting | None = None
    fat: bool | None = None
    basis: list[str] = []
    contrast = _as_strings(
        functional_group_value(ds, frame_index, "MRImageFrameTypeSequence", "AcquisitionContrast")
    )
    if contrast and contrast[0] in _CODED_CONTRAST:
        weighting = _CODED_CONTRAST[contrast[0]]
        basis.append(f"AcquisitionContrast {contrast[0]}")
    suppression = _as_strings(
        functional_group_value(
            ds, frame_index, "MRModifierSequence", "SpectrallySelectedSuppression"
        )
    )
    if suppression and suppression[0] in _CODED_FAT:
        fat = _CODED_FAT[suppression[0]]
        basis.append(f"SpectrallySelectedSuppression {suppression[0]}")
    tokens, text = _words(ds)
    named, fat_words = _described_sequence(tokens)
    described = (weighting is None and len(named) == 1) or (fat is None and fat_words is not None)
    if weighting is None and len(named) == 1:
        weighting = named.pop()
    if fat is None:
        fat = fat_words
    if described:
        basis.append(f"description {text!r}")
    if fat is None and "FS" in _as_strings(ds.get("ScanOptions")):
        fat = True
        basis.append("ScanOptions FS")
    if weighting is None:
        physics = _physics_weighting(ds, frame_index)
        if physics is not None:
            weighting = physics[0]
            fat = fat if fat is not None else physics[1]
            basis.append(physics[2])
    return weighting or Weighting.UNKNOWN, bool(fat), "; ".join(basis) or "no sequence information"


# --- survey ---------------------------------------------------------------------------------


def _plane_of(orientation: np.ndarray) -> tuple[Plane, np.ndarray, float]:
    normal = np.cross(orientation[:3], orientation[3:])
    axis = int(np.argmax(np.abs(normal)))
    plane = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)[axis]
    cosine = min(1.0, abs(float(normal[axis])) / float(np.linalg.norm(normal)))
    # Orient the normal toward the positive patient axis so positions grow L, P or H.
    signed = normal if normal[axis] > 0 else -normal
    return plane, signed, math.degrees(math.acos(cosine))


def _computed_maps(image_types: Iterable[str], tokens: Iterable[str]) -> list[str]:
    """Image Type values and description words that name a computed map (module docstring)."""
    found = []
    for value in image_types:
        words = re.sub(r"[\s_\-]+", " ", value).strip()
        if words in _MAP_TYPES or words.replace(" ", "").endswith("MAP"):
            found.append(f"Image Type {value}")
    for token in tokens:
        if token in ("MAP", "MAPS", "ADC") or token.endswith("MAP"):
            found.append(f"description word {token}")
    return sorted(set(found))


def _is_derived(datasets: Sequence[Dataset]) -> bool:
    """Image Type value 1 of any instance is DERIVED or MIXED (absent counts as original)."""
    return any(
        (_as_strings(ds.get("ImageType")) or ["ORIGINAL"])[0] in ("DERIVED", "MIXED")
        for ds in datasets
    )


def _frames(datasets: Sequence[Dataset]) -> list[tuple[Dataset, int]]:
    return [(ds, index) for ds in datasets for index in range(frame_count(ds))]


def _survey_one(uid: str, datasets: list[Dataset], min_slices: int) -> SeriesCandidate:
    first = datasets[0]
    number = _number(first.get("SeriesNumber"))
    description = str(first.get("SeriesDescription") or "")

    def excluded(reason: str, signature: SequenceSignature | None = None) -> SeriesCandidate:
        return SeriesCandidate(
            uid, None if number is None else int(number), description, signature, (), reason
        )

    modalities = sorted({str(ds.get("Modality") or "?") for ds in datasets})
    if modalities != ["MR"]:
        return excluded(f"modality {'/'.join(modalities)}, not MR")
    image_types = {str(v).upper() for ds in datasets for v in (ds.get("ImageType") or [])}
    if reformat := image_types & _REFORMAT_TYPES:
        return excluded(
            f"Image Type {'/'.join(sorted(reformat))} (localizer, reformat or projection)"
        )
    tokens, _ = _words(first)
    if localizer := _LOCALIZER_WORDS & set(tokens):
        return excluded(f"description names a localizer ({', '.join(sorted(localizer))})")
    if maps := _computed_maps(image_types, tokens):
        return excluded(f"computed map, not a weighted image ({', '.join(maps)})")
    try:
        frames = _frames(datasets)
    except UnsupportedImageError as exc:
        return excluded(exc.reason)
    try:
        orientations = [frame_orientation(ds, frame_index=index) for ds, index in frames]
        positions = [frame_position(ds, frame_index=index) for ds, index in frames]
    except UnsupportedImageError as exc:
        return excluded(exc.reason)
    if any(o is None for o in orientations) or any(p is None for p in positions):
        return excluded(
            "slices lack Image Orientation / Position (Patient): plane and order unknown"
        )
    stacked = np.stack(orientations)
    if np.abs(stacked - stacked[0]).max() > 0.01:
        return excluded(
            "slices have different orientations (multi-plane localizer or several stacks)"
        )
    plane, normal, obliquity = _plane_of(stacked[0])
    weighting, fat, basis = classify_sequence(first)
    signature = SequenceSignature(plane, weighting, fat, basis, round(obliquity, 1))
    along = [float(p @ normal) for p in positions]
    order = sorted(range(len(frames)), key=lambda i: along[i])
    sorted_along = [along[i] for i in order]
    if len(sorted_along) > 1 and float(np.min(np.diff(sorted_along))) < 0.01:
        return excluded(
            "two or more slices share a position (several echoes, phases or stacks)", signature
        )
    if len(frames) < min_slices:
        return excluded(f"only {len(frames)} slice(s), at least {min_slices} needed", signature)
    slices = tuple(SliceSource(frames[i][0], frames[i][1], along[i]) for i in order)
    return SeriesCandidate(
        uid,
        None if number is None else int(number),
        description,
        signature,
        slices,
        None,
        derived=_is_derived(datasets),
    )


def survey_series(
    datasets: Iterable[Dataset], *, min_slices: int = 5
) -> tuple[SeriesCandidate, ...]:
    """Group a study's instances into series and classify each (rules in the module docstring).

    Parameters
    ----------
    datasets : iterable of pydicom.dataset.Dataset
        Instances of one study; headers suffice (Pixel Data is read later, may be deferred).
    min_slices : int, optional
        Fewer slices than this excludes a series (default 5).

    Returns
    -------
    tuple of SeriesCandidate
        In order of first appearance; excluded series carry their reason.
    """
    if not isinstance(min_slices, int) or isinstance(min_slices, bool) or min_slices < 1:
        raise ValueError(f"min_slices must be an int >= 1, got {min_slices!r}")
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        if not isinstance(ds, Dataset):
            raise TypeError(f"datasets must hold pydicom Datasets, found {type(ds).__name__}")
        uid = str(ds.get("SeriesInstanceUID") or "")
        if not uid:
            raise ValueError("an instance has no Series Instance UID")
        groups.setdefault(uid, []).append(ds)
    return tuple(_survey_one(uid, members, min_slices) for uid, members in groups.items())


def select_series(
    candidates: Sequence[SeriesCandidate],
    *,
    preference: Sequence[SeriesPreference] = KNEE_MR_PREFERENCE,
) -> SeriesCandidate:
    """The series a task reads: first preference entry matched by a usable series.

    Raises
    ------
    NoSuitableSeriesError
        No usable series matches any entry; the reason lists every series and why.
    """
    if not preference:
        raise ValueError("preference must name at least one SeriesPreference")
    usable = [c for c in candidates if c.usable]
    for wanted in preference:
        matches = [c for c in usable if wanted.matches(c.signature)]  # type: ignore[arg-type]
        if matches:
            return min(
                matches,
                key=lambda c: (
                    c.derived,
                    -len(c.slices),
                    c.series_number if c.series_number is not None else 1 << 30,
                    c.series_instance_uid,
                ),
            )
    listing = "; ".join(c.summary() for c in candidates) or "no series"
    wanted_text = ", ".join(str(p) for p in preference)
    raise NoSuitableSeriesError(
        f"no series matches the task's preference ({wanted_text}): {listing}"
    )


# --- slice tensor ---------------------------------------------------------------------------


def sample_slice_indices(count: int, sampling: SliceSampling) -> tuple[int, ...]:
    """Indices of the slices kept from a sorted stack of ``count`` slices."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    keep = sampling.max_slices
    if count <= keep:
        return tuple(range(count))
    if sampling.strategy is SamplingStrategy.CENTRAL:
        start = (count - keep) // 2
        return tuple(range(start, start + keep))
    if keep == 1:
        return (count // 2,)
    return tuple(int(round(v)) for v in np.linspace(0, count - 1, keep))


def _reverses_slice_order(candidate: SeriesCandidate, config: PreprocessConfig) -> bool:
    """True when mirroring the knee to the canonical side reverses the slice order: every
    slice has the same, non-canonical side (read as :func:`.preprocess_frame` reads it) and the
    slice normal runs left-right.

    Raises
    ------
    UnsupportedImageError
        The slices disagree about laterality.
    """
    sides = {side_of(s.dataset, s.frame_index, config).laterality for s in candidate.slices}
    if len(sides) > 1:
        found = ", ".join(sorted("unknown" if side is None else side.value for side in sides))
        raise UnsupportedImageError(f"slices of one series disagree about laterality ({found})")
    (side,) = sides
    if side not in (Laterality.LEFT, Laterality.RIGHT) or side is config.canonical_side:
        return False
    first = candidate.slices[0]
    return mirror_axis(first.dataset, frame_index=first.frame_index) is MirrorAxis.SLICES


def prepare_series(
    candidate: SeriesCandidate,
    *,
    config: PreprocessConfig,
    sampling: SliceSampling | None = None,
) -> PreparedSeries:
    """Decode, window, mirror and stack the sampled slices of a series.

    Returns
    -------
    PreparedSeries
        Tensor (K, 3, S, S) plus per-slice ImageRefs and geometry.

    Raises
    ------
    ValueError
        ``candidate`` is an excluded series.
    UnsupportedImageError
        A slice cannot be decoded, or the slices disagree about laterality.
    """
    if not isinstance(candidate, SeriesCandidate):
        raise TypeError(f"candidate must be a SeriesCandidate, got {type(candidate).__name__}")
    if not candidate.usable or candidate.signature is None:
        raise ValueError(f"candidate is not usable: {candidate.excluded_reason}")
    sampling = sampling if sampling is not None else SliceSampling()
    mirrored = _reverses_slice_order(candidate, config)
    # Sample in canonical (mirrored) order: reversing after sampling keeps other anatomy for a
    # left knee than for its mirror image whenever the sampler's rounding is not symmetric.
    ordered = candidate.slices[::-1] if mirrored else candidate.slices
    chosen = [ordered[i] for i in sample_slice_indices(len(ordered), sampling)]
    raws = [decode_frame(s.dataset, frame_index=s.frame_index) for s in chosen]
    unwindowed = [raw.values.ravel() for raw in raws if raw.header_voi is None]
    window = (
        percentile_window(np.concatenate(unwindowed), percentiles=config.window_percentiles)
        if unwindowed
        else None
    )
    prepared = [
        preprocess_frame(s.dataset, raw, config=config, window=window)
        for s, raw in zip(chosen, raws)
    ]
    return PreparedSeries(
        series_instance_uid=candidate.series_instance_uid,
        signature=candidate.signature,
        tensor=torch.stack([item.tensor for item in prepared]),
        slices=tuple(prepared),
        positions_mm=tuple(s.position_mm for s in chosen),
        laterality=prepared[0].laterality,
        slice_order_mirrored=mirrored,
    )
