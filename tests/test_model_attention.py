"""The engine's bf16 CPU attention: padded keys when eager (the same attention, only the
kernel's sequence length changes), written out as matrix products when compiled."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ortho_node.model.attention import KEY_MULTIPLE, CpuBf16Attention, padded_keys_attention, written_out_attention
from ortho_node.model.encoder import build_encoder


def qkv(length: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, 32, generator=generator).to(dtype) for _ in range(3)]


class AttentionSpy(TorchFunctionMode):
    """Records the key length of every scaled_dot_product_attention call that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.key_lengths: list[int] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is F.scaled_dot_product_attention:
            self.key_lengths.append(args[1].shape[-2])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("length", [201, 69, 17, 1])
def test_padded_keys_give_the_same_attention_in_fp32(length: int) -> None:
    query, key, value = qkv(length, torch.float32)
    expected = F.scaled_dot_product_attention(query, key, value)
    padded = padded_keys_attention(query, key, value)
    assert padded.shape == expected.shape
    assert torch.allclose(padded, expected, atol=1e-6)


def test_padded_keys_stay_within_bf16_rounding() -> None:
    query, key, value = qkv(201, torch.bfloat16, seed=1)
    expected = F.scaled_dot_product_attention(query.float(), key.float(), value.float())
    padded = padded_keys_attention(query, key, value).float()
    plain = F.scaled_dot_product_attention(query, key, value).float()
    # No further from the fp32 attention than the unpadded bf16 kernel is (one bf16 step).
    assert (padded - expected).abs().max() <= (plain - expected).abs().max() + 2**-7


def test_encoder_attention_is_padded_only_in_bf16() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("ortho_vit_micro_patch16_dinov3", img_size=112).eval()
    images = torch.randn(2, 3, 112, 112)
    tokens = 5 + (112 // 16) ** 2  # class token, four registers, 7 x 7 patches
    wrapped = CpuBf16Attention(encoder)
    with torch.inference_mode():
        with AttentionSpy() as spy:
            fp32 = wrapped(images)
        assert spy.key_lengths == [tokens] * 4  # fp32: untouched, one call per block
        assert torch.equal(fp32.cls, encoder(images).cls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with AttentionSpy() as spy:
                bf16 = wrapped(images)
            reference = encoder(images)
    padded_length = tokens + (-tokens % KEY_MULTIPLE)
    assert spy.key_lengths == [padded_length] * 4
    assert bf16.patches.shape == reference.patches.shape and bf16.grid == reference.grid
    assert torch.allclose(bf16.patches.float(), reference.patches.float(), atol=5e-2)
    assert torch.allclose(bf16.cls.float(), fp32.cls, atol=5e-2)


@pytest.mark.parametrize("length", [201, 69, 1])
def test_written_out_attention_is_the_attention_in_fp32(length: int) -> None:
    query, key, value = qkv(length, torch.float32, seed=2)
    expected = F.scaled_dot_product_attention(query, key, value)
    assert torch.allclose(written_out_attention(query, key, value), expected, atol=1e-5)


def test_written_out_attention_in_bf16_stays_near_the_fp32_attention() -> None:
    query, key, value = qkv(201, torch.bfloat16, seed=3)
    expected = F.scaled_dot_product_attention(query.float(), key.float(), value.float())
    written = written_out_attention(query, key, value)
    assert written.dtype == torch.bfloat16
    error = (written.float() - expected).abs()
    # Probabilities rounded to bf16 before the second product, as autocast does: a few bf16 steps.
    assert error.max() <= 2**-5 and error.mean() <= 2**-10


def test_compiled_encoder_writes_bf16_attention_out_and_leaves_fp32_alone() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("ortho_vit_micro_patch16_dinov3", img_size=112).eval()
    images = torch.randn(2, 3, 112, 112)
    graphs: list[list[Any]] = []

    def record(graph_module: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        graphs.append([node.target for node in graph_module.graph.nodes])
        return graph_module.forward

    compiled = torch.compile(CpuBf16Attention(encoder), backend=record, dynamic=False)
    with torch.inference_mode():
        fp32 = compiled(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = compiled(images)
            reference = encoder(images)
    fp32_graph, bf16_graph = graphs
    assert fp32_graph.count(F.scaled_dot_product_attention) == 4  # one per block, untouched
    assert F.scaled_dot_product_attention not in bf16_graph
    assert sum(target in ("softmax", torch.softmax, F.softmax) for target in bf16_graph) == 4
    assert torch.allclose(fp32.cls, encoder(images).cls, atol=1e-6)
    assert torch.allclose(bf16.patches.float(), reference.patches.float(), atol=5e-2)
    torch._dynamo.reset()
