"""The pretraining loop: DINO student/teacher over multi-crop views, in one process or DDP.

Per step: the rank's share of the global batch (:mod:`training.pretrain.multicrop`); the
teacher encodes the global crops, the student all crops; loss = ``dino_weight`` x DINO loss
(+ KoLeo on the student's global CLS tokens, + Gram anchoring on its global patch tokens, when
weighted); AdamW step with the scheduled lr and weight decay, gradient clipping, an optional
frozen prototype layer at the start; then the teacher EMA update with the scheduled momentum
and the centre update (averaged over processes).

Under ``torchrun`` the student is wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on
CUDA) and every process builds identical models from the same seed. Each process takes
``batch_size / world_size`` images of the same global batch, DDP averages the gradients (the
mean of per-process means over equal shares is the global mean), the centre uses the global
teacher mean, and the teacher EMA therefore stays identical everywhere: the run follows the
single-process trajectory up to floating-point summation order.

Checkpoints (:mod:`training.pretrain.state`) go to ``out_dir/checkpoint-last.pt`` (rank 0);
``resume=True`` continues from there, refusing a checkpoint whose schedule-shaping settings
differ from the config. Metrics go to a JSON-lines log (rank 0), progress to a rich bar.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ortho_node.model.encoder import OrthoEncoder
from training.data.corpus import TensorCorpus
from training.encoders import load_encoder
from training.logs import MetricsLog, progress_bar
from training.precision import autocast_context, resolve_device
from training.pretrain.config import PretrainConfig
from training.pretrain.dino import DINOHead, DINOLoss, MultiCropModel
from training.pretrain.distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from training.pretrain.multicrop import MultiCropAugment, MultiCropSteps, StreamingMultiCrop
from training.pretrain.regularisers import gram_loss, koleo_loss
from training.pretrain.schedules import schedule_at
from training.pretrain.state import (
    LAST_CHECKPOINT,
    capture_rng,
    load_state,
    restore_rng,
    save_state,
)

__all__ = ["PretrainResult", "run_pretraining"]


@dataclass
class PretrainResult:
    """What a pretraining run leaves behind."""

    student: MultiCropModel
    teacher: MultiCropModel
    config: PretrainConfig
    step: int
    losses: list[float] = field(default_factory=list)
    """Total loss of each step run by this call (global mean over processes)."""
    dino_losses: list[float] = field(default_factory=list)
    """The DINO part of :attr:`losses`, per step."""
    checkpoint: Path | None = None

    def teacher_encoder(self) -> OrthoEncoder:
        """A trainable copy of the teacher's encoder (the one DINO evaluates and transfers)."""
        return copy.deepcopy(self.teacher.encoder).cpu().train().requires_grad_(True)


def _build_models(config: PretrainConfig) -> tuple[MultiCropModel, MultiCropModel]:
    torch.manual_seed(config.seed)
    encoder = load_encoder(
        config.init,
        arch=config.arch,
        img_size=config.global_crop_size,
        layerscale_init=config.layerscale_init if config.init is None else None,
    )
    head = DINOHead(
        encoder.embed_dim,
        config.out_dim,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
        norm_last_layer=config.norm_last_layer,
    )
    student = MultiCropModel(encoder, head)
    # DINO starts the teacher as a copy of the student (OrthoFoundation's code draws a second
    # random head instead; the EMA makes the two equivalent after a while).
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student, teacher


def _optimizer(student: MultiCropModel) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in student.named_parameters():
        if not parameter.requires_grad:
            continue
        # Biases, norms, tokens and the weight-norm magnitudes are not decayed (DINO's rule).
        (no_decay if parameter.ndim <= 1 or "token" in name else decay).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": decay, "decay": True},
            {"params": no_decay, "decay": False, "weight_decay": 0.0},
        ],
        lr=0.0,
    )


