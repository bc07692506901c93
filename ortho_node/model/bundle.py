"""Model bundles: a folder with ``manifest.json`` and ``weights.safetensors``.

The manifest is described in :mod:`ortho_node.model.manifest`. The weights hold the encoder
under ``encoder.`` (timm keys under ``encoder.vit.`` plus the exact RoPE periods as
``encoder.rope_periods``) and each head under ``heads.<name>.``, all float32.

- :func:`import_checkpoint` turns an encoder checkpoint into a bundle. Heads without trained
  weights in the checkpoint are initialised and marked ``trained: false``.
- :func:`save_bundle` writes a bundle from modules (the training package exports with it).
- :func:`load_bundle` checks the sha256 *before* loading anything; a mismatch is an error.
- :func:`verify_bundle` checks schema, checksum, keys/shapes and a forward pass, and reports.

Untrained heads: the node must never report a finding from a head whose manifest entry says
``trained: false`` (an initialised head outputs numbers that mean nothing).
:attr:`LoadedBundle.reportable_heads` lists only trained heads, and :meth:`LoadedBundle.head`
refuses an untrained one unless the caller explicitly asks for it (tests, training).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import torch

from ortho_node.model.checkpoint import (
    CheckpointError,
    compare_state_shapes,
    load_checkpoint_file,
    load_encoder_checkpoint,
)
from ortho_node.model.encoder import OrthoEncoder, arch_info, build_encoder, encoder_state_shapes
from ortho_node.model.findings import ModelIdentity
from ortho_node.model.head_module import TaskHead, image_features
from ortho_node.model.heads import head_spec, list_heads
from ortho_node.model.preprocess import PreprocessConfig
from ortho_node.model.manifest import (
    DEFAULT_DISCLAIMER,
    DEFAULT_INTENDED_USE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    BundleChecksumError,
    BundleError,
    BundleHead,
    BundleManifest,
    Provenance,
    bundle_device_uid,
    file_sha256,
    read_manifest,
    validate_manifest_data,
    validate_name_and_version,
)

__all__ = [
    "BundleChecksumError",
    "BundleError",
    "BundleManifest",
    "LoadedBundle",
    "Provenance",
    "UntrainedHeadError",
    "VerifyCheck",
    "VerifyReport",
    "bundle_device_uid",
    "import_checkpoint",
    "load_bundle",
    "read_manifest",
    "save_bundle",
    "verify_bundle",
]

_ENCODER_PREFIX = "encoder."
_HEADS_PREFIX = "heads."


class UntrainedHeadError(BundleError):
    """A head whose manifest says ``trained: false`` was requested for reporting."""


# --------------------------------------------------------------------------- writing


def _bundle_state(encoder: OrthoEncoder, heads: Mapping[str, TaskHead]) -> dict[str, torch.Tensor]:
    state = {_ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
    for name, head in heads.items():
        state.update({f"{_HEADS_PREFIX}{name}.{k}": v for k, v in head.state_dict().items()})
    # float32 on disk: one dtype for every consumer; workers cast or autocast themselves.
    return {
        key: value.detach().to(device="cpu", dtype=torch.float32).contiguous()
        for key, value in state.items()
    }


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _refuse_existing(out_dir: Path, *, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists; choose another folder or allow overwriting"
        )


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired)


def _check_heads(encoder: OrthoEncoder, heads: Mapping[str, TaskHead], trained: set[str]) -> None:
    for key, head in heads.items():
        if not isinstance(head, TaskHead) or head.spec.name != key:
            raise ValueError(f"heads[{key!r}] must be the TaskHead named {key!r}")
        if head.in_features != 2 * encoder.embed_dim:
            raise ValueError(
                f"head {key!r} reads {head.in_features} features; the encoder gives "
                f"{2 * encoder.embed_dim}"
            )
    if not trained <= set(heads):
        raise ValueError(f"trained names heads not in the bundle: {sorted(trained - set(heads))}")


def save_bundle(
    out_dir: str | Path,
    *,
    encoder: OrthoEncoder,
    heads: Mapping[str, TaskHead],
    trained: Iterable[str],
    name: str,
    version: str,
    provenance: Provenance,
    license: str,
    input_size: tuple[int, int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    description: str = "",
    manufacturer: str = "ortho-node",
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder atomically (staged next to ``out_dir``, fsynced, then renamed).

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder to create.
    encoder : OrthoEncoder
        Encoder with its final weights.
    heads : Mapping[str, TaskHead]
        Heads by name; each key must equal its spec's name.
    trained : iterable of str
        Names of the heads whose weights were trained; all others are marked untrained.
    name, version, provenance, license, input_size, mean, std, description, manufacturer
        Manifest fields (see :class:`~ortho_node.model.manifest.BundleManifest`).
    overwrite : bool, optional
        Replace an existing folder (default False: refuse).

    Returns
    -------
    Path
        The bundle folder.

    Raises
    ------
    TypeError, ValueError
        For bad arguments (all checked before anything is written).
    FileExistsError
        If ``out_dir`` exists and ``overwrite`` is False.
    """
    if not isinstance(encoder, OrthoEncoder):
        raise TypeError(f"encoder must be an OrthoEncoder, got {type(encoder).__name__}")
    if not isinstance(provenance, Provenance):
        raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
    trained_set = set(trained)
    _check_heads(encoder, heads, trained_set)
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, overwrite=overwrite)
    if not provenance.created_at:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        provenance = dataclasses.replace(provenance, created_at=now)
    info = arch_info(encoder.arch)
    fields: dict[str, Any] = dict(
        name=name,
        version=version,
        arch=encoder.arch,
        input_size=tuple(input_size),
        mean=tuple(mean),
        std=tuple(std),
        patch_size=info.patch_size,
        embed_dim=info.embed_dim,
        depth=info.depth,
        num_heads=info.num_heads,
        num_register_tokens=info.num_register_tokens,
        num_params=info.num_params,
        heads=tuple(BundleHead(head.spec, key in trained_set) for key, head in heads.items()),
        provenance=provenance,
        license=license,
        manufacturer=manufacturer,
        description=description,
    )
    # Validate every field (dataclass and schema) with a placeholder checksum before anything
    # touches the disk.
    placeholder = BundleManifest(**fields, weights_sha256="0" * 64, weights_size=1)
    validate_manifest_data(placeholder.to_dict())

    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        weights_path = staging / WEIGHTS_FILE
        # One metadata entry only: safetensors writes a map's entries in no fixed order, and
        # the same weights must always give the same file (and sha256, and device UID).
        save_file(_bundle_state(encoder, heads), str(weights_path), metadata={"format": "pt"})
        manifest = BundleManifest(
            **fields,
            weights_sha256=file_sha256(weights_path),
            weights_size=weights_path.stat().st_size,
        )
        manifest_path = staging / MANIFEST_FILE
        manifest_path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", "utf-8")
        for written in (weights_path, manifest_path):
            _fsync(written)
        _move_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _load_head_weights(head: TaskHead, head_state: Mapping[str, torch.Tensor]) -> bool:
    prefix = head.spec.name + "."
    state = {k[len(prefix) :]: v for k, v in head_state.items() if k.startswith(prefix)}
    if not state:
        return False
    mismatch = compare_state_shapes(
        {k: tuple(v.shape) for k, v in state.items()},
        {k: tuple(v.shape) for k, v in head.state_dict().items()},
    )
    if not mismatch.ok:
        raise CheckpointError(
            f"weights for head {head.spec.name!r} do not fit: {mismatch.describe()}"
        )
    head.load_state_dict(state, strict=True)
    return True


