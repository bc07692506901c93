"""Re-encode phantom instances in any of the transfer syntaxes the node must accept.

Pixel compression uses pydicom 3's ``Dataset.compress`` (native RLE, pylibjpeg-openjpeg for
JPEG 2000, pyjpegls for JPEG-LS). Implicit VR and Deflated Explicit VR only change how the
dataset is written, which :func:`save_phantom` does from the file meta. The JPEG processes
pydicom cannot encode (baseline, extended, lossless SV1) live in
:mod:`ortho_node.phantoms.dcmtk_testsupport`, for tests only.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

LOSSLESS_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
)
"""Syntaxes whose decoded pixels equal the rendered ones exactly."""

SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (*LOSSLESS_TRANSFER_SYNTAXES, JPEG2000)
"""Every syntax :func:`encode_transfer_syntax` can produce."""

_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
_PLUGIN = {RLELossless: "pydicom", JPEG2000Lossless: "pylibjpeg", JPEG2000: "pylibjpeg",
           JPEGLSLossless: "pyjpegls"}
JPEG2000_LOSSY_RATIO = 10.0
"""Compression ratio used for lossy JPEG 2000: visibly fine, clearly not lossless."""


def encode_transfer_syntax(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    """Re-encode ``ds`` in place for ``transfer_syntax_uid`` and return it.

    ``ds`` must hold native (uncompressed) pixel data. The SOP Instance UID is kept. Lossy
    JPEG 2000 also sets Lossy Image Compression, its ratio and method (PS3.3 C.7.6.1.1.5).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A phantom dataset in Explicit VR Little Endian, as the builders return it.
    transfer_syntax_uid : str
        One of :data:`SUPPORTED_TRANSFER_SYNTAXES`.

    Returns
    -------
    pydicom.dataset.Dataset
        ``ds`` itself.

    Raises
    ------
    ValueError
        If the syntax is not supported or ``ds`` is already compressed.
    """
    uid = UID(transfer_syntax_uid)
    if uid not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(f"{UID(u).name} ({u})" for u in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"transfer_syntax_uid must be one of {names}; got {transfer_syntax_uid!r}")
    current = UID(ds.file_meta.TransferSyntaxUID)
    if current.is_compressed:
        raise ValueError(f"dataset is already compressed ({current.name}); encode from native pixels")
    if uid in _UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = uid
        return ds
    if uid == JPEG2000:
        ds.compress(uid, encoding_plugin=_PLUGIN[uid], generate_instance_uid=False,
                    j2k_cr=[JPEG2000_LOSSY_RATIO])
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [f"{JPEG2000_LOSSY_RATIO:g}"]
        ds.LossyImageCompressionMethod = ["ISO_15444_1"]
        return ds
    ds.compress(uid, encoding_plugin=_PLUGIN[uid], generate_instance_uid=False)
    return ds


def save_phantom(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file in the transfer syntax named by its file meta.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Dataset with ``file_meta.TransferSyntaxUID`` set.
    path : pathlib.Path
        Destination; parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
