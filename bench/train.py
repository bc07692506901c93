"""Pretraining throughput benchmark: images/s and achieved GFLOP/s against the measured matmul peak.

CPU (always): the fp32 and bf16 matmul peak of this machine (square matmuls, best of several
sizes), then DINO pretraining steps of ViT-S/16 (``vit_small_patch16_dinov3``) with the
OrthoFoundation multi-crop (2 x 224 px global + 8 x 98 px local crops; teacher on the globals,
student on all, 65,536 prototypes), fp32 (and bf16 autocast with ``--cpu-bf16``).
CUDA (when available): the bf16 / fp32 matmul peak of the GPU, then the same step for ViT-L/16
(``vit_large_patch16_dinov3``) in bf16 autocast.

FLOPs per step are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention, forward and backward, teacher included); achieved GFLOP/s =
counted FLOPs / measured step time. Everything runs on synthetic tensors (no data loading), so
the figures are the model's compute rate, not the input pipeline's.

Usage::

    bench/train                      # CPU figures (and GPU figures if CUDA is present)
    bench/train --gpu-only --gpu-batch 64 --steps 5    # the short GPU check
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.pretrain.config import PretrainConfig  # noqa: E402
from training.pretrain.dino import DINOHead, DINOLoss, MultiCropModel  # noqa: E402
from ortho_node.model.encoder import build_encoder  # noqa: E402


def matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], seconds: float
) -> float:
    """Best GFLOP/s over square matmuls of the given sizes."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        _sync(device)
        elapsed = time.perf_counter() - started
        best = max(best, 2 * n**3 * count / elapsed / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(arch: str, batch: int, device: torch.device, precision: str):
    """A closure running one DINO pretraining step on synthetic crops."""
    config = PretrainConfig(arch=arch)  # recipe sizes: 224 / 98 px, 2 + 8 crops, 65,536 prototypes
    encoder = build_encoder(arch, img_size=config.global_crop_size).to(device)
    head = DINOHead(
        encoder.embed_dim,
        config.out_dim,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
    ).to(device)
    student = MultiCropModel(encoder, head).train()
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    loss_fn = DINOLoss(config.out_dim, n_global_crops=2, student_temp=0.1, center_momentum=0.9).to(
        device
    )
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    local = config.local_crop_size - config.local_crop_size % 16  # what the patch conv sees
    globals_ = torch.randn(
        2 * batch, 3, config.global_crop_size, config.global_crop_size, device=device
    )
    locals_ = torch.randn(8 * batch, 3, local, local, device=device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(device_type=device.type, enabled=False)
    )

    def step() -> None:
        with autocast:
            with torch.no_grad():
                teacher_out = teacher(globals_)
            student_out = student(globals_, locals_)
            loss = loss_fn(student_out.logits, teacher_out.logits, teacher_temp=0.04)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        optimizer.step()
        with torch.no_grad():
            for s, t in zip(student.parameters(), teacher.parameters()):
                t.mul_(0.996).add_(s.detach(), alpha=0.004)
        loss_fn.update_center(teacher_out.logits)

    return step


def measure_step(
    arch: str, batch: int, device: torch.device, precision: str, steps: int
) -> tuple[float, float]:
    """(images/s, achieved GFLOP/s) of the pretraining step."""
    from torch.utils.flop_counter import FlopCounterMode

    step = build_step(arch, batch, device, precision)
    step()  # warm-up (allocations, kernels)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    return batch / seconds, flops / seconds / 1e9


def report(label: str, images_per_s: float, gflops: float, peak: float) -> None:
    print(
        f"  {label:<38} {images_per_s:8.2f} images/s  {gflops:9.1f} GFLOP/s  "
        f"({100 * gflops / peak:5.1f} % of the measured matmul peak {peak:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-batch", type=int, default=4, help="Images per step on CPU (ViT-S).")
    parser.add_argument(
        "--gpu-batch", type=int, default=32, help="Images per step on CUDA (ViT-L)."
    )
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per configuration.")
    parser.add_argument(
        "--cpu-bf16", action="store_true", help="Also time ViT-S with bf16 autocast on CPU."
    )
    parser.add_argument("--gpu-only", action="store_true", help="Skip the CPU figures.")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.gpu_only:
        cpu = torch.device("cpu")
        peak32 = matmul_peak(cpu, torch.float32, (512, 1024, 2048), 1.0)
        peak16 = matmul_peak(cpu, torch.bfloat16, (512, 1024), 1.0)
        print(f"CPU matmul peak: fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
        print("CPU DINO pretraining step, ViT-S/16, 2x224 + 8x96 (98) crops, 65,536 prototypes:")
        images, gflops = measure_step(
            "vit_small_patch16_dinov3", args.cpu_batch, cpu, "fp32", args.steps
        )
        report(f"fp32, batch {args.cpu_batch}", images, gflops, peak32)
        if args.cpu_bf16:
            images, gflops = measure_step(
                "vit_small_patch16_dinov3", args.cpu_batch, cpu, "bf16", args.steps
            )
            report(f"bf16 autocast, batch {args.cpu_batch}", images, gflops, peak16)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(gpu)}")
        peak_bf16 = matmul_peak(gpu, torch.bfloat16, (4096, 8192), 1.0)
        peak_fp32 = matmul_peak(gpu, torch.float32, (4096, 8192), 1.0)
        print(
            f"GPU matmul peak: bf16 {peak_bf16:.0f} GFLOP/s, fp32 (TF32 off) {peak_fp32:.0f} GFLOP/s"
        )
        print("GPU DINO pretraining step, ViT-L/16, bf16 autocast, 2x224 + 8x96 (98) crops:")
        images, gflops = measure_step(
            "vit_large_patch16_dinov3", args.gpu_batch, gpu, "bf16", args.steps
        )
        report(f"bf16, batch {args.gpu_batch}", images, gflops, peak_bf16)
    elif args.gpu_only:
        print("no CUDA device: nothing to measure with --gpu-only")


if __name__ == "__main__":
    main()
