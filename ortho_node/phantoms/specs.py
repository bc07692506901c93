"""What a caller asks for: frozen, validated descriptions of phantom images.

A spec says *what* to draw (grade, side, view, contrast, size); the seed handed to the
renderer decides the random details (pose, exposure, noise). Strings are accepted wherever
an enum is expected and converted with the enum, so an unknown value raises ``ValueError``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ortho_node.model.findings import Laterality


class XrayView(str, enum.Enum):
    """Projection of a knee radiograph."""

    AP = "AP"
    """Antero-posterior: beam front to back, knee extended."""
    LATERAL = "LAT"
    """Medio-lateral (lateral view): beam from the medial side, lateral side on the detector."""

    @classmethod
    def _missing_(cls, value: object) -> XrayView | None:
        # Accept the DICOM ViewPosition spellings callers tend to pass for a lateral knee.
        if isinstance(value, str) and value.upper() in {"LAT", "LATERAL", "LL", "RL", "ML"}:
            return cls.LATERAL
        if isinstance(value, str) and value.upper() == "AP":
            return cls.AP
        return None


class XrayModality(str, enum.Enum):
    """Storage class of a radiograph phantom."""

    DX = "DX"
    """Digital X-Ray Image Storage - For Presentation."""
    CR = "CR"
    """Computed Radiography Image Storage."""


class Photometric(str, enum.Enum):
    """Photometric Interpretation of a grey-scale radiograph (PS3.3 C.7.6.3.1.2)."""

    MONOCHROME1 = "MONOCHROME1"
    """Low values display bright: stored values are inverted (bone has low values)."""
    MONOCHROME2 = "MONOCHROME2"
    """Low values display dark: bone has high values."""


class MRContrast(str, enum.Enum):
    """Weighting of a sagittal knee MR series."""

    PD = "PD"
    """Proton density, no fat suppression: fat and marrow bright, fluid intermediate."""
    PD_FS = "PD_FS"
    """Proton density, fat suppressed: fluid bright, fat and marrow dark."""
    T2 = "T2"
    """T2-weighted: fluid very bright, cartilage and muscle dark."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")


def _check_spacing(name: str, value: object, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}] mm, got {value}")


def _check_side(value: object) -> Laterality:
    side = Laterality(value)
    if side is Laterality.BOTH:
        raise ValueError("side must be L or R for one knee image, got B")
    return side


@dataclass(frozen=True)
class XrayPhantomSpec:
    """One synthetic knee radiograph.

    Parameters
    ----------
    kl_grade : int
        Kellgren-Lawrence grade 0-4 that drives joint-space narrowing, osteophytes,
        sclerosis (grade 3+) and deformity (grade 4).
    side : Laterality or str
        ``"L"`` or ``"R"``.
    view : XrayView or str, optional
        ``"AP"`` (default) or ``"LAT"`` (``"LL"``, ``"RL"``, ``"LATERAL"`` are accepted too).
    modality : XrayModality or str, optional
        ``"DX"`` (default) or ``"CR"``.
    photometric : Photometric or str, optional
        ``"MONOCHROME2"`` (default) or ``"MONOCHROME1"`` (stored values inverted).
    rows, columns : int, optional
        Matrix size, 64-4096 each (default 1024 x 1024).
    pixel_spacing_mm : float, optional
        Detector pixel spacing in mm, 0.05-1.0 (default 0.15).
    """

    kl_grade: int
    side: Laterality
    view: XrayView = XrayView.AP
    modality: XrayModality = XrayModality.DX
    photometric: Photometric = Photometric.MONOCHROME2
    rows: int = 1024
    columns: int = 1024
    pixel_spacing_mm: float = 0.15

    def __post_init__(self) -> None:
        _check_int("kl_grade", self.kl_grade, 0, 4)
        object.__setattr__(self, "side", _check_side(self.side))
        object.__setattr__(self, "view", XrayView(self.view))
        object.__setattr__(self, "modality", XrayModality(self.modality))
        object.__setattr__(self, "photometric", Photometric(self.photometric))
        _check_int("rows", self.rows, 64, 4096)
        _check_int("columns", self.columns, 64, 4096)
        _check_spacing("pixel_spacing_mm", self.pixel_spacing_mm, 0.05, 1.0)


@dataclass(frozen=True)
class MRPhantomSpec:
    """One synthetic sagittal knee MR series.

    Parameters
    ----------
    acl_tear : bool, optional
        Draw a torn anterior cruciate ligament (discontinuous, swollen, bright) instead of an
        intact one.
    meniscus_tear : bool, optional
        Draw a linear bright tear through the posterior horn of the medial meniscus.
    side : Laterality or str, optional
        ``"R"`` (default) or ``"L"``.
    contrast : MRContrast or str, optional
        ``"PD"`` (default), ``"PD_FS"`` or ``"T2"``.
    slices : int, optional
        Number of sagittal slices, 8-80 (default 32).
    rows, columns : int, optional
        Matrix size, 64-1024 each (default 256 x 256).
    pixel_spacing_mm : float, optional
        In-plane pixel spacing in mm, 0.2-2.0 (default 0.5).
    effusion : bool, optional
        Add a joint effusion (fluid in the suprapatellar recess and around the joint).
    slice_thickness_mm : float, optional
        Slice thickness in mm, 1-6 (default 3.0); slices are 10 % thicker apart (a gap).
    """

    acl_tear: bool = False
    meniscus_tear: bool = False
    side: Laterality = Laterality.RIGHT
    contrast: MRContrast = MRContrast.PD
    slices: int = 32
    rows: int = 256
    columns: int = 256
    pixel_spacing_mm: float = 0.5
    effusion: bool = False
    slice_thickness_mm: float = 3.0

    def __post_init__(self) -> None:
        for name in ("acl_tear", "meniscus_tear", "effusion"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "side", _check_side(self.side))
        object.__setattr__(self, "contrast", MRContrast(self.contrast))
        _check_int("slices", self.slices, 8, 80)
        _check_int("rows", self.rows, 64, 1024)
        _check_int("columns", self.columns, 64, 1024)
        _check_spacing("pixel_spacing_mm", self.pixel_spacing_mm, 0.2, 2.0)
        _check_spacing("slice_thickness_mm", self.slice_thickness_mm, 1.0, 6.0)

    @property
    def spacing_between_slices_mm(self) -> float:
        """Centre-to-centre distance of neighbouring slices (thickness plus a 10 % gap)."""
        return round(self.slice_thickness_mm * 1.1, 3)
