"""The encoder wrapper: outputs, input checks, RoPE periods, architectures."""

from __future__ import annotations

import pytest
import timm
import torch

from ortho_node.model.encoder import (
    DINOV3_ARCHS,
    MICRO_ARCHS,
    OrthoEncoder,
    arch_info,
    build_encoder,
    encoder_state_shapes,
)
from tests.test_model_support import MICRO, MICRO_QKVB, bf16_rounded


@pytest.fixture(scope="module")
def encoder() -> OrthoEncoder:
    torch.manual_seed(0)
    return build_encoder(MICRO_QKVB).eval()


def test_output_is_cls_and_patch_tokens_without_registers(encoder: OrthoEncoder) -> None:
    images = torch.randn(3, 3, 64, 112)
    with torch.inference_mode():
        out = encoder(images)
        tokens = encoder.vit.forward_features(images)
    assert out.grid == (4, 7)
    assert out.cls.shape == (3, 96) and out.patches.shape == (3, 28, 96)
    assert torch.equal(out.cls, tokens[:, 0])
    assert tokens.shape[1] == 1 + 4 + 28  # CLS, 4 registers, patches
    assert torch.equal(out.patches, tokens[:, 5:])


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3, 64, 64), r"\[B, 3, H, W\]"), ((1, 1, 64, 64), r"\[B, 3, H, W\]"),
     ((1, 3, 64, 70), "multiples of 16")],
)
def test_bad_input_shapes_are_refused(encoder: OrthoEncoder, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encoder(torch.zeros(shape))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        encoder([[0.0]])  # type: ignore[arg-type]


def test_checkpoint_periods_survive_state_dict_and_dtype_casts() -> None:
    source = build_encoder(MICRO)
    periods = bf16_rounded(source.rope_periods * 1.25)
    source.set_rope_periods(periods)

    copy = build_encoder(MICRO)
    copy.load_state_dict(source.state_dict())
    assert torch.equal(copy.vit.rope.periods, periods)

    copy.to(torch.bfloat16)  # timm would regenerate its float32 periods here
    assert copy.vit.rope.periods.dtype == torch.float32
    assert torch.equal(copy.vit.rope.periods, periods)
    copy.float()
    assert torch.equal(copy.rope_periods, periods)


def test_set_rope_periods_checks_its_input(encoder: OrthoEncoder) -> None:
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        encoder.set_rope_periods(torch.ones(16))
    with pytest.raises(ValueError, match="positive"):
        encoder.set_rope_periods(torch.zeros(8))


def test_uninitialised_build_fills_computed_buffers() -> None:
    fresh = build_encoder(MICRO_QKVB, initialise=False)
    reference = build_encoder(MICRO_QKVB)
    assert torch.equal(fresh.vit.rope.periods, reference.vit.rope.periods)
    assert bool((fresh.vit.blocks[0].attn.k_bias == 0).all())


def test_micro_archs_use_dinov3_settings() -> None:
    dinov3 = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0)
    for arch in MICRO_ARCHS:
        micro = build_encoder(arch).vit
        assert type(micro.rope) is type(dinov3.rope)
        assert micro.rope.temperature == dinov3.rope.temperature == 100
        assert micro.num_prefix_tokens == dinov3.num_prefix_tokens == 5
        assert micro.norm.eps == dinov3.norm.eps
        assert micro.blocks[0].attn.rotate_half == dinov3.blocks[0].attn.rotate_half
        assert micro.pretrained_cfg["architecture"] == arch
        assert arch_info(arch).num_params < 1_000_000


def test_published_dinov3_sizes() -> None:
    # Sizes from the DINOv3 release (notes, section 5): parameters in millions.
    published = {"vit_small_patch16_dinov3": 21, "vit_small_plus_patch16_dinov3": 29,
                 "vit_base_patch16_dinov3": 86, "vit_large_patch16_dinov3": 300,
                 "vit_huge_plus_patch16_dinov3": 840}
    for arch, millions in published.items():
        info = arch_info(arch)
        assert abs(info.num_params / 1e6 - millions) / millions < 0.03, arch
        assert info.num_register_tokens == 4 and info.patch_size == 16
    assert arch_info("vit_large_patch16_dinov3").embed_dim == 1024
    assert arch_info("vit_small_plus_patch16_dinov3").swiglu
    assert arch_info("vit_base_patch16_dinov3_qkvb").qkv_bias
    assert set(DINOV3_ARCHS) <= set(timm.list_models("*dinov3*"))


def test_state_shapes_match_a_real_encoder() -> None:
    encoder = build_encoder(MICRO)
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == dict(
        encoder_state_shapes(MICRO)
    )


def test_unknown_arch_and_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="arch must be one of .*vit_large_patch16_dinov3"):
        build_encoder("vit_large_patch14_dinov2")
    with pytest.raises(TypeError, match="arch must be a str"):
        build_encoder(16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        build_encoder(MICRO, img_size=200)
