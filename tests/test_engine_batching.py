"""InferenceEngine batching: batched results equal one-at-a-time results, requests from
concurrent callers share forward passes, large requests span several batches."""

from __future__ import annotations

import threading

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from tests.infer_support import INPUT_SIZE, fixture_bundle_dir

from ortho_node.model.attention import CpuBf16Attention
from ortho_node.model.bundle import LoadedBundle, load_bundle
from ortho_node.model.engine import (
    InferenceEngine,
    Precision,
    batch_buckets,
    bucket_plan,
    compile_any_batch,
    images_to_take,
    native_bf16,
    resolve_precision,
)

# bf16 keeps 8 bits of mantissa: relative error ~4e-3 per rounding, a few roundings deep.
BF16_ATOL = 5e-2


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(fixture_bundle_dir())


def images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)


def one_at_a_time(bundle: LoadedBundle, batch: torch.Tensor, precision: str):
    with InferenceEngine(bundle, max_batch=1, max_wait_ms=0, precision=precision) as engine:
        outputs = [engine.encode(image) for image in batch]
        assert engine.stats().largest_batch == 1
    return torch.cat([o.cls for o in outputs]), torch.cat([o.patches for o in outputs])


def test_fp32_batched_equals_one_at_a_time_exactly(bundle: LoadedBundle) -> None:
    batch = images(6)
    cls_single, patches_single = one_at_a_time(bundle, batch, "fp32")
    with InferenceEngine(bundle, max_batch=8, max_wait_ms=0, precision="fp32") as engine:
        output = engine.encode(batch)
        assert engine.stats().recent_batch_sizes == (6,)
    # Exact: the CPU kernels give each row the same arithmetic whatever the batch size.
    assert torch.equal(output.cls, cls_single)
    assert torch.equal(output.patches, patches_single)
    assert output.grid == (INPUT_SIZE // 16, INPUT_SIZE // 16)
    assert output.cls.dtype == torch.float32 and output.cls.device == bundle.device


def test_bf16_batched_matches_one_at_a_time_and_fp32(bundle: LoadedBundle) -> None:
    batch = images(4, seed=1)
    cls_single, patches_single = one_at_a_time(bundle, batch, "bf16")
    with InferenceEngine(bundle, max_batch=4, max_wait_ms=0, precision="bf16") as engine:
        assert engine.precision is Precision.BF16
        output = engine.encode(batch)
    with InferenceEngine(bundle, max_batch=4, max_wait_ms=0, precision="fp32") as engine:
        exact = engine.encode(batch)
    assert torch.allclose(output.cls, cls_single, atol=BF16_ATOL)
    assert torch.allclose(output.patches, patches_single, atol=BF16_ATOL)
    # Autocast really ran in bf16 (results differ from fp32), and stayed close to it.
    assert not torch.equal(output.patches, exact.patches)
    assert torch.allclose(output.patches, exact.patches, atol=BF16_ATOL)


def test_request_larger_than_max_batch_spans_batches_in_order(bundle: LoadedBundle) -> None:
    batch = images(7, seed=2)
    with InferenceEngine(bundle, max_batch=3, max_wait_ms=0, precision="fp32") as engine:
        output = engine.encode(batch)
        stats = engine.stats()
    cls_single, _ = one_at_a_time(bundle, batch, "fp32")
    assert stats.recent_batch_sizes == (3, 3, 1)
    assert torch.equal(output.cls, cls_single)


def test_concurrent_callers_share_forward_passes(bundle: LoadedBundle) -> None:
    callers = 4
    batches = [images(2, seed=10 + k) for k in range(callers)]
    start = threading.Barrier(callers)
    results: dict[int, torch.Tensor] = {}

    def caller(k: int) -> None:
        start.wait()
        results[k] = engine.encode(batches[k], timeout=30).cls

    # A long wait and a batch exactly the size of all requests: it runs as soon as it fills.
    engine = InferenceEngine(bundle, max_batch=2 * callers, max_wait_ms=5000, precision="fp32")
    with engine:
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        stats = engine.stats()
    assert stats.recent_batch_sizes == (2 * callers,)
    assert stats.recent_batch_requests == (callers,)
    for k in range(callers):
        assert torch.equal(results[k], one_at_a_time(bundle, batches[k], "fp32")[0])


def test_flush_runs_what_waits_without_waiting_out_max_wait(bundle: LoadedBundle) -> None:
    # A minute's wait for a batch of 8 that never fills: only the flush can run it in time.
    with InferenceEngine(bundle, max_batch=8, max_wait_ms=60_000, precision="fp32") as engine:
        first, second = engine.submit(images(2, seed=1)), engine.submit(images(1, seed=2))
        engine.flush()
        assert first.result(timeout=20).cls.shape[0] == 2
        assert second.result(timeout=20).cls.shape[0] == 1
        assert engine.stats().recent_batch_sizes == (3,), "both waiting requests in one batch"
        # The flush is spent, and one with nothing waiting is not kept for later: the next
        # lone request waits for company again.
        engine.flush()
        third = engine.submit(images(1, seed=3))
        with pytest.raises(TimeoutError):
            third.result(timeout=0.5)
        engine.flush()
        assert third.result(timeout=20).cls.shape[0] == 1


def test_auto_precision_follows_the_hardware(bundle: LoadedBundle) -> None:
    expected = Precision.BF16 if native_bf16(torch.device("cpu")) else Precision.FP32
    assert resolve_precision("auto", torch.device("cpu")) is expected
    assert resolve_precision("fp32", torch.device("cpu")) is Precision.FP32
    with pytest.raises(ValueError):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_matches_cpu() -> None:
    batch = images(4, seed=3)
    with InferenceEngine(load_bundle(fixture_bundle_dir()), precision="fp32") as cpu_engine:
        reference = cpu_engine.encode(batch)
    cuda_bundle = load_bundle(fixture_bundle_dir(), device="cuda")
    for precision, tolerance, compile in (
        ("fp32", 1e-3, False), ("bf16", BF16_ATOL, False), ("bf16", BF16_ATOL, True)
    ):
        with InferenceEngine(cuda_bundle, precision=precision, compile=compile) as engine:
            output = engine.encode(batch)
            graphs = counters["stats"]["unique_graphs"]
            lone = engine.encode(batch[:1])
            engine.encode(batch[:3].cuda())  # already on the device
            assert counters["stats"]["unique_graphs"] == graphs, "one graph for every batch size"
            assert engine.batch_buckets == ()
        assert output.patches.device.type == "cpu"  # features come back in host memory
        assert torch.allclose(output.patches, reference.patches, atol=tolerance)
        assert torch.allclose(lone.patches, reference.patches[:1], atol=tolerance)
    assert all(p.device.type == "cpu" for h in cuda_bundle.heads.values() for p in h.parameters())


def test_compiled_for_any_batch_size_is_one_graph_and_runs_a_lone_image(bundle: LoadedBundle) -> None:
    # The GPU engine's compilation, traced here with dynamo's own compile counter as backend
    # (inductor's code generation is the CPU test's and the CUDA test's business).
    counter = CompileCounter()
    compiled = compile_any_batch(bundle.encoder, backend=counter)
    batch = images(5, seed=6)  # not an inference tensor, unlike the padded lone image
    with torch.inference_mode():
        eager = bundle.encoder(batch)
        outputs = {size: compiled(batch[:size]) for size in (5, 3, 2, 1, 4)}
    assert counter.frame_count == 1, "one graph for every batch size, a lone image included"
    for size, output in outputs.items():
        assert output.cls.shape == (size, *eager.cls.shape[1:])
        assert output.patches.shape == (size, *eager.patches.shape[1:])
        assert output.grid == eager.grid
        assert torch.allclose(output.cls, eager.cls[:size], atol=1e-5)
        assert torch.allclose(output.patches, eager.patches[:size], atol=1e-5)


def test_bf16_engine_runs_bf16_linear_weights_bit_identical_to_autocast(bundle: LoadedBundle) -> None:
    batch = images(3, seed=4)
    before = {k: v.clone() for k, v in bundle.encoder.state_dict().items()}
    with InferenceEngine(bundle, max_batch=4, max_wait_ms=0, precision="bf16") as engine:
        output = engine.encode(batch)
        linear_dtypes = {
            m.weight.dtype for m in engine._model.modules() if isinstance(m, torch.nn.Linear)
        }
    assert linear_dtypes == {torch.bfloat16}
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        reference = CpuBf16Attention(bundle.encoder)(batch)  # the engine's CPU bf16 attention
    # Autocast casts the same float32 weights to the same bf16 values on every call.
    assert torch.equal(output.cls, reference.cls.float())
    assert torch.equal(output.patches, reference.patches.float())
    # The bundle's own encoder is untouched: still float32, same values.
    after = bundle.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)


