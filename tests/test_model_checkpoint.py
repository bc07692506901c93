"""Checkpoint import: unwrapping, prefixes, Meta -> timm keys, q/k/v bias, periods, mismatches."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ortho_node.model.checkpoint import (
    CheckpointError,
    FilteredCheckpoint,
    compare_state_shapes,
    convert_dinov3_keys,
    filter_checkpoint,
    fit_to_arch,
    infer_arch,
    load_checkpoint_file,
    load_encoder_checkpoint,
    strip_prefixes,
    unwrap_state_dict,
)
from ortho_node.model.encoder import arch_state_shapes, build_encoder
from tests.test_model_support import (
    MICRO,
    MICRO_QKVB,
    bf16_rounded,
    meta_checkpoint_from_timm,
    randomised_micro_vit_state,
)

T = torch.ones(2)


def _zeros_like_arch(arch: str) -> dict[str, torch.Tensor]:
    # Expanded zero scalars: the right shapes at no memory cost, enough for key/shape logic.
    return {key: torch.zeros(()).expand(shape) for key, shape in arch_state_shapes(arch).items()}


# --------------------------------------------------------------------------- unwrapping


def test_unwrap_finds_nested_state_and_prefers_teacher() -> None:
    teacher, student = {"a": torch.zeros(1)}, {"a": torch.ones(1)}
    state, path = unwrap_state_dict({"epoch": 3, "model": {"student": student, "teacher": teacher}})
    assert path == ("model", "teacher")
    assert torch.equal(state["a"], teacher["a"])


def test_unwrap_returns_plain_state_untouched() -> None:
    state, path = unwrap_state_dict({"cls_token": T})
    assert path == () and list(state) == ["cls_token"]


def test_unwrap_without_tensors_names_the_keys_it_saw() -> None:
    with pytest.raises(CheckpointError, match=r"optimizer.*teacher") as info:
        unwrap_state_dict({"optimizer": {"lr": 0.1}, "epoch": 1})
    assert "epoch" in str(info.value)
    with pytest.raises(TypeError, match="checkpoint must be a mapping"):
        unwrap_state_dict([T])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    "key", ["module.backbone.cls_token", "backbone.module.cls_token", "backbone.cls_token",
            "module.cls_token", "_orig_mod.module.backbone.cls_token", "cls_token"],
)
def test_wrapper_prefixes_are_stripped_in_any_order(key: str) -> None:
    state, _, discarded = strip_prefixes({key: T})
    assert list(state) == ["cls_token"] and discarded == ()


def test_dino_wrapper_keeps_backbone_and_task_heads_drops_dino_head() -> None:
    state, stripped, discarded = strip_prefixes({
        "module.backbone.cls_token": T,
        "module.head.mlp.0.weight": T,
        "heads.acl.norm.weight": T,
    })
    assert set(state) == {"cls_token", "heads.acl.norm.weight"}
    assert discarded == ("module.head.mlp.0.weight",)
    assert set(stripped) == {"module.", "backbone."}


def test_keys_colliding_after_stripping_are_refused() -> None:
    with pytest.raises(CheckpointError, match="both become 'cls_token'"):
        strip_prefixes({"module.cls_token": T, "cls_token": T})


# --------------------------------------------------------------------------- Meta names


def test_meta_names_become_timm_names() -> None:
    periods = torch.tensor([1.0, 1.3359375])
    state, found_periods, dropped = convert_dinov3_keys({
        "storage_tokens": torch.zeros(1, 4, 8),
        "blocks.0.ls1.gamma": T,
        "blocks.0.ls2.gamma": T,
        "blocks.0.mlp.w1.weight": T,
        "blocks.0.mlp.w2.weight": T,
        "blocks.0.mlp.w3.bias": T,
        "blocks.0.mlp.fc1.weight": T,
        "rope_embed.periods": periods,
        "mask_token": T,
        "local_cls_norm.weight": T,
    })
    assert set(state) == {
        "reg_token", "blocks.0.gamma_1", "blocks.0.gamma_2", "blocks.0.mlp.fc1_g.weight",
        "blocks.0.mlp.fc1_x.weight", "blocks.0.mlp.fc2.bias", "blocks.0.mlp.fc1.weight",
    }
    assert torch.equal(found_periods, periods)
    assert set(dropped) == {"mask_token", "local_cls_norm.weight"}


def test_qkv_bias_is_masked_and_split_into_q_and_v() -> None:
    q, k, v = torch.full((4,), 1.0), torch.full((4,), 7.0), torch.full((4,), 3.0)
    mask = torch.cat([torch.ones(4), torch.zeros(4), torch.ones(4)])
    state, _, _ = convert_dinov3_keys({
        "blocks.2.attn.qkv.bias": torch.cat([q, k, v]),
        "blocks.2.attn.qkv.bias_mask": mask,
    })
    assert set(state) == {"blocks.2.attn.q_bias", "blocks.2.attn.v_bias"}
    assert torch.equal(state["blocks.2.attn.q_bias"], q)
    assert torch.equal(state["blocks.2.attn.v_bias"], v)


def test_active_k_bias_is_refused() -> None:
    with pytest.raises(CheckpointError, match="non-zero key .k. bias"):
        convert_dinov3_keys({"blocks.0.attn.qkv.bias": torch.arange(12.0)})


def test_filter_reports_what_it_did() -> None:
    checkpoint = {"teacher": {"backbone.storage_tokens": torch.zeros(1, 4, 8),
                              "backbone.rope_embed.periods": torch.ones(2),
                              "backbone.heads.kl_grade.norm.weight": T}}
    filtered = filter_checkpoint(checkpoint)
    assert filtered.source_format == "dinov3"
    assert filtered.container == ("teacher",)
    assert filtered.stripped_prefixes == ("backbone.",)
    assert list(filtered.state) == ["reg_token"]
    assert list(filtered.head_state) == ["kl_grade.norm.weight"]
    assert filtered.rope_periods is not None


def test_timm_state_dict_passes_through_unchanged() -> None:
    state = _zeros_like_arch(MICRO)
    filtered = filter_checkpoint(state)
    assert filtered.source_format == "timm" and filtered.rope_periods is None
    assert set(filtered.state) == set(state)


# --------------------------------------------------------------------------- q/v bias and arch


def _with_qv_bias(arch: str, value: float) -> FilteredCheckpoint:
    state = _zeros_like_arch(arch)
    for key in [k for k in state if k.endswith(".attn.qkv.weight")]:
        stem = key[: -len("qkv.weight")]
        width = state[key].shape[1]
        state[stem + "q_bias"] = torch.full((width,), value)
        state[stem + "v_bias"] = torch.full((width,), value)
    return FilteredCheckpoint(state=state, rope_periods=None)


def test_zero_qv_bias_loads_into_the_plain_variant() -> None:
    filtered = _with_qv_bias(MICRO, 0.0)
    assert infer_arch(filtered) == MICRO
    assert not any(k.endswith("q_bias") for k in fit_to_arch(filtered, MICRO))


def test_nonzero_qv_bias_requires_the_qkvb_variant() -> None:
    filtered = _with_qv_bias(MICRO, 0.5)
    assert infer_arch(filtered) == MICRO_QKVB
    with pytest.raises(CheckpointError, match=f"use {MICRO_QKVB}"):
        fit_to_arch(filtered, MICRO)


def test_bias_free_checkpoint_gets_exact_zero_biases_in_a_qkvb_encoder() -> None:
    state = fit_to_arch(FilteredCheckpoint(state=_zeros_like_arch(MICRO), rope_periods=None), MICRO_QKVB)
    biases = [v for k, v in state.items() if k.endswith(("q_bias", "v_bias"))]
    assert biases and all(bool((b == 0).all()) for b in biases)


@pytest.mark.parametrize(
    "arch",
    ["vit_small_patch16_dinov3", "vit_small_plus_patch16_dinov3", "vit_base_patch16_dinov3",
     "vit_large_patch16_dinov3", "vit_huge_plus_patch16_dinov3", MICRO],
)
def test_architecture_is_inferred_from_keys_and_shapes(arch: str) -> None:
    assert infer_arch(FilteredCheckpoint(state=_zeros_like_arch(arch), rope_periods=None)) == arch


def test_unknown_architecture_error_names_the_closest_one() -> None:
    state = _zeros_like_arch("vit_base_patch16_dinov3")
    state = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}  # depth 11
    with pytest.raises(CheckpointError, match="Closest is vit_base_patch16_dinov3") as info:
        infer_arch(FilteredCheckpoint(state=state, rope_periods=None))
    assert "depth=11" in str(info.value)
    assert "missing:     blocks.11.attn.proj.bias" in str(info.value)


def test_mismatch_error_lists_missing_unexpected_and_shapes() -> None:
    state = dict(_zeros_like_arch(MICRO))
    del state["blocks.3.norm1.weight"]
    state["blocks.0.extra.weight"] = T
    state["cls_token"] = torch.zeros(1, 1, 97)
    with pytest.raises(CheckpointError) as info:
        fit_to_arch(FilteredCheckpoint(state=state, rope_periods=None), MICRO)
    message = str(info.value)
    assert "missing:     blocks.3.norm1.weight" in message
    assert "unexpected:  blocks.0.extra.weight" in message
    assert "wrong shape: cls_token expected [1, 1, 96], found [1, 1, 97]" in message


def test_mismatch_lists_only_the_first_ten_in_model_order() -> None:
    state = {k: v for k, v in _zeros_like_arch("vit_base_patch16_dinov3").items() if "norm2" not in k}
    mismatch = compare_state_shapes(
        {k: tuple(v.shape) for k, v in state.items()}, arch_state_shapes("vit_base_patch16_dinov3")
    )
    assert len(mismatch.missing) == 24
    listed = re.findall(r"missing:\s+(\S+)", mismatch.describe())
    assert listed[:3] == ["blocks.0.norm2.bias", "blocks.0.norm2.weight", "blocks.1.norm2.bias"]
    assert len(listed) == 10


def test_periods_of_the_wrong_length_are_a_shape_mismatch() -> None:
    filtered = FilteredCheckpoint(state=_zeros_like_arch(MICRO), rope_periods=torch.ones(16))
    with pytest.raises(CheckpointError, match=r"rope_embed.periods expected \[8\], found \[16\]"):
        fit_to_arch(filtered, MICRO)


# --------------------------------------------------------------------------- loading, periods


def test_meta_checkpoint_reproduces_the_source_encoder_with_its_own_periods() -> None:
    state = randomised_micro_vit_state(MICRO_QKVB)
    reference = build_encoder(MICRO_QKVB)
    reference.vit.load_state_dict(state)
    # Checkpoint periods deliberately different from timm's (bf16-rounded and scaled) so
    # the test sees whether they are used.
    periods = bf16_rounded(reference.rope_periods * 1.7)
    reference.set_rope_periods(periods)
    checkpoint = meta_checkpoint_from_timm(state, periods=periods, k_bias=0.3, prefix="module.backbone.")

    imported = load_encoder_checkpoint(checkpoint)

    assert imported.arch == MICRO_QKVB and imported.checkpoint.qkv_bias_nonzero
    assert torch.equal(imported.encoder.vit.rope.periods, periods)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected, found = reference(images), imported.encoder(images)
        timm_periods = build_encoder(MICRO_QKVB)
        timm_periods.vit.load_state_dict(imported.encoder.vit.state_dict())
        regenerated = timm_periods(images)
    assert torch.allclose(found.cls, expected.cls, atol=1e-5)
    assert torch.allclose(found.patches, expected.patches, atol=1e-5)
    assert not torch.allclose(regenerated.cls, expected.cls, atol=1e-3)  # the periods matter


def test_swiglu_meta_checkpoint_round_trips() -> None:
    torch.manual_seed(3)
    source = build_encoder("vit_small_plus_patch16_dinov3_qkvb")
    state = {k: v + 0.01 if k.endswith(("q_bias", "v_bias")) else v
             for k, v in source.vit.state_dict().items()}
    source.vit.load_state_dict(state)
    imported = load_encoder_checkpoint(meta_checkpoint_from_timm(state, periods=source.rope_periods))
    assert imported.arch == "vit_small_plus_patch16_dinov3_qkvb"
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(imported.encoder(images).cls, source(images).cls, atol=1e-5)


def test_explicit_arch_that_does_not_fit_fails_readably() -> None:
    checkpoint = meta_checkpoint_from_timm(randomised_micro_vit_state(MICRO_QKVB), periods=torch.ones(8))
    with pytest.raises(CheckpointError, match="does not fit vit_small_patch16_dinov3_qkvb"):
        load_encoder_checkpoint(checkpoint, arch="vit_small_patch16_dinov3_qkvb")


def test_checkpoint_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = randomised_micro_vit_state(MICRO)
    plain = tmp_path / "plain.pth"
    torch.save({"model": state}, plain)
    assert set(unwrap_state_dict(load_checkpoint_file(plain))[0]) == set(state)

    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state, "args": Path("x")}, pickled)  # a Python object beside tensors
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_checkpoint_file(pickled)
    assert "model" in load_checkpoint_file(pickled, allow_pickle=True)

    tensors = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tensors))
    assert infer_arch(filter_checkpoint(load_checkpoint_file(tensors))) == MICRO

    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint_file(tmp_path / "garbage.pth")
