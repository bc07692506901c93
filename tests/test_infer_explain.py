"""Explanation maps and head pooling (ortho_node.model.explain) on hand-made patch tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.model.encoder import EncoderOutput
from ortho_node.model import codes
from ortho_node.model.explain import evaluate_head, explanation_target
from ortho_node.model.head_module import TaskHead, image_features
from ortho_node.model.heads import create_head, head_spec

EMBED = 16
GRID = (3, 4)


def tokens(images: int, seed: int = 0) -> EncoderOutput:
    generator = torch.Generator().manual_seed(seed)
    return EncoderOutput(
        cls=torch.randn(images, EMBED, generator=generator),
        patches=torch.randn(images, GRID[0] * GRID[1], EMBED, generator=generator),
        grid=GRID,
    )


def head(name: str, **overrides: object) -> TaskHead:
    return _randomised(create_head(name, embed_dim=EMBED, **overrides))


def _randomised(module: TaskHead) -> TaskHead:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module.eval().requires_grad_(False)


def with_evidence(
    encoded: EncoderOutput, module: TaskHead, *, image: int, patch: int
) -> EncoderOutput:
    """Add, at one patch, a token pointing where the head's explained score grows."""
    patches = encoded.patches.clone().requires_grad_(True)
    features = image_features(encoded.cls, patches)
    if module.spec.pooling is not None:
        score = module.forward_sets(features.unsqueeze(0))[0, 0]
    else:
        score = module(features)[:, 0].sum()
    (gradient,) = torch.autograd.grad(score, patches)
    direction = gradient[image].sum(dim=0)
    boosted = patches.detach().clone()
    boosted[image, patch] += 20.0 * direction / direction.norm()
    return EncoderOutput(encoded.cls, boosted, encoded.grid)


def test_map_points_at_the_patch_that_carries_the_evidence() -> None:
    module = head("oa_present")
    encoded = with_evidence(tokens(1), module, image=0, patch=7)
    evaluation = evaluate_head(module, encoded)
    assert evaluation.patch_map is not None
    assert evaluation.patch_map.shape == GRID and evaluation.patch_map.dtype == np.float32
    assert evaluation.patch_map.min() >= 0.0 and evaluation.patch_map.max() == pytest.approx(1.0)
    assert np.unravel_index(evaluation.patch_map.argmax(), GRID) == np.unravel_index(7, GRID)
    with torch.no_grad():
        expected = module(image_features(encoded.cls, encoded.patches))
    assert torch.allclose(evaluation.logits, expected)


def test_radiograph_head_averages_logits_and_maps_the_image_with_most_evidence() -> None:
    module = head("kl_grade")
    encoded = with_evidence(tokens(3, seed=1), module, image=2, patch=4)
    evaluation = evaluate_head(module, encoded)
    with torch.no_grad():
        per_image = module(image_features(encoded.cls, encoded.patches))
    assert torch.allclose(evaluation.logits, per_image.mean(dim=0, keepdim=True))
    assert evaluation.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert evaluation.key_index == 2
    assert evaluation.patch_map is not None and evaluation.patch_map.flat[4] == pytest.approx(1.0)


def test_mr_key_slice_is_the_highest_attention_weight() -> None:
    module = head("acl", pooling="attention")
    encoded = tokens(6, seed=2)
    evaluation = evaluate_head(module, encoded)
    with torch.no_grad():
        _, weights = module.pool(image_features(encoded.cls, encoded.patches).unsqueeze(0))
    assert evaluation.weights == pytest.approx(tuple(weights[0].tolist()), abs=1e-6)
    assert evaluation.key_index == int(weights[0].argmax())
    assert sum(evaluation.weights) == pytest.approx(1.0)


def test_mean_pooled_mr_takes_the_slice_with_most_evidence() -> None:
    module = head("meniscus")  # mean pooling: every slice weighs the same
    encoded = with_evidence(tokens(5, seed=3), module, image=3, patch=0)
    evaluation = evaluate_head(module, encoded)
    assert evaluation.key_index == 3
    quiet = evaluate_head(module, encoded, explain=False)
    assert quiet.patch_map is None and torch.allclose(quiet.logits, evaluation.logits)