def test_compiled_engine_matches_eager_and_takes_new_batch_sizes(bundle: LoadedBundle) -> None:
    # torch.compile (inductor, C++ code generated and built with the machine's compiler), static
    # shapes with frozen weights, batches run as buckets.
    batch = images(3, seed=5)
    counters.clear()
    with InferenceEngine(bundle, max_batch=4, max_wait_ms=0, precision="fp32") as engine:
        eager = engine.encode(batch)
        assert engine.batch_buckets == ()
    with InferenceEngine(
        bundle, max_batch=4, max_wait_ms=600_000, precision="fp32", compile=True
    ) as engine:
        assert engine.batch_buckets == (1, 2, 4)
        # Ten minutes' wait for company: after a flush all 3 waiting images run at once (as
        # buckets 2 + 1 inside one forward), none is left to wait out the ten minutes.
        pending = engine.submit(batch)
        engine.flush()
        compiled = pending.result(timeout=300)
        pending = engine.submit(batch[:2])  # another bucket: no failure, no fallback
        engine.flush()
        smaller = pending.result(timeout=300)
        stats = engine.stats()
    assert compiled.cls.shape == eager.cls.shape and compiled.patches.shape == eager.patches.shape
    assert torch.allclose(compiled.cls, eager.cls, atol=1e-5)
    assert torch.allclose(compiled.patches, eager.patches, atol=1e-5)
    assert torch.allclose(smaller.cls, eager.cls[:2], atol=1e-5)
    assert stats.recent_batch_sizes == (3, 2), "statistics count real images, not padding"
    # The weights really were frozen: only constant weights get packed for oneDNN (with
    # freezing requested from inductor alone, dynamo kept them as graph inputs, silently).
    assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] > 0


