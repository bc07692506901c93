"""Settings of self-supervised pretraining (the OrthoFoundation recipe, sizes configurable).

Defaults follow OrthoFoundation's released pretraining (DINO v1 self-distillation on the CLS
token; see ``shared/notes/orthofoundation.md``): 2 global crops of 224 px and 8 local crops of
98 px, a 3-layer DINO head (2048 hidden, 256 bottleneck) with a weight-normalised last layer of
65,536 prototypes, teacher temperature 0.04 (warm-up configurable), student temperature 0.1,
centre momentum 0.9, teacher EMA momentum 0.996 -> 1 on a cosine, AdamW, gradient clipping.
KoLeo and Gram anchoring (DINOv2 / DINOv3 ingredients, not in OrthoFoundation's code) are
options with weight 0.

Local crops of 98 px with 16 px patches: the patch embedding (a stride-16 convolution) only
sees the first 96 x 96 pixels of a 98 px crop, so crops are resized to ``local_crop_size`` and
then trimmed to a multiple of the patch size, which is exactly what the reference model saw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from training.precision import PRECISIONS

__all__ = ["PretrainConfig", "SCHEDULE_FIELDS"]

SCHEDULE_FIELDS = (
    "arch",
    "init",
    "layerscale_init",
    "global_crop_size",
    "local_crop_size",
    "n_global_crops",
    "n_local_crops",
    "global_crop_scale",
    "local_crop_scale",
    "out_dim",
    "head_hidden_dim",
    "head_bottleneck_dim",
    "norm_last_layer",
    "student_temp",
    "teacher_temp",
    "teacher_temp_start",
    "teacher_temp_warmup_steps",
    "center_momentum",
    "momentum_start",
    "momentum_end",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "weight_decay_end",
    "grad_clip",
    "freeze_last_layer_steps",
    "batch_size",
    "steps",
    "seed",
    "precision",
    "dino_weight",
    "koleo_weight",
    "gram_weight",
    "gram_refresh_steps",
)
"""Fields a resumed run must share with its checkpoint (they shape the trajectory)."""


def _positive_int(name: str, value: object, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _number(name: str, value: object, *, low: float, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")


def _scale(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be (min, max), got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {value!r}")
    return low, high


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (see the module docstring for the recipe behind the defaults).

    Parameters
    ----------
    arch : str
        Encoder architecture (``ortho_node.model.encoder.SUPPORTED_ARCHS``).
    init : str or None
        None: random initialisation. Otherwise a local file or folder: a Meta DINOv3 /
        OrthoFoundation / timm checkpoint (through the node's importer), a model bundle, or a
        pretraining checkpoint of this package (its teacher encoder).
    layerscale_init : float or None
        Random init only: start LayerScale at this gain instead of DINOv3's 1e-5
        (see :func:`training.encoders.set_layerscale`).
    global_crop_size, local_crop_size : int
        Crop sides in pixels (local crops are trimmed to a multiple of the patch size).
    n_global_crops, n_local_crops : int
        Crops per image; the teacher sees the global ones.
    global_crop_scale, local_crop_scale : (float, float)
        Area ranges of the random resized crops.
    out_dim, head_hidden_dim, head_bottleneck_dim : int
        DINO head: prototypes, MLP width, bottleneck.
    norm_last_layer : bool
        Keep the prototype layer's weight norm fixed at 1 (DINO default).
    student_temp, teacher_temp, teacher_temp_start, teacher_temp_warmup_steps :
        Softmax temperatures; the teacher's rises linearly from ``teacher_temp_start`` over the
        warm-up steps.
    center_momentum : float
        EMA momentum of the teacher centre.
    momentum_start, momentum_end : float
        Teacher EMA momentum, cosine from start to end over the run.
    lr, min_lr, warmup_steps : float, float, int
        AdamW learning rate: linear warm-up to ``lr``, cosine decay to ``min_lr``.
    weight_decay, weight_decay_end : float
        Cosine weight-decay schedule (DINO: 0.04 -> 0.4).
    grad_clip : float
        Max gradient norm of the student (0 disables).
    freeze_last_layer_steps : int
        Steps during which the prototype layer gets no update (DINO stabiliser).
    batch_size : int
        Global batch (images per step over all processes; must divide by the world size).
    steps : int
        Total optimisation steps (schedules span these).
    seed : int
        Initialisation, data order and augmentation seed.
    precision, device : str
        See :mod:`training.precision`.
    dino_weight, koleo_weight, gram_weight : float
        Loss weights; KoLeo on the student's global CLS tokens, Gram anchoring on its global
        patch tokens.
    gram_refresh_steps : int
        0: the Gram teacher is the initial encoder, fixed; N: it is refreshed from the EMA
        teacher every N steps.
    num_workers : int
        DataLoader worker processes building crops.
    checkpoint_every, log_every : int
        Checkpoint and metrics-log periods in steps (the last step is always checkpointed).
    """

    arch: str = "vit_large_patch16_dinov3"
    init: str | None = None
    layerscale_init: float | None = None
    global_crop_size: int = 224
    local_crop_size: int = 98
    n_global_crops: int = 2
    n_local_crops: int = 8
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    teacher_temp_start: float = 0.04
    teacher_temp_warmup_steps: int = 0
    center_momentum: float = 0.9
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    grad_clip: float = 3.0
    freeze_last_layer_steps: int = 0
    batch_size: int = 24
    steps: int = 100_000
    seed: int = 12358
    precision: str = "auto"
    device: str = "auto"
    dino_weight: float = 1.0
    koleo_weight: float = 0.0
    gram_weight: float = 0.0
    gram_refresh_steps: int = 0
    num_workers: int = 0
    checkpoint_every: int = 1000
    log_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise TypeError(f"arch must be a non-empty str, got {self.arch!r}")
        if self.init is not None and not isinstance(self.init, str):
            raise TypeError(f"init must be a path string or None, got {type(self.init).__name__}")
        if self.layerscale_init is not None:
            _number("layerscale_init", self.layerscale_init, low=1e-8, high=10.0)
        for name in ("global_crop_size", "local_crop_size"):
            _positive_int(name, getattr(self, name), minimum=16)
        _positive_int("n_global_crops", self.n_global_crops, minimum=2)
        _positive_int("n_local_crops", self.n_local_crops, minimum=0)
        object.__setattr__(
            self, "global_crop_scale", _scale("global_crop_scale", self.global_crop_scale)
        )
        object.__setattr__(
            self, "local_crop_scale", _scale("local_crop_scale", self.local_crop_scale)
        )
        for name in (
            "out_dim",
            "head_hidden_dim",
            "head_bottleneck_dim",
            "batch_size",
            "steps",
            "checkpoint_every",
            "log_every",
        ):
            _positive_int(name, getattr(self, name))
        for name in (
            "teacher_temp_warmup_steps",
            "warmup_steps",
            "freeze_last_layer_steps",
            "gram_refresh_steps",
            "num_workers",
            "seed",
        ):
            _positive_int(name, getattr(self, name), minimum=0)
        for name in ("student_temp", "teacher_temp", "teacher_temp_start"):
            _number(name, getattr(self, name), low=1e-4, high=10.0)
        for name in ("center_momentum", "momentum_start", "momentum_end"):
            _number(name, getattr(self, name), low=0.0, high=1.0)
        for name in (
            "lr",
            "min_lr",
            "weight_decay",
            "weight_decay_end",
            "grad_clip",
            "dino_weight",
            "koleo_weight",
            "gram_weight",
        ):
            _number(name, getattr(self, name), low=0.0)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        """Inverse of :meth:`to_dict` (unknown keys raise ``TypeError``)."""
        fields = dict(data)
        for name in ("global_crop_scale", "local_crop_scale"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)

    def schedule_differences(self, other: "PretrainConfig") -> list[str]:
        """Names of :data:`SCHEDULE_FIELDS` whose values differ from ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in SCHEDULE_FIELDS if mine[name] != theirs[name]]

    @classmethod
    def for_small_images(
        cls,
        *,
        arch: str,
        image_size: int,
        steps: int,
        batch_size: int,
        seed: int = 0,
        **overrides: Any,
    ) -> "PretrainConfig":
        """The recipe scaled to small images and small CPU runs (tests, the demo model).

        Global crops at ``image_size``; local crops at the recipe's 98/224 ratio of it, rounded
        up to a patch multiple; the same 2 + 8 crops; a smaller DINO head (4096 prototypes, 512
        hidden, 128 bottleneck). Three changes keep a minutes-long CPU run from the uniform
        collapse (DINO loss stuck at ``log(out_dim)``) that the recipe's settings fell into on
        the phantoms: KoLeo at 0.1 (DINOv2's weight) spreads the CLS embeddings; LayerScale
        starts at 0.1 instead of 1e-5, so a random encoder's features depend on the image at
        all; teacher momentum starts at 0.99 (the teacher follows within ~100 steps). Learning
        rate 2.5e-4 with 10 % warm-up; teacher temperature 0.04 -> 0.06 over the first quarter.
        """
        local = max(16, int(math.ceil(image_size * 98 / 224 / 16)) * 16)
        values: dict[str, Any] = dict(
            arch=arch,
            global_crop_size=image_size,
            local_crop_size=local,
            out_dim=4096,
            head_hidden_dim=512,
            head_bottleneck_dim=128,
            lr=2.5e-4,
            min_lr=1e-5,
            warmup_steps=max(1, steps // 10),
            teacher_temp_start=0.04,
            teacher_temp=0.06,
            teacher_temp_warmup_steps=max(1, steps // 4),
            momentum_start=0.99,
            koleo_weight=0.1,
            layerscale_init=0.1,
            batch_size=batch_size,
            steps=steps,
            seed=seed,
            device="auto",
            checkpoint_every=max(1, steps // 4),
        )
        values.update(overrides)
        return cls(**values)
