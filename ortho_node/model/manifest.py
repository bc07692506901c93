"""``manifest.json`` of a model bundle, read into typed values.

The manifest (schema: ``manifest.schema.json`` next to this module) names the encoder
architecture, input size and normalisation, every task head (labels, codes, scope,
calibration, threshold, pooling, and whether it was trained), provenance, licence and the
sha256 of the weights. :class:`BundleManifest` is its typed form, like timm's
``PretrainedCfg``; :func:`read_manifest` validates the JSON against the schema first.

Nothing here imports torch: ``ortho-node model info`` and result builders read manifests
without loading a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema
from pydicom.uid import generate_uid

import ortho_node
from ortho_node.model.findings import ModelIdentity
from ortho_node.model.heads import HeadSpec

__all__ = [
    "DEFAULT_DISCLAIMER",
    "DEFAULT_INTENDED_USE",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "BundleChecksumError",
    "BundleError",
    "BundleHead",
    "BundleManifest",
    "Provenance",
    "bundle_device_uid",
    "file_sha256",
    "read_manifest",
    "validate_manifest_data",
    "validate_name_and_version",
]

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""DINOv3 and OrthoFoundation normalise with ImageNet statistics (grey replicated to RGB)."""

DEFAULT_INTENDED_USE = (
    "Research and evaluation of AI findings on knee radiographs and MRI; results are shown to "
    "clinicians alongside the original images and are never used on their own."
)
DEFAULT_DISCLAIMER = (
    "AI-generated result. Not a medical device; not for primary diagnosis. Review all findings "
    "against the source images."
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(ValueError):
    """A bundle that cannot be read or used; the message says what is wrong."""


class BundleChecksumError(BundleError):
    """The weights file does not match the sha256 in the manifest (tampered or corrupt)."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Provenance:
    """Where a bundle's weights come from and what they are for.

    Parameters
    ----------
    training_data : str
        What the encoder and heads were trained on (free text).
    synthetic : bool
        True when trained on synthetic data (demo models); shown on every result.
    source_checkpoint : str, optional
        File name of the imported checkpoint (no directories: paths can reveal site details).
    source_checkpoint_sha256 : str, optional
        sha256 of that file.
    intended_use, disclaimer : str, optional
        Shown by ``model info`` and carried into results (:class:`ModelIdentity`).
    import_notes : tuple of str, optional
        What the importer did (architecture inferred, prefixes removed, ...).
    created_by, created_at : str, optional
        Tool and UTC time that wrote the bundle.
    """

    training_data: str
    synthetic: bool
    source_checkpoint: str | None = None
    source_checkpoint_sha256: str | None = None
    intended_use: str = DEFAULT_INTENDED_USE
    disclaimer: str = DEFAULT_DISCLAIMER
    import_notes: tuple[str, ...] = ()
    created_by: str = f"ortho-node {ortho_node.__version__}"
    created_at: str = ""

    def __post_init__(self) -> None:
        for argument in ("training_data", "intended_use", "disclaimer"):
            value = getattr(self, argument)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
        if not isinstance(self.synthetic, bool):
            raise TypeError(f"synthetic must be a bool, got {type(self.synthetic).__name__}")
        sha = self.source_checkpoint_sha256
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise ValueError(
                f"source_checkpoint_sha256 must be 64 lowercase hex digits, got {sha!r}"
            )
        object.__setattr__(self, "import_notes", tuple(self.import_notes))

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest's ``provenance`` object."""
        return {**dataclasses.asdict(self), "import_notes": list(self.import_notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        """Build from the manifest's ``provenance`` object (schema-checked: known keys only)."""
        return cls(**{**data, "import_notes": tuple(data.get("import_notes", ()))})


@dataclass(frozen=True)
class BundleHead:
    """One head of a bundle: its spec and whether its weights were trained."""

    spec: HeadSpec
    trained: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest's head entry."""
        return {**self.spec.to_dict(), "trained": self.trained}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BundleHead":
        """Build from a manifest head entry."""
        return cls(spec=HeadSpec.from_dict(data), trained=bool(data["trained"]))


def validate_name_and_version(name: object, version: object) -> None:
    """Check a model name (at most 64 characters) and version (at most 32).

    Both go into DICOM results (LO / SH-like fields), so only letters, digits, space (name
    only) and ``._+-`` are allowed, starting with a letter or digit.

    Raises
    ------
    TypeError
        If either is not a string.
    ValueError
        If either does not match the allowed pattern.
    """
    for argument, value, pattern in (("name", name, _NAME), ("version", version, _VERSION)):
        if not isinstance(value, str):
            raise TypeError(f"{argument} must be a str, got {type(value).__name__}")
        if not pattern.match(value):
            raise ValueError(f"{argument} must match {pattern.pattern}, got {value!r}")


def _check_triplet(values: Sequence[float], *, argument: str, positive: bool) -> tuple[float, ...]:
    if isinstance(values, str) or len(values) != 3:
        raise ValueError(f"{argument} must be 3 numbers (R, G, B), got {values!r}")
    result = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in result):
        condition = "finite and > 0" if positive else "finite"
        raise ValueError(f"{argument} must be {condition}, got {values!r}")
    return result


@dataclass(frozen=True)
class BundleManifest:
    """Typed ``manifest.json`` (the bundle's equivalent of timm's ``PretrainedCfg``).

    Parameters
    ----------
    name, version : str
        Model name (at most 64 characters) and version (at most 32); both go into results.
    arch : str
        timm encoder architecture.
    input_size : (int, int)
        ``(height, width)`` the preprocessing produces; multiples of ``patch_size``.
    mean, std : (float, float, float)
        Normalisation applied after scaling pixels to [0, 1].
    patch_size, embed_dim, depth, num_heads, num_register_tokens, num_params : int
        Encoder facts (checked against ``arch`` by :func:`verify_bundle`).
    heads : tuple of BundleHead
        Task heads in order.
    provenance : Provenance
        Source, training data, synthetic flag, intended use, disclaimer.
    weights_sha256 : str
        sha256 of the weights file.
    weights_size : int
        Its size in bytes.
    license : str
        Licence of the weights.
    manufacturer, description, interpolation, weights_file, format_version
        As named.
    """

    name: str
    version: str
    arch: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int
    num_params: int
    heads: tuple[BundleHead, ...]
    provenance: Provenance
    weights_sha256: str
    weights_size: int
    license: str
    manufacturer: str = "ortho-node"
    description: str = ""
    interpolation: str = "bicubic"
    weights_file: str = WEIGHTS_FILE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_name_and_version(self.name, self.version)
        # JSON's 96.0 passes the schema's "integer"; the encoder and heads need real ints
        for field, least in (("patch_size", 1), ("embed_dim", 1), ("depth", 1), ("num_heads", 1),
                             ("num_register_tokens", 0), ("num_params", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{field} must be an int >= {least}, got {value!r}")
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(
                f"input_size must be (height, width) positive ints, got {self.input_size!r}"
            )
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(
                f"input_size {size} must be a multiple of patch_size {self.patch_size}"
            )
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", _check_triplet(self.mean, argument="mean", positive=False))
        object.__setattr__(self, "std", _check_triplet(self.std, argument="std", positive=True))
        heads = tuple(self.heads)
        if not all(isinstance(head, BundleHead) for head in heads):
            raise TypeError("heads must all be BundleHead")
        names = [head.spec.name for head in heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        object.__setattr__(self, "heads", heads)
        if not isinstance(self.weights_sha256, str) or not _SHA256.match(self.weights_sha256):
            raise ValueError(
                f"weights_sha256 must be 64 lowercase hex digits, got {self.weights_sha256!r}"
            )
        if not isinstance(self.provenance, Provenance):
            raise TypeError(
                f"provenance must be a Provenance, got {type(self.provenance).__name__}"
            )

    @property
    def head_names(self) -> tuple[str, ...]:
        """All head names, in order."""
        return tuple(head.spec.name for head in self.heads)

    @property
    def trained_heads(self) -> tuple[str, ...]:
        """Names of the heads whose weights were trained (the only ones the node reports)."""
        return tuple(head.spec.name for head in self.heads if head.trained)

    def head(self, name: str) -> BundleHead:
        """Return a head entry by name.

        Raises
        ------
        KeyError
            If the bundle has no such head (the message lists its heads).
        """
        for head in self.heads:
            if head.spec.name == name:
                return head
        raise KeyError(
            f"bundle {self.name} {self.version} has no head {name!r}; "
            f"heads: {', '.join(self.head_names)}"
        )

    @property
    def device_uid(self) -> str:
        """Deterministic DICOM UID of this model (see :func:`bundle_device_uid`)."""
        return bundle_device_uid(self.weights_sha256, self.version)

    @property
    def identity(self) -> ModelIdentity:
        """The :class:`ModelIdentity` results carry (device observer, TID 4019, SC text)."""
        return ModelIdentity(
            name=self.name,
            version=self.version,
            manufacturer=self.manufacturer,
            device_uid=self.device_uid,
            weights_sha256=self.weights_sha256,
            synthetic=self.provenance.synthetic,
            disclaimer=self.provenance.disclaimer,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object written to ``manifest.json``."""
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "license": self.license,
            "encoder": {
                "arch": self.arch,
                "patch_size": self.patch_size,
                "embed_dim": self.embed_dim,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "num_register_tokens": self.num_register_tokens,
                "num_params": self.num_params,
            },
            "input": {
                "size": list(self.input_size),
                "channels": 3,
                "mean": list(self.mean),
                "std": list(self.std),
                "interpolation": self.interpolation,
            },
            "heads": [head.to_dict() for head in self.heads],
            "provenance": self.provenance.to_dict(),
            "weights": {
                "file": self.weights_file,
                "sha256": self.weights_sha256,
                "size_bytes": self.weights_size,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BundleManifest":
        """Validate against the JSON schema, then build.

        Raises
        ------
        BundleError
            With the schema path and message of the most relevant violation, or the
            dataclass validation message.
        """
        validate_manifest_data(data)
        encoder, inputs, weights = data["encoder"], data["input"], data["weights"]
        try:
            return cls(
                name=data["name"],
                version=data["version"],
                description=data.get("description", ""),
                manufacturer=data["manufacturer"],
                license=data["license"],
                arch=encoder["arch"],
                patch_size=encoder["patch_size"],
                embed_dim=encoder["embed_dim"],
                depth=encoder["depth"],
                num_heads=encoder["num_heads"],
                num_register_tokens=encoder["num_register_tokens"],
                num_params=encoder["num_params"],
                input_size=tuple(inputs["size"]),
                mean=tuple(inputs["mean"]),
                std=tuple(inputs["std"]),
                interpolation=inputs["interpolation"],
                heads=tuple(BundleHead.from_dict(head) for head in data["heads"]),
                provenance=Provenance.from_dict(data["provenance"]),
                weights_file=weights["file"],
                weights_sha256=weights["sha256"],
                weights_size=weights["size_bytes"],
                format_version=data["format_version"],
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest is invalid: {exc}") from exc


def _schema() -> dict[str, Any]:
    text = resources.files("ortho_node.model").joinpath("manifest.schema.json").read_text("utf-8")
    return json.loads(text)


def validate_manifest_data(data: Mapping[str, Any]) -> None:
    """Validate a manifest JSON object against ``manifest.schema.json``.

    Raises
    ------
    BundleError
        With the path and message of the most relevant violation.
    """
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise BundleError(f"manifest does not follow the bundle schema at {where}: {error.message}")


def read_manifest(bundle_dir: str | Path) -> BundleManifest:
    """Read and validate ``manifest.json`` of a bundle folder.

    Raises
    ------
    BundleError
        If the folder or manifest is missing, not JSON, or invalid.
    """
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(
            f"no {MANIFEST_FILE} in {Path(bundle_dir)}; is this a model bundle folder?"
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{MANIFEST_FILE} must hold a JSON object, got {type(data).__name__}")
    return BundleManifest.from_dict(data)


# --------------------------------------------------------------------------- identity, hashing


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (lowercase hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_device_uid(weights_sha256: str, version: str, *, prefix: str | None = None) -> str:
    """A DICOM UID for the model, derived from its weights and version (same inputs, same UID).

    Parameters
    ----------
    weights_sha256 : str
        sha256 of the bundle's weights.
    version : str
        Bundle version.
    prefix : str, optional
        UID root ending in ``.``; pydicom's root when omitted.

    Raises
    ------
    ValueError
        If ``weights_sha256`` is not a sha256 hex digest or ``version`` is empty.
    """
    if not isinstance(weights_sha256, str) or not _SHA256.match(weights_sha256):
        raise ValueError(f"weights_sha256 must be 64 lowercase hex digits, got {weights_sha256!r}")
    if not isinstance(version, str) or not version:
        raise ValueError(f"version must be a non-empty string, got {version!r}")
    if prefix is None:
        return str(generate_uid(entropy_srcs=[weights_sha256, version]))
    return str(generate_uid(prefix=prefix, entropy_srcs=[weights_sha256, version]))
