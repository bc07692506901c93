"""TEST SUPPORT ONLY: JPEG-encoded phantoms made with DCMTK's ``dcmcjpeg``.

pydicom cannot encode the JPEG processes (baseline, extended, lossless), yet hospitals send
them, so tests need such files. These helpers shell out to DCMTK, which runtime code must never
depend on: import this module only from tests and test tooling.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1


class DcmtkJpegProcess(str, enum.Enum):
    """A JPEG process ``dcmcjpeg`` can encode, as its command-line flag."""

    BASELINE = "+eb"
    """Process 1, lossy, 8-bit samples only (JPEG Baseline 1.2.840.10008.1.2.4.50)."""
    EXTENDED = "+ee"
    """Process 2 & 4, lossy, up to 12-bit samples (JPEG Extended 1.2.840.10008.1.2.4.51)."""
    LOSSLESS_SV1 = "+e1"
    """Process 14, selection value 1, lossless, up to 16 bits (1.2.840.10008.1.2.4.70)."""


TRANSFER_SYNTAX_BY_PROCESS = {
    DcmtkJpegProcess.BASELINE: JPEGBaseline8Bit,
    DcmtkJpegProcess.EXTENDED: JPEGExtended12Bit,
    DcmtkJpegProcess.LOSSLESS_SV1: JPEGLosslessSV1,
}
_MAX_BITS = {DcmtkJpegProcess.BASELINE: 8, DcmtkJpegProcess.EXTENDED: 12, DcmtkJpegProcess.LOSSLESS_SV1: 16}


def encode_jpeg_with_dcmtk_for_tests(source: Path, target: Path, *,
                                     process: DcmtkJpegProcess | str = DcmtkJpegProcess.LOSSLESS_SV1
                                     ) -> Path:
    """Test support: re-encode the uncompressed DICOM file ``source`` as JPEG into ``target``.

    Parameters
    ----------
    source : pathlib.Path
        A phantom file with native pixel data.
    target : pathlib.Path
        Where to write the JPEG-encoded copy.
    process : DcmtkJpegProcess or str, optional
        ``"+e1"`` lossless SV1 (default), ``"+ee"`` extended 12-bit, ``"+eb"`` baseline 8-bit
        (use :func:`to_8bit_for_tests` first for 12/16-bit phantoms).

    Returns
    -------
    pathlib.Path
        ``target``. Lossy processes give it a new SOP Instance UID (DCMTK's default, as the
        standard asks); lossless keeps the UID.

    Raises
    ------
    FileNotFoundError
        If ``dcmcjpeg`` is not installed.
    ValueError
        If the pixel data has more bits than the process can carry.
    RuntimeError
        If ``dcmcjpeg`` fails (its message is included).
    """
    process = DcmtkJpegProcess(process)
    executable = shutil.which("dcmcjpeg")
    if executable is None:
        raise FileNotFoundError("dcmcjpeg (DCMTK) is not on PATH; install dcmtk to make JPEG test files")
    bits = int(pydicom.dcmread(source, stop_before_pixels=True).BitsStored)
    if bits > _MAX_BITS[process]:
        raise ValueError(
            f"process {process.name} carries at most {_MAX_BITS[process]} bits, "
            f"found BitsStored {bits} in {source.name}; convert with to_8bit_for_tests first"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # +sr: map by the full bit range, not the image's min/max, so lossy values stay comparable.
    # dcmcjpeg gives lossy results a new SOP Instance UID (lossy makes a new instance).
    options = [process.value] if process is DcmtkJpegProcess.LOSSLESS_SV1 else [process.value, "+sr"]
    result = subprocess.run([executable, *options, str(source), str(target)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"dcmcjpeg {process.value} failed for {source.name}: {result.stderr.strip()}")
    return target


def to_8bit_for_tests(ds: Dataset) -> Dataset:
    """Test support: rescale a native grey-scale phantom to 8 bits in place (for JPEG baseline).

    The VOI window is mapped to 0-255, so the image looks the same; Bits Allocated/Stored
    become 8. Returns ``ds``.
    """
    pixels = ds.pixel_array.astype(np.float64)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    scaled = np.clip((pixels - (center - width / 2)) / width * 255.0, 0, 255).round().astype(np.uint8)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.SmallestImagePixelValue = int(scaled.min())
    ds.LargestImagePixelValue = int(scaled.max())
    ds.WindowCenter = "128"
    ds.WindowWidth = "256"
    ds.PixelData = scaled.tobytes()
    return ds
