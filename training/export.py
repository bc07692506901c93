"""Export trained weights to the node's model bundle format (``manifest.json`` +
``weights.safetensors``) through :func:`ortho_node.model.bundle.save_bundle`.

The heads are written with their calibrated specs (temperature from the validation split), so
the manifest the node reads carries the calibration. Heads that were not trained are either
left out (default) or written as initialised heads marked ``trained: false``, which the node
never reports. A head that no training sample fed (``train_samples`` of 0: e.g. ``pcl`` asked of
phantoms, which carry no PCL labels) is exported the same way, with a provenance note.

Synthetic data: heads trained on phantoms are always exported synthetic (provenance
``synthetic: true``, the synthetic intended use and disclaimer); :func:`resolve_synthetic`
refuses a request to call them otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortho_node.model.bundle import save_bundle
from ortho_node.model.encoder import OrthoEncoder
from ortho_node.model.head_module import TaskHead
from ortho_node.model.heads import HeadSpec, head_spec, list_heads
from ortho_node.model.manifest import IMAGENET_MEAN, IMAGENET_STD, Provenance

if TYPE_CHECKING:
    from training.heads.store import SavedHeads

__all__ = [
    "SYNTHETIC_DISCLAIMER",
    "SYNTHETIC_INTENDED_USE",
    "calibrated_head",
    "export_bundle",
    "export_encoder_bundle",
    "export_saved_heads",
    "resolve_synthetic",
    "unlabelled_heads",
]

SYNTHETIC_INTENDED_USE = (
    "Demonstration and testing of the ortho-node pipeline only (PACS in, DICOM SR/SC out). "
    "Trained on synthetic phantom images; it has never seen a real patient image."
)
SYNTHETIC_DISCLAIMER = (
    "SYNTHETIC DEMO MODEL - NOT FOR CLINICAL USE. Trained only on computer-generated knee "
    "phantoms; its outputs say nothing about real patients. Not a medical device."
)


def calibrated_head(head: TaskHead, spec: HeadSpec) -> TaskHead:
    """A copy of ``head`` whose spec is ``spec`` (e.g. with a fitted temperature), same weights.

    Raises
    ------
    ValueError
        If ``spec`` changes anything that alters the head's parameters (kind, labels, pooling).
    """
    if not isinstance(head, TaskHead):
        raise TypeError(f"head must be a TaskHead, got {type(head).__name__}")
    rebuilt = TaskHead(spec, embed_dim=head.in_features // 2)
    own, other = head.state_dict(), rebuilt.state_dict()
    if {k: tuple(v.shape) for k, v in own.items()} != {k: tuple(v.shape) for k, v in other.items()}:
        raise ValueError(f"spec for {spec.name!r} does not fit the trained head's parameters")
    rebuilt.load_state_dict(own)
    return rebuilt


def unlabelled_heads(train_samples: Mapping[str, int] | None) -> list[str]:
    """Heads that no training sample fed (none when the counts are unknown)."""
    return [name for name, count in (train_samples or {}).items() if count <= 0]


def resolve_synthetic(recorded: bool | None, requested: bool | None) -> bool:
    """Whether to export as synthetic: what the heads file recorded, else what was asked.

    ``recorded`` is None for heads files that predate the record (then ``requested``, default
    False, decides as it always did). A request may add the label, never remove it.

    Raises
    ------
    ValueError
        If the heads were trained on phantoms and ``requested`` is False.
    """
    if recorded and requested is False:
        raise ValueError(
            "these heads were trained on synthetic phantom data; a bundle of them is always "
            "labelled synthetic (drop --no-synthetic)"
        )
    return bool(recorded) or bool(requested)


def export_bundle(
    out_dir: str | Path,
    *,
    encoder: OrthoEncoder,
    heads: Mapping[str, TaskHead],
    name: str,
    version: str,
    input_size: int,
    training_data: str,
    synthetic: bool,
    temperatures: Mapping[str, float] | None = None,
    include_untrained: Iterable[str] | bool = False,
    withheld: Iterable[str] = (),
    train_samples: Mapping[str, int] | None = None,
    license: str = "Apache-2.0",
    intended_use: str | None = None,
    disclaimer: str | None = None,
    notes: Sequence[str] = (),
    description: str = "",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    overwrite: bool = False,
) -> Path:
    """Write a bundle the node loads with :func:`ortho_node.model.load_bundle`.

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder to create.
    encoder : OrthoEncoder
        Trained encoder.
    heads : Mapping[str, TaskHead]
        Trained heads by name.
    name, version : str
        Model identity written into every result.
    input_size : int
        Square input side the heads were trained at.
    training_data : str
        What encoder and heads were trained on.
    synthetic : bool
        True for phantom-trained models; the intended use and disclaimer then default to the
        synthetic texts above.
    temperatures : Mapping[str, float], optional
        Fitted calibration temperatures by head name.
    include_untrained : iterable of str or bool, optional
        Registered heads to add initialised and marked ``trained: false`` (True: all others).
    withheld : iterable of str, optional
        Heads of ``heads`` kept with their weights but marked ``trained: false``, so the node
        never reports them (a head that failed its release gate, e.g. no better than chance).
    train_samples : Mapping[str, int], optional
        Training samples that fed each head (as ``heads.pt`` records them); heads with 0 keep
        their initial weights and are exported marked ``trained: false``, with a note.
    license, intended_use, disclaimer, notes, description, mean, std, overwrite :
        Manifest fields; ``notes`` go to ``provenance.import_notes``.

    Raises
    ------
    TypeError, ValueError
        For bad arguments (nothing is written then).
    """
    withheld = set(withheld)
    if withheld - set(heads):
        raise ValueError(f"withheld names heads that are not exported: {sorted(withheld - set(heads))}")
    unknown_counts = set(train_samples or {}) - set(heads)
    if unknown_counts:
        raise ValueError(f"train_samples names heads not exported: {sorted(unknown_counts)}")
    # A head no sample fed holds its initial weights: ship it like a withheld one, and say why.
    unlabelled = unlabelled_heads(train_samples)
    withheld |= set(unlabelled)
    notes = [*notes, *(f"{n}: no training labels; exported trained: false" for n in unlabelled)]
    if not set(heads) - withheld:
        raise ValueError("heads must hold at least one trained head that is not withheld")
    temperatures = dict(temperatures or {})
    unknown = set(temperatures) - set(heads)
    if unknown:
        raise ValueError(f"temperatures name heads that are not exported: {sorted(unknown)}")
    modules: dict[str, TaskHead] = {}
    for key, head in heads.items():
        spec = head.spec
        if key in temperatures:
            spec = dataclasses.replace(spec, temperature=float(temperatures[key]))
        modules[key] = calibrated_head(head, spec)
    if include_untrained is True:
        extra = [n for n in list_heads() if n not in modules]
    elif include_untrained is False:
        extra = []
    else:
        extra = [n for n in include_untrained if n not in modules]
    for extra_name in extra:
        modules[extra_name] = TaskHead(head_spec(extra_name), embed_dim=encoder.embed_dim)
    provenance = Provenance(
        training_data=training_data,
        synthetic=synthetic,
        intended_use=intended_use
        or (SYNTHETIC_INTENDED_USE if synthetic else Provenance.intended_use),
        disclaimer=disclaimer or (SYNTHETIC_DISCLAIMER if synthetic else Provenance.disclaimer),
        import_notes=tuple(notes),
        created_by="ortho-train (training package)",
    )
    return save_bundle(
        out_dir,
        encoder=encoder,
        heads=modules,
        trained=[name for name in heads if name not in withheld],
        name=name,
        version=version,
        provenance=provenance,
        license=license,
        input_size=(input_size, input_size),
        mean=mean,
        std=std,
        description=description,
        overwrite=overwrite,
    )


def export_saved_heads(
    out_dir: str | Path, saved: SavedHeads, *, synthetic: bool | None = None, **manifest: Any
) -> Path:
    """:func:`export_bundle` of a loaded ``heads.pt``, with everything it recorded.

    Temperatures and input size come from the file; heads it counted no training sample for
    are exported ``trained: false``; ``synthetic`` goes through :func:`resolve_synthetic`.
    ``manifest``: the other keyword arguments of :func:`export_bundle` (``name``, ...).
    """
    return export_bundle(
        out_dir,
        encoder=saved.encoder,
        heads=saved.heads,
        input_size=saved.image_size,
        temperatures=saved.temperatures,
        train_samples=saved.train_samples,
        synthetic=resolve_synthetic(saved.synthetic, synthetic),
        **manifest,
    )


def export_encoder_bundle(
    out_dir: str | Path,
    *,
    encoder: OrthoEncoder,
    name: str,
    version: str,
    input_size: int,
    training_data: str,
    synthetic: bool,
    notes: Sequence[str] = (),
    license: str = "Apache-2.0",
    overwrite: bool = False,
) -> Path:
    """Write an encoder-only bundle (no heads): a self-supervised encoder to probe or fine-tune.

    The node can load and verify it, and reports nothing from it (it has no heads);
    :func:`training.encoders.load_encoder` takes it as a starting point.
    """
    provenance = Provenance(
        training_data=training_data,
        synthetic=synthetic,
        intended_use=(
            "Starting point for training task heads (research); reports no findings. "
            + (SYNTHETIC_INTENDED_USE if synthetic else "")
        ).strip(),
        disclaimer=SYNTHETIC_DISCLAIMER if synthetic else Provenance.disclaimer,
        import_notes=tuple(notes),
        created_by="ortho-train (training package)",
    )
    return save_bundle(
        out_dir,
        encoder=encoder,
        heads={},
        trained=(),
        name=name,
        version=version,
        provenance=provenance,
        license=license,
        input_size=(input_size, input_size),
        description="Self-supervised encoder only (DINO pretraining), no task heads.",
        overwrite=overwrite,
    )
