"""Helpers for the model tests (no tests here): fixture-based and micro checkpoints.

``reference_meta_state`` follows ``shared/fixtures/dinov3_reference.json`` literally: one
``torch.Generator().manual_seed(1234)`` whose successive draws fill the parameters in sorted key
order (the golden outputs were produced with one shared generator; a fresh generator per draw
gives different weights and does not reproduce them).

``meta_checkpoint_from_timm`` writes a timm Eva state dict under Meta DINOv3 key names, the way
the official ``dinov3`` code names them (``storage_tokens``, ``ls1.gamma``, ``attn.qkv.bias`` with a
``bias_mask`` zeroing the k third, ``rope_embed.periods``, ``mask_token``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

FIXTURE = Path("/work/shared/fixtures/dinov3_reference.json")
MICRO = "ortho_vit_micro_patch16_dinov3"
MICRO_QKVB = "ortho_vit_micro_patch16_dinov3_qkvb"
TOLERANCE = 1e-4


@lru_cache(maxsize=1)
def reference_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text("utf-8"))


def _fill(key: str, draw: torch.Tensor) -> torch.Tensor:
    if key.endswith(".gamma") or ("norm" in key and key.endswith(".weight")):
        return 1.0 + 0.1 * draw
    if key == "patch_embed.proj.weight":
        return 0.1 * draw
    return 0.02 * draw


def reference_meta_state(model: str) -> dict[str, torch.Tensor]:
    """The official-layout state dict of fixture model ``model`` (``vits16`` / ``vitl16``)."""
    entry = reference_fixture()["models"][model]
    generator = torch.Generator().manual_seed(1234)
    state: dict[str, torch.Tensor] = {}
    for item in sorted(entry["manifest"], key=lambda item: item["key"]):
        key, shape = item["key"], item["shape"]
        if item["param"]:
            state[key] = _fill(key, torch.randn(shape, generator=generator, dtype=torch.float32))
        elif key in entry["buffers"]:
            state[key] = torch.tensor(entry["buffers"][key], dtype=torch.float32)
        elif key.endswith("qkv.bias_mask"):
            third = shape[0] // 3  # bias_mask_note: 1 for q and v, 0 for k
            state[key] = torch.cat([torch.ones(third), torch.zeros(third), torch.ones(third)])
        else:
            raise AssertionError(f"fixture buffer {key} has no rule")
    return state


def reference_input() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(99))


def golden_differences(model: str, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference of each golden quantity (CLS, patch tokens, L2 norms)."""
    golden = reference_fixture()["models"][model]["golden"]
    picked = patches[:, [0, 97, 195], :8]
    return {
        "cls_first8": (cls[:, :8] - torch.tensor(golden["cls_first8"])).abs().max().item(),
        "cls_l2": (cls.norm(dim=-1) - torch.tensor(golden["cls_l2"])).abs().max().item(),
        "patch_tokens": (picked - torch.tensor(golden["patch_tokens_at_0_97_195_first8"]))
        .abs()
        .max()
        .item(),
        "patch_l2_mean": abs(patches.norm(dim=-1).mean().item() - golden["patch_l2_mean"]),
    }


def meta_checkpoint_from_timm(
    state: dict[str, torch.Tensor],
    *,
    periods: torch.Tensor,
    k_bias: float = 0.0,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Rename a timm DINOv3 Eva state dict to Meta DINOv3 names (test data only).

    ``k_bias`` fills the k third of ``qkv.bias`` (masked by ``bias_mask``, as in Meta's code).
    """
    out: dict[str, torch.Tensor] = {}
    swiglu = any(".mlp.fc1_g." in key for key in state)
    for key, value in state.items():
        if key.endswith(".attn.v_bias"):
            continue
        if key.endswith(".attn.q_bias"):
            stem = key[: -len("q_bias")]
            v_bias = state[stem + "v_bias"]
            out[prefix + stem + "qkv.bias"] = torch.cat([value, torch.full_like(value, k_bias), v_bias])
            out[prefix + stem + "qkv.bias_mask"] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)]
            )
            continue
        new = "storage_tokens" if key == "reg_token" else key
        new = new.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        if swiglu:
            new = new.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
            new = new.replace(".mlp.fc2.", ".mlp.w3.")
        out[prefix + new] = value
    out[prefix + "rope_embed.periods"] = periods
    out[prefix + "mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out


def randomised_micro_vit_state(arch: str = MICRO_QKVB, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A micro encoder's timm state with non-trivial values everywhere (biases included)."""
    from ortho_node.model.encoder import build_encoder

    torch.manual_seed(seed)
    encoder = build_encoder(arch)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in encoder.vit.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        state[key] = 1.0 + 0.1 * noise if key.endswith((".gamma_1", ".gamma_2")) else 0.05 * noise
        if "norm" in key and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * noise
    return state


def bf16_rounded(periods: torch.Tensor) -> torch.Tensor:
    """Periods as Meta/OrthoFoundation checkpoints store them (bf16-rounded, then float32)."""
    return periods.to(torch.bfloat16).to(torch.float32)