def import_checkpoint(
    checkpoint: str | Path | Mapping[str, Any],
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    arch: str | None = None,
    heads: Sequence[str] | None = None,
    img_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    license: str = "unspecified: check the checkpoint publisher's terms",
    training_data: str = (
        "Encoder imported from the source checkpoint; see its publisher's documentation."
    ),
    synthetic: bool = False,
    intended_use: str = DEFAULT_INTENDED_USE,
    disclaimer: str = DEFAULT_DISCLAIMER,
    description: str = "",
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Import an encoder checkpoint (Meta DINOv3, OrthoFoundation, timm) into a bundle.

    Task heads whose weights are in the checkpoint (``heads.<name>.*``) are loaded and marked
    trained; all other requested heads are initialised and marked ``trained: false``, so the
    node will not report them until a bundle with trained heads replaces this one.

    Parameters
    ----------
    checkpoint : str, Path or Mapping
        Checkpoint file (``.pth``/``.pt``/``.safetensors``) or an already loaded state dict.
    out_dir : str or Path
        Bundle folder to create.
    name, version : str
        Model name and version recorded in the manifest and in every result.
    arch : str, optional
        timm architecture; inferred from the checkpoint when omitted.
    heads : sequence of str, optional
        Registered heads to include (default: all registered heads).
    img_size : int or (int, int), optional
        Input size (default 224, the OrthoFoundation pretraining crop).
    mean, std, license, training_data, synthetic, intended_use, disclaimer, description
        Manifest fields.
    allow_pickle : bool, optional
        Allow unpickling a ``.pth`` that holds more than tensors (trusted sources only).
    overwrite : bool, optional
        Replace an existing bundle folder.

    Returns
    -------
    Path
        The bundle folder.

    Raises
    ------
    FileNotFoundError, FileExistsError
        For a missing checkpoint or an existing ``out_dir``.
    CheckpointError
        If the checkpoint does not fit (the message lists the first mismatches).
    UnknownHeadError
        For a head name that is not registered.
    ValueError
        For an invalid name, version or provenance text.
    """
    # Everything cheap is checked before the checkpoint is read.
    _refuse_existing(Path(out_dir), overwrite=overwrite)
    validate_name_and_version(name, version)
    names = tuple(list_heads() if heads is None else heads)
    specs = [head_spec(head) for head in names]
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    provenance = Provenance(
        training_data=training_data,
        synthetic=synthetic,
        intended_use=intended_use,
        disclaimer=disclaimer,
    )
    if isinstance(checkpoint, (str, Path)):
        source = Path(checkpoint)
        checkpoint = load_checkpoint_file(source, allow_pickle=allow_pickle)
        provenance = dataclasses.replace(
            provenance, source_checkpoint=source.name, source_checkpoint_sha256=file_sha256(source)
        )
    imported = load_encoder_checkpoint(checkpoint, arch=arch, img_size=size)
    modules = {spec.name: TaskHead(spec, embed_dim=imported.encoder.embed_dim) for spec in specs}
    trained = [
        head_name
        for head_name, head in modules.items()
        if _load_head_weights(head, imported.checkpoint.head_state)
    ]
    untrained = [head_name for head_name in names if head_name not in trained]
    provenance = dataclasses.replace(
        provenance,
        import_notes=imported.notes
        + (
            f"heads trained: {', '.join(trained) or 'none'}",
            f"heads initialised, untrained: {', '.join(untrained) or 'none'}",
        ),
    )
    return save_bundle(
        out_dir,
        encoder=imported.encoder,
        heads=modules,
        trained=trained,
        name=name,
        version=version,
        provenance=provenance,
        license=license,
        input_size=size,
        mean=mean,
        std=std,
        description=description,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class LoadedBundle:
    """A bundle in memory, in eval mode with frozen parameters: the encoder on ``device``, the
    task heads in host memory (they run on the encoder's features there, see
    :mod:`ortho_node.model.engine`)."""

    path: Path
    manifest: BundleManifest
    encoder: OrthoEncoder
    heads: Mapping[str, TaskHead]
    device: torch.device

    @property
    def identity(self) -> ModelIdentity:
        """Model identity for results (name, version, device UID, sha256, synthetic flag)."""
        return self.manifest.identity

    @property
    def reportable_heads(self) -> tuple[str, ...]:
        """Heads the node may report: the trained ones."""
        return self.manifest.trained_heads

    def head(self, name: str, *, allow_untrained: bool = False) -> TaskHead:
        """Return a head module by name.

        Raises
        ------
        KeyError
            If the bundle has no such head.
        UntrainedHeadError
            If the head is untrained and ``allow_untrained`` is False.
        """
        entry = self.manifest.head(name)
        if not entry.trained and not allow_untrained:
            raise UntrainedHeadError(
                f"head {name!r} of {self.manifest.name} {self.manifest.version} is untrained "
                "(initialised at import); its outputs must not be reported"
            )
        return self.heads[name]


def _parse_device(device: str | torch.device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"device must name a torch device (e.g. 'cpu', 'cuda:0'), got {device!r}"
        ) from exc


def _preprocessing_problem(manifest: BundleManifest) -> str | None:
    """Why the node could not prepare images as the manifest asks (the analyser builds its
    preprocessing from it), or None."""
    try:
        PreprocessConfig.from_manifest(manifest)
    except ValueError as exc:
        return f"the manifest's input cannot be prepared: {exc}"
    return None


def _expected_bundle_shapes(manifest: BundleManifest) -> dict[str, tuple[int, ...]]:
    shapes = {_ENCODER_PREFIX + k: v for k, v in encoder_state_shapes(manifest.arch).items()}
    for entry in manifest.heads:
        head = TaskHead(entry.spec, embed_dim=manifest.embed_dim)
        prefix = f"{_HEADS_PREFIX}{entry.spec.name}."
        shapes.update({prefix + k: tuple(v.shape) for k, v in head.state_dict().items()})
    return shapes


def _weights_path(bundle_dir: Path, manifest: BundleManifest) -> Path:
    path = bundle_dir / manifest.weights_file
    if not path.is_file():
        raise BundleError(f"weights file {manifest.weights_file} is missing from {bundle_dir}")
    return path


def _check_checksum(path: Path, manifest: BundleManifest) -> None:
    found = file_sha256(path)
    if found != manifest.weights_sha256:
        raise BundleChecksumError(
            f"{path.name} does not match the manifest (sha256 {found[:12]}..., expected "
            f"{manifest.weights_sha256[:12]}...): the file is corrupt or was modified; "
            "refusing to load it"
        )


def _sub_state(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_bundle(
    bundle_dir: str | Path, *, device: str | torch.device = "cpu", encoder_weights: bool = True
) -> LoadedBundle:
    """Load a bundle after verifying the sha256 of its weights.

    Parameters
    ----------
    bundle_dir : str or Path
        Bundle folder.
    device : str or torch.device, optional
        Where to put the modules (default ``"cpu"``).
    encoder_weights : bool, optional
        False: the encoder is built on the ``meta`` device, its structure without weights (a
        process that encodes in the shared engine process and runs only the heads; ViT-L/16
        would cost it 1.2 GB). Such a bundle cannot be given to an ``InferenceEngine``.

    Raises
    ------
    BundleError
        Invalid manifest, missing weights, or keys/shapes that do not fit the manifest.
    BundleChecksumError
        If the weights do not match the manifest's sha256 (nothing is loaded).
    """
    from safetensors.torch import load_file

    target = _parse_device(device)
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    try:
        arch_info(manifest.arch)
    except ValueError as exc:
        raise BundleError(f"the manifest's encoder cannot be built here: {exc}") from exc
    weights_path = _weights_path(bundle_dir, manifest)
    _check_checksum(weights_path, manifest)
    tensors = load_file(str(weights_path), device="cpu")
    mismatch = compare_state_shapes(
        {k: tuple(v.shape) for k, v in tensors.items()}, _expected_bundle_shapes(manifest)
    )
    if not mismatch.ok:
        raise BundleError(
            f"weights do not fit the manifest ({manifest.arch}): {mismatch.describe()}"
        )
    if encoder_weights:
        encoder = build_encoder(manifest.arch, img_size=manifest.input_size, initialise=False)
        encoder.load_state_dict(_sub_state(tensors, _ENCODER_PREFIX), strict=True)
    else:
        with torch.device("meta"):
            encoder = build_encoder(manifest.arch, img_size=manifest.input_size, initialise=False)
    heads: dict[str, TaskHead] = {}
    for entry in manifest.heads:
        head = TaskHead(entry.spec, embed_dim=manifest.embed_dim)
        head.load_state_dict(_sub_state(tensors, f"{_HEADS_PREFIX}{entry.spec.name}."), strict=True)
        heads[entry.spec.name] = head
    encoder.to(target if encoder_weights else torch.device("meta")).eval().requires_grad_(False)
    for head in heads.values():
        head.eval().requires_grad_(False)  # stays on the CPU (LoadedBundle)
    return LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        encoder=encoder,
        heads=MappingProxyType(heads),
        device=target,
    )


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyCheck:
    """One line of a verification report: ``status`` is pass, fail, warn or skip."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_bundle`; ``ok`` is False when any check failed."""

    path: Path
    checks: tuple[VerifyCheck, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not any(check.status == "fail" for check in self.checks)

    def describe(self) -> str:
        """Readable multi-line report."""
        lines = [f"bundle {self.path}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  [{c.status.upper():4}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


_VERIFY_STEPS = (
    "manifest",
    "weights file",
    "checksum",
    "keys and shapes",
    "forward pass",
    "heads trained",
    "study analysis",
)


def _dummy_forward(bundle: LoadedBundle) -> str:
    height, width = bundle.manifest.input_size
    images = torch.zeros(2, 3, height, width, device=bundle.device)
    with torch.inference_mode():
        out = bundle.encoder(images)
        if not bool(torch.isfinite(out.cls).all() and torch.isfinite(out.patches).all()):
            raise BundleError("the encoder produced non-finite features on a blank image")
        features = image_features(out.cls, out.patches).cpu()
        for name, head in bundle.heads.items():
            # MR heads see the two images as one slice set; X-ray heads as two images.
            if head.spec.pooling:
                logits = head.forward_sets(features.unsqueeze(0))
            else:
                logits = head(features)
            expected = (1 if head.spec.pooling else 2, head.spec.num_outputs)
            if tuple(logits.shape) != expected or not bool(torch.isfinite(logits).all()):
                raise BundleError(
                    f"head {name!r} gave logits of shape {tuple(logits.shape)} (expected "
                    f"{expected}) or non-finite values"
                )
    return (
        f"encoder {tuple(images.shape)} -> cls {tuple(out.cls.shape)}, "
        f"patches {tuple(out.patches.shape)}; {len(bundle.heads)} heads gave finite logits"
    )


def _encoder_facts_mismatch(manifest: BundleManifest) -> str | None:
    info = arch_info(manifest.arch)
    names = ("patch_size", "embed_dim", "depth", "num_heads", "num_register_tokens", "num_params")
    wrong = [
        f"{n} {getattr(manifest, n)} (is {getattr(info, n)})"
        for n in names
        if getattr(manifest, n) != getattr(info, n)
    ]
    return f"encoder facts do not match {manifest.arch}: {', '.join(wrong)}" if wrong else None


def verify_bundle(bundle_dir: str | Path) -> VerifyReport:
    """Check a bundle and report; never raises for a bad bundle.

    Checks, in order: the manifest (schema, values, encoder facts against the architecture),
    the weights file, its sha256, keys and shapes against the architecture and heads, a
    forward pass on a blank input, and which heads are untrained (a warning: they are never
    reported). A failed check marks the checks that depend on it as skipped.
    """
    path = Path(bundle_dir)
    checks: list[VerifyCheck] = []

    def failed(step: str, detail: str) -> VerifyReport:
        checks.append(VerifyCheck(step, "fail", detail))
        later = _VERIFY_STEPS[_VERIFY_STEPS.index(step) + 1 :]
        checks.extend(VerifyCheck(s, "skip", f"not checked: {step} failed") for s in later)
        return VerifyReport(path, tuple(checks))

    try:
        manifest = read_manifest(path)
        problem = _encoder_facts_mismatch(manifest)
    except (BundleError, TypeError, ValueError) as exc:
        return failed("manifest", str(exc))
    if problem:
        return failed("manifest", problem)
    detail = f"valid: {manifest.name} {manifest.version}, {manifest.arch}"
    checks.append(VerifyCheck("manifest", "pass", detail))
    try:
        weights_path = _weights_path(path, manifest)
    except BundleError as exc:
        return failed("weights file", str(exc))
    size = weights_path.stat().st_size
    checks.append(VerifyCheck("weights file", "pass", f"{weights_path.name}, {size} bytes"))
    try:
        _check_checksum(weights_path, manifest)
    except BundleChecksumError as exc:
        return failed("checksum", str(exc))
    checks.append(VerifyCheck("checksum", "pass", f"sha256 {manifest.weights_sha256}"))

    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as handle:
        found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    mismatch = compare_state_shapes(found, _expected_bundle_shapes(manifest))
    if not mismatch.ok:
        return failed("keys and shapes", mismatch.describe())
    detail = f"{len(found)} tensors fit {manifest.arch} and {len(manifest.heads)} heads"
    checks.append(VerifyCheck("keys and shapes", "pass", detail))
    try:
        detail = _dummy_forward(load_bundle(path))
    except (BundleError, RuntimeError, ValueError) as exc:
        return failed("forward pass", str(exc))
    checks.append(VerifyCheck("forward pass", "pass", detail))
    untrained = [n for n in manifest.head_names if n not in manifest.trained_heads]
    if untrained:
        detail = f"untrained, never reported: {', '.join(untrained)}"
        checks.append(VerifyCheck("heads trained", "warn", detail))
    else:
        detail = f"all {len(manifest.heads)} heads trained"
        checks.append(VerifyCheck("heads trained", "pass", detail))
    # the encoder runs any input size; the node's image preparation needs a square one
    if problem := _preprocessing_problem(manifest):
        checks.append(VerifyCheck("study analysis", "warn", f"{problem}: the encoder loads, no study can be analysed"))
    else:
        checks.append(VerifyCheck("study analysis", "pass", f"images prepared at {manifest.input_size[0]} px"))
    return VerifyReport(path, tuple(checks))