def _batches(
    data: TensorCorpus | str | os.PathLike[str],
    augment: MultiCropAugment,
    config: PretrainConfig,
    env: DistEnv,
    start_step: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(data, TensorCorpus):
        dataset = MultiCropSteps(
            data,
            augment,
            batch_size=config.batch_size,
            seed=config.seed,
            total_steps=config.steps,
            rank=env.rank,
            world_size=env.world_size,
        )
        loader = DataLoader(
            dataset,
            batch_size=None,
            sampler=range(start_step, config.steps),
            num_workers=config.num_workers,
        )
    else:
        stream = StreamingMultiCrop(
            data,
            augment,
            batch_size=config.batch_size,
            seed=config.seed,
            rank=env.rank,
            world_size=env.world_size,
            start_step=start_step,
        )
        loader = DataLoader(stream, batch_size=None, num_workers=config.num_workers)
    return iter(loader)


def _ema(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    with torch.no_grad():
        for source, target in zip(student.parameters(), teacher.parameters()):
            target.mul_(momentum).add_(source.detach(), alpha=1.0 - momentum)


def run_pretraining(
    data: TensorCorpus | str | os.PathLike[str],
    *,
    config: PretrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    stop_at_step: int | None = None,
    log: MetricsLog | None = None,
    show_progress: bool = True,
) -> PretrainResult:
    """Pretrain an encoder with DINO self-distillation.

    Parameters
    ----------
    data : TensorCorpus or path-like
        Images in memory (exact, world-size-independent batches) or a shard folder (streamed).
    config : PretrainConfig
        Recipe and run settings.
    out_dir : path-like, optional
        Checkpoints go here (none are written when omitted).
    resume : bool, optional
        Continue from ``out_dir/checkpoint-last.pt`` when it exists (default True).
    stop_at_step : int, optional
        Stop after this many steps in total (a checkpoint is written there), e.g. to split a
        run; schedules still span ``config.steps``.
    log : MetricsLog, optional
        Receives ``pretrain_step`` records (rank 0).
    show_progress : bool, optional
        Draw a progress bar (rank 0).

    Raises
    ------
    ValueError
        For a checkpoint made with other schedule settings, or an unusable batch size.
    """
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    env = init_distributed(resolve_device(config.device))
    device = env.device
    log = log if (log is not None and env.is_main) else MetricsLog(None)
    student, teacher = _build_models(config)
    gram_teacher = (
        copy.deepcopy(student.encoder).requires_grad_(False) if config.gram_weight > 0 else None
    )
    dino = DINOLoss(
        config.out_dim,
        n_global_crops=config.n_global_crops,
        student_temp=config.student_temp,
        center_momentum=config.center_momentum,
    )
    optimizer = _optimizer(student)
    start_step = 0
    checkpoint_path = Path(out_dir) / LAST_CHECKPOINT if out_dir is not None else None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = load_state(checkpoint_path)
        saved = PretrainConfig.from_dict(state["config"])
        differences = config.schedule_differences(saved)
        if differences:
            raise ValueError(
                f"{checkpoint_path} was made with different settings ({', '.join(differences)}); "
                "resume with the same config or start a new output folder"
            )
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        if gram_teacher is not None and state.get("gram_teacher") is not None:
            gram_teacher.load_state_dict(state["gram_teacher"])
        optimizer.load_state_dict(state["optimizer"])
        dino.center.copy_(state["center"])
        restore_rng(state["rng"])
        start_step = int(state["step"])
        log.write("pretrain_resume", step=start_step, checkpoint=checkpoint_path.name)
    for module in (student, teacher, dino) + ((gram_teacher,) if gram_teacher is not None else ()):
        module.to(device)
    teacher.eval()
    if gram_teacher is not None:
        gram_teacher.eval()
    # Optimizer state tensors follow their parameters' device after a CPU-side load.
    for values in optimizer.state.values():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and key != "step":
                values[key] = value.to(device)
    trained: nn.Module = student
    if env.distributed:
        trained = DistributedDataParallel(
            student, device_ids=[env.local_rank] if device.type == "cuda" else None
        )
    augment = MultiCropAugment.from_config(config, patch_size=student.encoder.patch_size)
    end_step = config.steps if stop_at_step is None else min(config.steps, stop_at_step)
    batches = _batches(data, augment, config, env, start_step)
    losses: list[float] = []
    dino_losses: list[float] = []
    student.train()
    last_saved: Path | None = None
    with progress_bar(
        "pretrain", end_step - start_step, enabled=show_progress and env.is_main
    ) as advance:
        for step in range(start_step, end_step):
            started = time.perf_counter()
            global_crops, local_crops = next(batches)
            global_crops = global_crops.to(device, non_blocking=True)
            local_crops = (
                local_crops.to(device, non_blocking=True) if local_crops is not None else None
            )
            values = schedule_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = values.lr
                if group["decay"]:
                    group["weight_decay"] = values.weight_decay
            with autocast_context(config.precision, device):
                with torch.no_grad():
                    teacher_out = teacher(global_crops)
                student_out = trained(global_crops, local_crops)
                dino_loss = dino(
                    student_out.logits, teacher_out.logits, teacher_temp=values.teacher_temp
                )
                total = config.dino_weight * dino_loss
                parts = {"dino": dino_loss.detach()}
                if config.koleo_weight > 0:
                    koleo = sum(
                        koleo_loss(chunk)
                        for chunk in student_out.global_cls.chunk(config.n_global_crops)
                    )
                    total = total + config.koleo_weight * koleo
                    parts["koleo"] = koleo.detach()
                if gram_teacher is not None:
                    with torch.no_grad():
                        anchor = gram_teacher(global_crops).patches
                    gram = gram_loss(student_out.global_patches, anchor)
                    total = total + config.gram_weight * gram
                    parts["gram"] = gram.detach()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = (
                nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
                if config.grad_clip
                else torch.tensor(float("nan"))
            )
            if step < config.freeze_last_layer_steps:
                for parameter in student.head.last_layer.parameters():
                    parameter.grad = None
            optimizer.step()
            _ema(student, teacher, values.momentum)
            dino.update_center(teacher_out.logits)
            if (
                gram_teacher is not None
                and config.gram_refresh_steps
                and (step + 1) % config.gram_refresh_steps == 0
            ):
                gram_teacher.load_state_dict(teacher.encoder.state_dict())
            # Collectives run on every rank (rank 0 alone would wait for the others forever).
            loss_value = float(all_reduce_mean(total.float()))
            part_values = {k: float(all_reduce_mean(v.float())) for k, v in parts.items()}
            losses.append(loss_value)
            dino_losses.append(part_values["dino"])
            elapsed = time.perf_counter() - started
            if env.is_main and (step % config.log_every == 0 or step + 1 == end_step):
                log.write(
                    "pretrain_step",
                    step=step + 1,
                    loss=loss_value,
                    **part_values,
                    lr=values.lr,
                    weight_decay=values.weight_decay,
                    momentum=values.momentum,
                    teacher_temp=values.teacher_temp,
                    grad_norm=float(grad_norm),
                    images_per_s=config.batch_size / elapsed,
                    world_size=env.world_size,
                )
            done = step + 1
            if checkpoint_path is not None and (
                done % config.checkpoint_every == 0 or done == end_step
            ):
                if env.is_main:
                    last_saved = save_state(
                        checkpoint_path,
                        {
                            "config": config.to_dict(),
                            "step": done,
                            "student": {
                                k: v.detach().cpu() for k, v in student.state_dict().items()
                            },
                            "teacher": {
                                k: v.detach().cpu() for k, v in teacher.state_dict().items()
                            },
                            "gram_teacher": (
                                {k: v.detach().cpu() for k, v in gram_teacher.state_dict().items()}
                                if gram_teacher is not None
                                else None
                            ),
                            "optimizer": optimizer.state_dict(),
                            "center": dino.center.detach().cpu(),
                            "rng": capture_rng(),
                            "data": {
                                "step": done,
                                "images_seen": done * config.batch_size,
                                "epoch_of_next_step": (
                                    done // (data.num_images // config.batch_size)
                                    if isinstance(data, TensorCorpus)
                                    else None
                                ),
                            },
                        },
                    )
                barrier()
            advance(1, loss=loss_value)
    return PretrainResult(
        student=student.cpu(),
        teacher=teacher.cpu(),
        config=config,
        step=end_step,
        losses=losses,
        dino_losses=dino_losses,
        checkpoint=last_saved,
    )
