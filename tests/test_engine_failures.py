"""InferenceEngine failures stay with their request: refused input, a batch whose forward pass
fails (re-run one by one to find the culprit), closing with work queued."""

from __future__ import annotations

import pytest
import torch
from tests.infer_support import INPUT_SIZE, fixture_bundle_dir

from ortho_node.model.bundle import LoadedBundle, load_bundle
from ortho_node.model.engine import EncodingError, EngineClosedError, InferenceEngine, all_finite

POISON = 7.0
"""Fault injection: an encoder hook fails every forward pass whose input holds this value."""


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(fixture_bundle_dir())


def image(seed: int) -> torch.Tensor:
    return torch.randn(3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(seed))


def _with(tensor: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    """``tensor`` with one element set to ``value``: one bad pixel must be enough."""
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def reference(bundle: LoadedBundle, tensor: torch.Tensor) -> torch.Tensor:
    with InferenceEngine(bundle, max_wait_ms=0, precision="fp32") as engine:
        return engine.encode(tensor).cls


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (torch.full((3, INPUT_SIZE, INPUT_SIZE), float("nan")), ValueError, "NaN or infinite"),
        (_with(image(2), (1, 5, 7), float("nan")), ValueError, "NaN or infinite"),
        ([image(3), _with(image(4), (2, INPUT_SIZE - 1, 0), float("inf"))], ValueError, "NaN or infinite"),
        (_with(image(5), (0, 0, 0), float("-inf")), ValueError, "NaN or infinite"),
        (torch.zeros(2, 3, 64, 64), ValueError, f"[n, 3, {INPUT_SIZE}, {INPUT_SIZE}]"),
        (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.int64), TypeError, "floating"),
        ("not a tensor", TypeError, "torch.Tensor"),
        ([image(1), torch.zeros(3, 32, 32)], ValueError, "share a shape"),
    ],
)
def test_bad_request_fails_only_its_future(
    bundle: LoadedBundle, bad: object, error: type[Exception], message: str
) -> None:
    good = [image(10), image(11)]
    with InferenceEngine(bundle, max_batch=8, max_wait_ms=500, precision="fp32") as engine:
        first = engine.submit(good[0])
        refused = engine.submit(bad)  # type: ignore[arg-type]
        second = engine.submit(good[1])
        with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
            refused.result(timeout=30)
        results = [first.result(timeout=30).cls, second.result(timeout=30).cls]
        stats = engine.stats()
    assert stats.recent_batch_requests == (2,)  # the two good ones still shared a batch
    assert stats.failed_requests == 1
    for tensor, result in zip(good, results):
        assert torch.equal(result, reference(bundle, tensor))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_all_finite_finds_one_bad_value_anywhere(dtype: torch.dtype) -> None:
    clean = torch.randn(4, 3, 8, 8).to(dtype)
    assert all_finite(clean) and all_finite(clean[:0])
    for index in [(0, 0, 0, 0), (2, 1, 4, 5), (3, 2, 7, 7)]:
        for value in (float("nan"), float("inf"), float("-inf")):
            assert not all_finite(_with(clean, index, value)), (index, value)


def test_failing_batch_is_rerun_one_by_one_to_isolate_the_culprit(bundle: LoadedBundle) -> None:
    def fail_on_poison(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        if bool((args[0] == POISON).any()):
            raise RuntimeError("simulated kernel failure")

    handle = bundle.encoder.register_forward_pre_hook(fail_on_poison)
    try:
        poisoned = image(20)
        poisoned[0, 0, 0] = POISON
        good = [image(21), image(22), image(23)]
        with InferenceEngine(bundle, max_batch=4, max_wait_ms=500, precision="fp32") as engine:
            futures = [engine.submit(good[0]), engine.submit(poisoned)]
            futures += [engine.submit(tensor) for tensor in good[1:]]
            with pytest.raises(EncodingError, match="simulated kernel failure"):
                futures[1].result(timeout=30)
            results = [futures[k].result(timeout=30).cls for k in (0, 2, 3)]
            stats = engine.stats()
    finally:
        handle.remove()
    assert stats.isolation_reruns == 1
    assert stats.recent_batch_sizes == (1, 1, 1)  # the three good requests, re-run alone
    assert stats.failed_requests == 1
    for tensor, result in zip(good, results):
        assert torch.equal(result, reference(bundle, tensor))


def test_close_finishes_queued_work_then_refuses(bundle: LoadedBundle) -> None:
    engine = InferenceEngine(bundle, max_batch=8, max_wait_ms=10_000, precision="fp32")
    queued = engine.submit(image(30))
    engine.close(timeout=30)  # does not wait the 10 s: closing dispatches at once
    assert queued.result(timeout=0).cls.shape == (1, bundle.encoder.embed_dim)
    assert engine.closed
    with pytest.raises(EngineClosedError):
        engine.submit(image(31))


def test_constructor_checks_its_arguments(bundle: LoadedBundle) -> None:
    with pytest.raises(TypeError, match="bundle must be a LoadedBundle"):
        InferenceEngine("bundle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        InferenceEngine(bundle, max_batch=0)
    with pytest.raises(TypeError, match="max_wait_ms must be a number"):
        InferenceEngine(bundle, max_wait_ms="20")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fp16"):
        InferenceEngine(bundle, precision="fp16")


def test_a_fault_in_the_batching_thread_fails_every_request_and_closes_the_engine(
    bundle: LoadedBundle,
) -> None:
    # A bug outside the forward pass (here: delivering the answers) ends the batching thread;
    # no caller may be left waiting for a future nobody will resolve.
    engine = InferenceEngine(bundle, max_batch=2, max_wait_ms=0, precision="fp32")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    engine._deliver = broken  # type: ignore[method-assign]
    futures = [engine.submit(image(seed)) for seed in range(5)]
    for future in futures:
        with pytest.raises(EncodingError, match="engine stopped: RuntimeError"):
            future.result(timeout=30)
    assert engine.closed
    with pytest.raises(EngineClosedError):
        engine.submit(image(9))
    engine.close()
