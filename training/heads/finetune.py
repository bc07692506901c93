"""Train task heads: a linear probe on a frozen encoder, or full fine-tuning of encoder + heads.

Both modes train the node's :class:`~ortho_node.model.head_module.TaskHead` modules (LayerNorm
+ Linear, slice pooling for MR heads) with the losses of :mod:`training.heads.losses`:

- ``linear``: the encoder is frozen; features of every sample (all slices of MR series) are
  computed once, and the heads (including MR pooling) train on them for many cheap epochs.
- ``full``: encoder and heads train together end to end; each step takes one batch of
  radiographs (for the radiograph heads) and one batch of MR series (whose slices all pass the
  encoder and are pooled by the MR heads), and sums the head losses.

AdamW with linear warm-up and cosine decay; gradient clipping; optional bf16 autocast. With a
validation split, the epoch with the lowest validation loss is kept and temperatures are
calibrated on it (:mod:`training.heads.calibrate`).

The result records how many training and validation samples fed each head (a requested head
with no labelled sample keeps its initial weights and must not be exported as trained) and
whether any sample was a phantom (:func:`training.data.corpus.has_phantoms`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ortho_node.model.encoder import OrthoEncoder
from ortho_node.model.heads import HeadSpec
from ortho_node.model.manifest import IMAGENET_MEAN, IMAGENET_STD
from training.augment import generator_for
from training.data.corpus import TensorCorpus, has_phantoms, to_model_input
from training.heads.batches import HeadBatch, make_batch, sample_fits, samples_for_heads
from training.heads.calibrate import fit_temperature
from training.heads.losses import task_loss
from training.heads.model import HeadedEncoder
from training.logs import MetricsLog, progress_bar
from training.precision import autocast_context, resolve_device

__all__ = [
    "FinetuneConfig",
    "HeadPredictions",
    "TrainedHeads",
    "extract_features",
    "head_sample_counts",
    "predict_heads",
    "train_heads",
]

MODES = ("linear", "full")


@dataclass(frozen=True)
class FinetuneConfig:
    """Head-training settings.

    Parameters
    ----------
    mode : str
        ``"linear"`` (frozen encoder) or ``"full"`` (encoder trained too).
    epochs : int
        Passes over the larger of the radiograph and MR sample lists.
    batch_size, set_batch_size : int
        Radiographs per step; MR series per step.
    lr, encoder_lr : float
        Peak learning rates of the heads and of the encoder (full mode).
    weight_decay : float
        AdamW weight decay (not applied to biases, norms, tokens, cut-points).
    warmup_fraction : float
        Share of steps with linear warm-up.
    grad_clip : float
        Max gradient norm (0 disables).
    augment : bool
        Mild random views in full mode (see :mod:`training.heads.batches`).
    train_slices : int or None
        Full mode with augmentation: a random subset of this many slices per MR series per
        step (None: all).
    keep_best : bool
        Keep the epoch with the lowest validation loss (needs a validation split).
    seed : int
        Order, augmentation and initialisation seed.
    device, precision : str
        See :mod:`training.precision`.
    mean, std : tuple of float
        Input normalisation (the bundle's).
    """

    mode: str = "full"
    epochs: int = 10
    batch_size: int = 32
    set_batch_size: int = 4
    lr: float = 1e-3
    encoder_lr: float = 2e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    grad_clip: float = 3.0
    augment: bool = True
    train_slices: int | None = 8
    keep_best: bool = True
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("epochs", "batch_size", "set_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("lr", "encoder_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")

    def encoding(self) -> dict[str, Any]:
        """How images are encoded: keyword arguments of :func:`extract_features` and
        :func:`predict_heads`."""
        return {"device": self.device, "precision": self.precision, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class HeadPredictions:
    """Logits and targets of one head over the samples that feed it."""

    spec: HeadSpec
    logits: torch.Tensor
    targets: torch.Tensor
    patient_ids: tuple[str, ...]


@dataclass
class TrainedHeads:
    """The result of :func:`train_heads`.

    ``train_samples`` / ``val_samples``: samples that fed each head (0: the head never saw a
    label). ``synthetic``: some training or validation sample was a phantom.
    """

    model: HeadedEncoder
    temperatures: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    train_samples: dict[str, int] = field(default_factory=dict)
    val_samples: dict[str, int] = field(default_factory=dict)
    synthetic: bool = False

    def unlabelled(self) -> list[str]:
        """Heads no training sample fed (they keep their initial weights)."""
        return [name for name in self.model.specs if not self.train_samples.get(name)]

    def calibrated_specs(self) -> dict[str, HeadSpec]:
        """Each head's spec with its fitted temperature (1.0 where none was fitted)."""
        return {
            name: dataclasses.replace(spec, temperature=self.temperatures.get(name, 1.0))
            for name, spec in self.model.specs.items()
        }


def _check_specs(specs: Sequence[HeadSpec]) -> list[HeadSpec]:
    specs = list(specs)
    if not specs or not all(isinstance(s, HeadSpec) for s in specs):
        raise TypeError("specs must be a non-empty sequence of HeadSpec")
    return specs


def _param_groups(model: HeadedEncoder, config: FinetuneConfig) -> list[dict[str, object]]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_encoder = name.startswith("encoder.")
        # No decay on biases, norms, tokens and ordinal cut-points (1-D or token tensors).
        decay = parameter.ndim > 1 and "token" not in name
        groups.setdefault((is_encoder, decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": config.encoder_lr if is_encoder else config.lr,
            "base_lr": config.encoder_lr if is_encoder else config.lr,
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (is_encoder, decay), params in groups.items()
    ]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch_logits(
    model: HeadedEncoder, batch: HeadBatch, specs: Sequence[HeadSpec], *, features: torch.Tensor
) -> dict[str, torch.Tensor]:
    names = [s.name for s in specs if bool((batch.targets[s.name] >= 0).any())]
    if batch.mask is None:
        return model.image_logits(features, names)
    sets = features.view(batch.mask.shape[0], batch.mask.shape[1], -1)
    return model.set_logits(sets, batch.mask, names)


def _batch_loss(
    model: HeadedEncoder, batch: HeadBatch, specs: Sequence[HeadSpec], features: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    logits = _batch_logits(model, batch, specs, features=features)
    total = features.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    by_name = {s.name: s for s in specs}
    for name, head_logits in logits.items():
        valid = batch.targets[name] >= 0
        loss = task_loss(by_name[name], head_logits[valid].float(), batch.targets[name][valid])
        total = total + loss
        parts[name] = float(loss.detach())
    return total, parts


def _to_device(batch: HeadBatch, device: torch.device) -> HeadBatch:
    return HeadBatch(
        images=batch.images.to(device),
        mask=None if batch.mask is None else batch.mask.to(device),
        targets={k: v.to(device) for k, v in batch.targets.items()},
    )


@torch.no_grad()
def extract_features(
    encoder: OrthoEncoder,
    corpus: TensorCorpus,
    *,
    batch_images: int = 64,
    device: str = "cpu",
    precision: str = "auto",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[torch.Tensor]:
    """Frozen-encoder features of every sample: one float32 ``[K, 2D]`` tensor per sample."""
    from ortho_node.model.head_module import image_features

    target = resolve_device(device)
    was_training = encoder.training
    encoder.eval().to(target)
    flat = [(i, k) for i, s in enumerate(corpus) for k in range(s.num_slices)]
    out: list[list[torch.Tensor | None]] = [[None] * s.num_slices for s in corpus]
    for start in range(0, len(flat), batch_images):
        chunk = flat[start : start + batch_images]
        planes = torch.stack([corpus[i].planes[k] for i, k in chunk])
        images = to_model_input(planes, mean=mean, std=std).to(target)
        with autocast_context(precision, target):
            encoded = encoder(images)
            features = image_features(encoded.cls, encoded.patches)
        for (i, k), row in zip(chunk, features.float().cpu()):
            out[i][k] = row
    encoder.train(was_training)
    return [torch.stack(rows) for rows in out]  # type: ignore[arg-type]


def _feature_batch(
    features: Sequence[torch.Tensor], indices: Sequence[int], *, is_set: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not is_set:
        return torch.stack([features[i][0] for i in indices]), None
    longest = max(features[i].shape[0] for i in indices)
    width = features[indices[0]].shape[-1]
    padded = torch.zeros(len(indices), longest, width)
    mask = torch.zeros(len(indices), longest, dtype=torch.bool)
    for row, i in enumerate(indices):
        padded[row, : features[i].shape[0]] = features[i]
        mask[row, : features[i].shape[0]] = True
    return padded.flatten(0, 1), mask


def _targets(
    corpus: TensorCorpus, indices: Sequence[int], specs: Sequence[HeadSpec]
) -> dict[str, torch.Tensor]:
    return {
        s.name: torch.tensor(
            [corpus[i].labels[s.name] if sample_fits(s, corpus[i]) else -1 for i in indices],
            dtype=torch.long,
        )
        for s in specs
    }


def predict_heads(
    model: HeadedEncoder,
    corpus: TensorCorpus,
    *,
    features: Sequence[torch.Tensor] | None = None,
    batch_images: int = 64,
    device: str = "cpu",
    precision: str = "auto",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, HeadPredictions]:
    """Uncalibrated logits of every head on the samples of ``corpus`` that feed it."""
    if features is None:
        features = extract_features(
            model.encoder,
            corpus,
            batch_images=batch_images,
            device=device,
            precision=precision,
            mean=mean,
            std=std,
        )
    heads = model.heads.eval().cpu()
    result: dict[str, HeadPredictions] = {}
    with torch.no_grad():
        for name, head in heads.items():
            spec = head.spec
            indices = [i for i, s in enumerate(corpus) if sample_fits(spec, s)]
            if not indices:
                continue
            logits = []
            for start in range(0, len(indices), 256):
                chunk = indices[start : start + 256]
                feats, mask = _feature_batch(features, chunk, is_set=spec.scope.is_mri)
                if mask is None:
                    logits.append(head(feats))
                else:
                    logits.append(head.forward_sets(feats.view(*mask.shape, -1), mask))
            result[name] = HeadPredictions(
                spec=spec,
                logits=torch.cat(logits),
                targets=torch.tensor([corpus[i].labels[name] for i in indices]),
                patient_ids=tuple(corpus[i].patient_id for i in indices),
            )
    return result


def head_sample_counts(corpus: TensorCorpus | None, specs: Sequence[HeadSpec]) -> dict[str, int]:
    """Samples of ``corpus`` that feed each head (labelled for it, of its modality and view)."""
    return {
        spec.name: 0 if corpus is None else sum(sample_fits(spec, s) for s in corpus)
        for spec in specs
    }


def _validation_loss(predictions: Mapping[str, HeadPredictions]) -> float:
    return float(sum(float(task_loss(p.spec, p.logits, p.targets)) for p in predictions.values()))


def train_heads(
    encoder: OrthoEncoder,
    train: TensorCorpus,
    specs: Sequence[HeadSpec],
    *,
    config: FinetuneConfig,
    val: TensorCorpus | None = None,
    log: MetricsLog | None = None,
    show_progress: bool = True,
    precomputed: Sequence[torch.Tensor] | None = None,
) -> TrainedHeads:
    """Train heads (and, in full mode, the encoder) and calibrate them on ``val``.

    Parameters
    ----------
    encoder : OrthoEncoder
        Starting encoder; in full mode it is trained in place (pass a copy to keep it).
    train : TensorCorpus
        Training samples (radiographs and/or MR series with labels).
    specs : sequence of HeadSpec
        Heads to train (their pooling and kind as given).
    config : FinetuneConfig
        Settings.
    val : TensorCorpus, optional
        Validation samples: best-epoch selection and temperature calibration.
    log : MetricsLog, optional
        Receives ``finetune_epoch`` records.
    show_progress : bool, optional
        Draw a rich progress bar.
    precomputed : sequence of torch.Tensor, optional
        Linear mode: frozen features of ``train`` (one ``[K, 2D]`` per sample, as
        :func:`extract_features` returns) to reuse instead of recomputing.

    Raises
    ------
    ValueError
        If no training sample feeds any of the heads.
    """
    specs = _check_specs(specs)
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = HeadedEncoder(encoder, specs)
    image_idx = samples_for_heads(train, specs, mri=False)
    set_idx = samples_for_heads(train, specs, mri=True)
    if not image_idx and not set_idx:
        raise ValueError(f"no training sample is labelled for {[s.name for s in specs]}")
    train_counts = head_sample_counts(train, specs)
    if log is not None and not all(train_counts.values()):
        log.write("heads_unlabelled", heads=[n for n, c in train_counts.items() if not c])
    linear = config.mode == "linear"
    model.encoder.requires_grad_(not linear)
    train_features = None
    if linear:
        train_features = (
            list(precomputed)
            if precomputed is not None
            else extract_features(
                model.encoder,
                train,
                **config.encoding(),
            )
        )
        if len(train_features) != len(train):
            raise ValueError(
                f"precomputed holds {len(train_features)} features for {len(train)} samples"
            )
    val_features = None
    if linear and val is not None:
        val_features = extract_features(
            model.encoder,
            val,
            **config.encoding(),
        )
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config), betas=(0.9, 0.999))
    per_epoch = max(
        math.ceil(len(image_idx) / config.batch_size) if image_idx else 0,
        math.ceil(len(set_idx) / config.set_batch_size) if set_idx else 0,
    )
    total = per_epoch * config.epochs
    warmup = int(config.warmup_fraction * total)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, float]] = []
    step = 0
    with progress_bar(f"heads ({config.mode})", total, enabled=show_progress) as advance:
        for epoch in range(config.epochs):
            model.train()
            if linear:
                model.encoder.eval()
            order = generator_for(config.seed, epoch, 17)
            image_perm = [image_idx[i] for i in torch.randperm(len(image_idx), generator=order)]
            set_perm = [set_idx[i] for i in torch.randperm(len(set_idx), generator=order)]
            sums: dict[str, float] = {}
            for local in range(per_epoch):
                factor = _lr_factor(step, total, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                loss = torch.zeros((), device=device)
                parts: dict[str, float] = {}
                for perm, size, is_set in (
                    (image_perm, config.batch_size, False),
                    (set_perm, config.set_batch_size, True),
                ):
                    if not perm:
                        continue
                    start = (local * size) % len(perm)
                    chosen = (perm + perm)[start : start + min(size, len(perm))]
                    if train_features is not None:  # linear mode: cached frozen features
                        feats, mask = _feature_batch(train_features, chosen, is_set=is_set)
                        batch = HeadBatch(
                            images=feats, mask=mask, targets=_targets(train, chosen, specs)
                        )
                        batch = _to_device(batch, device)
                        features = batch.images
                    else:
                        generator = (
                            generator_for(config.seed, epoch, local, int(is_set))
                            if config.augment
                            else None
                        )
                        batch = make_batch(
                            [train[i] for i in chosen],
                            specs,
                            generator=generator,
                            mean=config.mean,
                            std=config.std,
                            max_slices=config.train_slices,
                        )
                        batch = _to_device(batch, device)
                        with autocast_context(config.precision, device):
                            features = model.features(batch.images)
                    with autocast_context(config.precision, device):
                        part_loss, part = _batch_loss(model, batch, specs, features.float())
                    loss = loss + part_loss
                    parts.update(part)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.grad_clip
                    )
                optimizer.step()
                step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                advance(1, epoch=epoch, loss=float(loss.detach()))
            record: dict[str, float] = {
                "epoch": epoch,
                **{f"train_{k}": v / per_epoch for k, v in sums.items()},
            }
            if val is not None:
                predictions = predict_heads(
                    model,
                    val,
                    features=val_features,
                    **config.encoding(),
                )
                model.to(device)
                val_loss = _validation_loss(predictions)
                record["val_loss"] = val_loss
                if config.keep_best and (best is None or val_loss < best[0]):
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    best = (val_loss, epoch, state)
            history.append(record)
            if log is not None:
                log.write("finetune_epoch", mode=config.mode, **record)
    best_epoch = None
    if best is not None:
        model.load_state_dict(best[2])
        best_epoch = best[1]
    model.cpu().eval()
    temperatures: dict[str, float] = {}
    if val is not None:
        predictions = predict_heads(
            model,
            val,
            features=val_features,
            device="cpu",
            precision="fp32",
            mean=config.mean,
            std=config.std,
        )
        for name, prediction in predictions.items():
            temperatures[name] = fit_temperature(
                prediction.spec, prediction.logits, prediction.targets
            )
        if log is not None:
            log.write("calibration", temperatures=temperatures, best_epoch=best_epoch)
    return TrainedHeads(
        model=model,
        temperatures=temperatures,
        history=history,
        best_epoch=best_epoch,
        train_samples=train_counts,
        val_samples=head_sample_counts(val, specs),
        # Validation data shapes the weights too (epoch choice, temperatures).
        synthetic=has_phantoms(train) or (val is not None and has_phantoms(val)),
    )


def copy_encoder(encoder: OrthoEncoder) -> OrthoEncoder:
    """A deep copy (full fine-tuning changes its encoder in place)."""
    return copy.deepcopy(encoder)


def heads_for(names: Iterable[str]) -> list[HeadSpec]:
    """Registered specs for head names."""
    from ortho_node.model.heads import head_spec

    return [head_spec(name) for name in names]
