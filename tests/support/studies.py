"""Generated knee studies for tests, and sending them with DCMTK storescu the way PACS would."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydicom import uid

from ortho_node.phantoms import MRPhantomSpec, PhantomFile, PhantomStudy, XrayPhantomSpec, write_knee_study
from tests.support.peers import StoreRun, storescu

MIXED_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.RLELossless,
    uid.ExplicitVRLittleEndian,
    uid.JPEG2000,
)

# storescu proposes uncompressed syntaxes unless told which compressed one a file holds.
STORESCU_PROPOSE = {
    uid.ExplicitVRLittleEndian: (),
    uid.ImplicitVRLittleEndian: ("-xi",),
    uid.JPEG2000Lossless: ("-xv",),
    uid.JPEG2000: ("-xw",),
    uid.JPEGLSLossless: ("-xt",),
    uid.RLELossless: ("-xr",),
    uid.DeflatedExplicitVRLittleEndian: ("-xd",),
}


def write_multiseries_study(out_dir: Path, *, seed: int = 7, mr_slices: tuple[int, ...] = (72, 68, 64)) -> PhantomStudy:
    """204 MR slices in three series plus 2 DX, instances cycling through ``MIXED_SYNTAXES``."""
    return write_knee_study(
        out_dir,
        seed=seed,
        xrays=[XrayPhantomSpec(kl_grade=2, side="L"), XrayPhantomSpec(kl_grade=3, side="R")],
        mr_series=[MRPhantomSpec(slices=n, contrast=c) for n, c in zip(mr_slices, ("PD", "T2", "PD_FS"))],
        transfer_syntaxes=list(MIXED_SYNTAXES),
    )


def send_with_storescu(
    port: int, files: Sequence[PhantomFile], *, calling: str = "TESTSCU", extra: Sequence[str] = ()
) -> list[StoreRun]:
    """One storescu association per transfer syntax, each proposing that syntax."""
    by_syntax: dict[str, list[Path]] = defaultdict(list)
    for item in files:
        by_syntax[item.transfer_syntax_uid].append(item.path)
    runs = []
    for syntax, paths in by_syntax.items():
        runs.append(storescu(port, paths, calling=calling, extra=(*STORESCU_PROPOSE[syntax], *extra)))
    return runs
