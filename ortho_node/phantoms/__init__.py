"""Deterministic synthetic knee studies as valid DICOM: radiographs (DX/CR) and sagittal MR.

Same seed, same bytes: pixel data, UIDs and names all follow from the seed. Typical use::

    from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, write_knee_study

    study = write_knee_study(
        out_dir, seed=42,
        xrays=[XrayPhantomSpec(kl_grade=3, side="L"), XrayPhantomSpec(kl_grade=3, side="L", view="LAT")],
        mr_series=[MRPhantomSpec(acl_tear=True, side="R", contrast="PD_FS")],
        transfer_syntaxes=[JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian],
    )
    study.labels  # {"kl_grade": {"L": 3}, "acl_tear": {"R": True}, "meniscus_tear": {"R": False}}

Renderers (:func:`render_knee_radiograph`, :func:`render_knee_mr`) return plain numpy arrays
with ground-truth regions; :func:`build_knee_study` returns pydicom datasets without writing.
:func:`write_non_knee_study` makes out-of-scope studies (chest CR, head MR);
:func:`iter_phantom_cohort` / :func:`write_phantom_cohort` make labelled training cohorts.
JPEG baseline/extended/lossless test files come from
:mod:`ortho_node.phantoms.dcmtk_testsupport` (tests only: it needs DCMTK).
"""

from ortho_node.phantoms.cohort import LABEL_COLUMNS, CohortCase, iter_phantom_cohort, write_phantom_cohort
from ortho_node.phantoms.geometry import PixelBox
from ortho_node.phantoms.mri import KneeMRSeries, render_knee_mr
from ortho_node.phantoms.nonknee import NonKneeKind, build_non_knee_study, write_non_knee_study
from ortho_node.phantoms.specs import (
    MRContrast,
    MRPhantomSpec,
    Photometric,
    XrayModality,
    XrayPhantomSpec,
    XrayView,
)
from ortho_node.phantoms.study import (
    PhantomDatasets,
    PhantomFile,
    PhantomStudy,
    build_knee_study,
    write_datasets,
    write_knee_study,
)
from ortho_node.phantoms.transfer import (
    LOSSLESS_TRANSFER_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    encode_transfer_syntax,
)
from ortho_node.phantoms.xray import KneeRadiograph, render_knee_radiograph

__all__ = [
    "LABEL_COLUMNS",
    "LOSSLESS_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "CohortCase",
    "KneeMRSeries",
    "KneeRadiograph",
    "MRContrast",
    "MRPhantomSpec",
    "NonKneeKind",
    "PhantomDatasets",
    "PhantomFile",
    "PhantomStudy",
    "Photometric",
    "PixelBox",
    "XrayModality",
    "XrayPhantomSpec",
    "XrayView",
    "build_knee_study",
    "build_non_knee_study",
    "encode_transfer_syntax",
    "iter_phantom_cohort",
    "render_knee_mr",
    "render_knee_radiograph",
    "write_datasets",
    "write_knee_study",
    "write_non_knee_study",
    "write_phantom_cohort",
]