def test_padded_and_exact_buckets_reach_the_compiled_encoder_as_the_same_kind_of_tensor(
    bundle: LoadedBundle,
) -> None:
    # dynamo guards on whether an input is an inference tensor: a padded bucket built inside
    # inference mode compiled that bucket a second time, mid-service (max_batch 1000: the
    # smallest bucket is 8, so 3 images are padded, 8 are not).
    seen: list[tuple[int, bool]] = []
    with InferenceEngine(bundle, max_batch=1000, max_wait_ms=0, precision="fp32", compile=True) as engine:
        assert engine.batch_buckets[0] == 8

        def recording(chunk: torch.Tensor):
            seen.append((chunk.shape[0], chunk.is_inference()))
            return bundle.encoder(chunk)

        engine._model = recording  # the compiled encoder's inputs, without compiling here
        padded = engine.encode(images(3, seed=6), timeout=60)
        exact = engine.encode(images(8, seed=7), timeout=60)
    assert [size for size, _ in seen] == [8, 8]
    assert seen[0][1] == seen[1][1], "one kind of tensor for every bucket"
    assert padded.cls.shape[0] == 3 and exact.cls.shape[0] == 8


@pytest.mark.parametrize("waiting,taken", [(1, 1), (3, 2), (14, 8), (16, 16), (40, 16)])
def test_a_compiled_cpu_engine_takes_the_largest_bucket_the_waiting_images_fill(
    waiting: int, taken: int
) -> None:
    assert images_to_take(waiting, 16, batch_buckets(16)) == taken
    assert images_to_take(waiting, 16, ()) == 16, "eager, or any batch size: everything up to max_batch"
    assert images_to_take(waiting, 16, batch_buckets(16), more_coming=False) == 16, (
        "nothing more coming: everything waiting"
    )


def test_images_below_the_smallest_bucket_are_all_taken() -> None:
    assert images_to_take(5, 1000, batch_buckets(1000)) == 1000


@pytest.mark.parametrize(
    "max_batch,buckets",
    [(1, (1,)), (4, (1, 2, 4)), (24, (1, 2, 4, 8, 16, 24)), (32, (1, 2, 4, 8, 16, 32)),
     (1000, (8, 16, 32, 64, 128, 256, 512, 1000))],
)
def test_batch_buckets_are_powers_of_two_up_to_the_largest_batch(max_batch: int, buckets: tuple[int, ...]) -> None:
    assert batch_buckets(max_batch) == buckets


@pytest.mark.parametrize(
    "count,plan",
    [
        (6, [(0, 4, 4), (4, 6, 2)]),  # the largest buckets that fit, nothing padded
        (16, [(0, 16, 16)]),
        (31, [(0, 16, 16), (16, 24, 8), (24, 28, 4), (28, 30, 2), (30, 31, 1)]),
        (1, [(0, 1, 1)]),
    ],
)
def test_bucket_plan_splits_into_the_largest_buckets_that_fit(count: int, plan: list) -> None:
    assert bucket_plan(count, batch_buckets(16 if count <= 16 else 32)) == plan


def test_bucket_plan_pads_a_remainder_below_the_smallest_bucket_and_runs_eager_whole() -> None:
    buckets = batch_buckets(1000)  # (8, 16, ..., 1000): no bucket below 8
    assert bucket_plan(21, buckets) == [(0, 16, 16), (16, 21, 8)]
    assert bucket_plan(5, buckets) == [(0, 5, 8)]
    assert bucket_plan(7, ()) == [(0, 7, 7)]