def test_map_is_all_zero_when_nothing_speaks_for_the_answer() -> None:
    module = head("oa_present")
    encoded = tokens(1, seed=4)
    zero = EncoderOutput(encoded.cls, torch.zeros_like(encoded.patches), GRID)
    evaluation = evaluate_head(module, zero)
    assert evaluation.patch_map is not None and not evaluation.patch_map.any()


def test_inputs_are_checked() -> None:
    module = head("oa_present")
    with pytest.raises(TypeError, match="EncoderOutput"):
        evaluate_head(module, "tokens")  # type: ignore[arg-type]
    encoded = tokens(1)
    with pytest.raises(ValueError, match="grid"):
        evaluate_head(module, EncoderOutput(encoded.cls, encoded.patches, (5, 5)))


def _multiclass_head() -> TaskHead:
    spec = dataclasses.replace(
        head_spec("acl"), name="kl_multi", kind="multiclass", labels=tuple("abc"), threshold=None,
        codes=dataclasses.replace(head_spec("acl").codes, values=(codes.NO,) * 3),
    )
    return _randomised(TaskHead(spec, embed_dim=EMBED))


def _reference_relevance(module: TaskHead, encoded: EncoderOutput) -> torch.Tensor:
    """Gradient × token by back-propagating into every patch token value ([K, N])."""
    patches = encoded.patches.float().clone().requires_grad_(True)
    features = image_features(encoded.cls.float(), patches)
    if module.spec.pooling is not None:
        logits = module.forward_sets(features.unsqueeze(0))
    else:
        logits = module(features).mean(dim=0, keepdim=True)
    (gradient,) = torch.autograd.grad(explanation_target(module, logits), patches)
    return (gradient * patches.detach()).sum(dim=-1).clamp_min(0.0)


@pytest.mark.parametrize(
    ("name", "images", "overrides"),
    [
        ("kl_grade", 1, {}),
        ("oa_present", 2, {}),
        ("acl", 6, {}),
        ("acl", 6, {"pooling": "max"}),
        ("acl", 6, {"pooling": "attention"}),
        ("multiclass", 3, {}),
    ],
)
def test_map_equals_back_propagation_into_every_patch_token(name, images, overrides) -> None:
    """The map comes from the gradient at the image features (heads read the tokens through
    their mean); it must equal gradient × token taken through every token value."""
    module = _multiclass_head() if name == "multiclass" else head(name, **overrides)
    for seed in range(3):
        encoded = tokens(images, seed=seed)
        evaluation = evaluate_head(module, encoded)
        relevance = _reference_relevance(module, encoded)
        weights = torch.tensor(evaluation.weights)
        tied = (weights.max() - weights) <= 1e-6
        key = int(torch.where(tied, relevance.sum(dim=1), torch.tensor(-1.0)).argmax())
        expected = relevance[key] / relevance[key].max() if relevance[key].max() > 0 else relevance[key]
        assert evaluation.key_index == key and evaluation.patch_map is not None
        np.testing.assert_allclose(evaluation.patch_map.ravel(), expected.numpy(), atol=1e-5)


def test_map_from_bf16_tokens_matches_the_float_map() -> None:
    """The engine hands bf16 tokens on CPU and CUDA: the map is computed from them in float32."""
    module = head("acl")
    encoded = tokens(8, seed=4)
    bf16 = EncoderOutput(encoded.cls.bfloat16(), encoded.patches.bfloat16(), encoded.grid)
    rounded = EncoderOutput(bf16.cls.float(), bf16.patches.float(), encoded.grid)
    a, b = evaluate_head(module, bf16), evaluate_head(module, rounded)
    assert a.key_index == b.key_index
    np.testing.assert_allclose(a.patch_map, b.patch_map, atol=1e-6)
    torch.testing.assert_close(a.logits, b.logits)
