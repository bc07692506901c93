"""Inference benchmark: matmul peak, raw encoder forward, end-to-end ``infer`` from DICOM files.

For ViT-S/16 and ViT-L/16 (DINOv3, timm) at 224 x 224, on the device chosen (CUDA when there
is one, else the CPU), prints:

1. the machine's measured matrix-product throughput in fp32 and bf16 (GFLOP/s, best of a
   few square products; on the CPU also through ``F.linear``, oneDNN's path, the better
   one counts);
2. raw encoder forward at the batch a busy worker reaches (ViT-S 32, ViT-L 16 on the CPU):
   images/s and achieved GFLOP/s per precision (FLOPs counted by ``torch.utils.flop_counter``
   on one image), as a fraction of the fp32 and bf16 peaks, and as the median share of the
   bf16 rate sampled just before and after each iteration (``PeakSampler``: on a shared VM
   the product rate itself moves, so this pairing is the fair comparison);
3. end-to-end: images/s of the node's own path from DICOM files on disk (read, decode,
   window, preprocess, scope gate, engine with micro-batching, KL + OA heads with
   explanation maps), as a fraction of the raw forward at the same precision and batch.

Targets from issue #3: raw forward >= 70 % of the measured bf16 matmul peak; end-to-end
>= 80 % of raw forward. Weights are random (throughput does not depend on them); the bundle
is written to a temporary folder and removed.

The ``bench/infer`` wrapper sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: on a shared
2-core VM, libgomp's default spin-waiting made every elementwise op of the forward pass wait
for a descheduled team thread (~7 ms each), halving ViT-S throughput.

Usage::

    bench/infer                       # CPU here, CUDA where there is one
    bench/infer --device cuda         # the GPU run: same measurements, GPU-sized batches
    bench/infer --models vits --precisions fp32 --quick
    bench/infer --compile             # torch.compile the encoder, as worker.compile: true does
    bench/infer --device cuda --processes 8   # end to end in 8 worker processes sharing the GPU
    bench/infer --device cuda --processes 8 --in-flight 1   # ... as a prefork pool's children
    bench/infer --device cuda --processes 8 --in-flight 1 --shared-engine   # ... with worker.shared_engine
    bench/infer --device cuda --models vits --precisions bf16 --profile 48
        # where one process's CPU time goes: 48 studies one at a time under cProfile

End to end runs in one process by default. Preparation is Python under one interpreter lock per
process, so on a GPU host one process prepares about 90 radiographs/s however many cores it
has (16-core H200 host); ``--processes N`` shares the studies among N processes, each with its
own engine on the device, as N ``ortho-node worker`` processes would.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.synchronize import Event
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ortho_node.allocator import keep_freed_memory_for_reuse  # noqa: E402
from ortho_node.model.bundle import Provenance, load_bundle, save_bundle  # noqa: E402
from ortho_node.model.encoder import OrthoEncoder, build_encoder  # noqa: E402
from ortho_node.model.engine import (  # noqa: E402
    Precision,
    compile_for_inference,
    inference_model,
    native_bf16,
)
from ortho_node.model.engine_server import EngineServerOptions, start_engine_process  # noqa: E402
from ortho_node.model.heads import create_head  # noqa: E402
from ortho_node.model.infer import (  # noqa: E402
    StudyFiles,
    analyse_studies,
    collect_studies,
    read_study,
)
from ortho_node.model.study import StudyAnalyser  # noqa: E402
from ortho_node.model.threads import configure_engine_threads  # noqa: E402
from ortho_node.phantoms import XrayPhantomSpec, write_knee_study  # noqa: E402

MODELS = {
    "vits": ("ViT-S/16", "vit_small_patch16_dinov3"),
    "vitl": ("ViT-L/16", "vit_large_patch16_dinov3"),
}
SIZE = 224


@dataclass(frozen=True)
class Plan:
    """Batch, timed iterations and end-to-end image count for one model and precision."""

    batch: int
    iterations: int
    e2e_images: int


def plan_for(device: torch.device, model: str, precision: Precision, quick: bool) -> Plan:
    if device.type == "cuda":
        batch = 256 if model == "vits" else 64
        return Plan(batch, 5 if quick else 20, (1 if quick else 4) * batch)
    slow_bf16 = precision is Precision.BF16 and not native_bf16(device)
    if slow_bf16:  # bf16 emulated in software: a token run, the figure only shows it is slow
        return Plan(2, 1, 4) if model == "vits" else Plan(1, 1, 1)
    if quick:
        return Plan(8, 2, 16) if model == "vits" else Plan(4, 2, 8)
    # Batches a busy worker reaches (worker.max_batch is 32): the forward as production runs it.
    # End to end over four batches, so that filling the first and draining the last (neither
    # overlaps preparation with encoding) do not dominate the steady state.
    return Plan(32, 5, 128) if model == "vits" else Plan(16, 5, 64)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: Precision):
    enabled = precision is Precision.BF16
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class PeakSampler:
    """The bf16 (or fp32) product rate of the machine *now*: a 2048-square ``F.linear`` (median of
    three), taken between forward iterations so that each forward is compared with the rate the
    machine offered at that moment. On a shared VM the rate itself moves from second to second
    (here from ~750 to ~2,000 GFLOP/s in bf16), so a best-ever peak from the start of the run
    set against a mean forward from minutes later says more about the neighbours than the model."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        slow = device.type == "cpu" and dtype is torch.bfloat16 and not native_bf16(device)
        self._n = 8192 if device.type == "cuda" else (1024 if slow else 2048)
        generator = torch.Generator(device=device).manual_seed(1)
        self._a = torch.randn(self._n, self._n, device=device, dtype=dtype, generator=generator)
        self._b = torch.randn(self._n, self._n, device=device, dtype=dtype, generator=generator)
        self._device = device
        self.samples: list[float] = []

    def sample(self) -> float:
        """GFLOP/s now; also kept in ``samples``."""
        times = []
        for _ in range(3):
            start = time.perf_counter()
            F.linear(self._a, self._b) if self._device.type == "cpu" else self._a @ self._b
            synchronise(self._device)
            times.append(time.perf_counter() - start)
        rate = 2.0 * self._n**3 / statistics.median(times) / 1e9
        self.samples.append(rate)
        return rate


@dataclass(frozen=True)
class RawForward:
    """Raw forward throughput, and its share of the product rate sampled around each iteration."""

    images_per_s: float  # mean over the timed iterations
    paired_share: float  # median over iterations of achieved / mean(rate before, rate after)
    peak_low: float  # slowest and fastest product rate sampled during the run
    peak_high: float


def timed(device: torch.device, fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls (after one warm-up call)."""
    fn()
    synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """GFLOP/s of the best square product path (matmul, and F.linear on the CPU)."""
    slow = device.type == "cpu" and dtype is torch.bfloat16 and not native_bf16(device)
    n = 8192 if device.type == "cuda" else (1024 if slow else 2048)
    repeats = 10 if device.type == "cuda" else (2 if quick or slow else 3)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    flops = 2.0 * n**3
    best = flops / min(timed(device, lambda: a @ b, repeats))
    if device.type == "cpu":
        best = max(best, flops / min(timed(device, lambda: F.linear(a, b), repeats)))
    return best / 1e9


def random_encoder(arch: str, device: torch.device) -> OrthoEncoder:
    """The architecture with seeded random weights (throughput does not depend on them)."""
    encoder = build_encoder(arch, img_size=SIZE, initialise=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.fill_(1.0)
            elif ".gamma_" in name:
                parameter.fill_(0.1)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return encoder.to(device).eval().requires_grad_(False)


def forward_flops(encoder: OrthoEncoder, device: torch.device) -> float:
    image = torch.zeros(1, 3, SIZE, SIZE, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encoder(image)
    return float(counter.get_total_flops())


def raw_forward(
    encoder: OrthoEncoder, device: torch.device, precision: Precision, plan: Plan, compile: bool,
    flops: float,
) -> RawForward:
    """Images/s of the bare encoder at ``plan.batch`` (mean over the timed iterations: the
    end-to-end run is one long run, so both see the same share of a busy machine), and the
    median share of the bf16 product rate sampled just before and just after each iteration."""
    images = torch.randn(plan.batch, 3, SIZE, SIZE, device=device)
    # The forward the engine runs: in bf16, linear layers hold bf16 weights (no per-call cast),
    # and on a CPU attention keys are padded to a multiple of 16.
    model = inference_model(encoder, precision, device)
    if compile:  # as the engine does (the warm-up call below compiles)
        model, _ = compile_for_inference(model, device, plan.batch)

    def run() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(images)

    run()  # warm-up (compiles when compiling)
    synchronise(device)
    sampler = PeakSampler(device, torch.bfloat16)
    before = sampler.sample()
    times, shares = [], []
    for _ in range(plan.iterations):
        start = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - start)
        after = sampler.sample()
        shares.append(flops * plan.batch / times[-1] / 1e9 / ((before + after) / 2))
        before = after
    return RawForward(
        images_per_s=plan.batch / statistics.mean(times),
        paired_share=statistics.median(shares),
        peak_low=min(sampler.samples),
        peak_high=max(sampler.samples),
    )


def _write_study(folder: Path, index: int) -> None:
    specs = [XrayPhantomSpec(kl_grade=2, side="L"), XrayPhantomSpec(kl_grade=2, side="R")]
    write_knee_study(folder / f"study{index:04d}", seed=1000 + index, xrays=specs)


def write_radiographs(folder: Path, images: int) -> list[Path]:
    """``images`` knee radiographs (1024 x 1024 DX, uncompressed), two per study (L and R),
    rendered by one process per core."""
    studies = (images + 1) // 2
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_study, [folder] * studies, range(studies)))
    return [folder]


def write_bundle(encoder: OrthoEncoder, work: Path) -> Path:
    """A bundle of the (random) encoder with the KL and OA heads, written once per model."""
    heads = {
        name: create_head(name, embed_dim=encoder.embed_dim) for name in ("kl_grade", "oa_present")
    }
    return save_bundle(
        work / f"bundle-{encoder.arch}", encoder=encoder, heads=heads, trained=heads,
        name="bench-random", version="0", license="benchmark only",
        provenance=Provenance("random weights for a throughput benchmark", synthetic=True),
        input_size=(SIZE, SIZE),
    )


def end_to_end(
    bundle_dir: Path,
    device: torch.device,
    precision: Precision,
    plan: Plan,
    files: list[Path],
    compile: bool,
    processes: int = 1,
    in_flight: int | None = None,
    shared_engine: bool = False,
) -> float:
    """Images/s of read + decode + preprocess + engine + heads over the written studies.

    With ``processes`` > 1 the studies are shared among that many processes, each with its own
    analyser and engine on ``device``: several ``ortho-node worker`` processes on one host,
    which is how preparation (Python, under one GIL per process) uses a host's cores. With
    ``shared_engine`` they all send their images to one engine process instead (a prefork
    worker with ``worker.shared_engine``).
    """
    studies = collect_studies(files).studies
    wanted = (plan.e2e_images + 1) // 2
    warm, timed_studies = studies[:1], studies[1 : 1 + wanted]
    # By default two batches' worth of images in flight over all processes (two radiographs
    # per study): one batch is encoded while the studies of the next are read and prepared, as
    # in a worker with a queue. A prefork worker's child has one job in flight (--in-flight 1).
    concurrent = in_flight or max(2, plan.batch // processes)
    images = sum(len(s.paths) for s in timed_studies)
    if shared_engine:
        with tempfile.TemporaryDirectory(prefix="ortho-bench-engine-") as run_dir:
            engine = start_engine_process(EngineServerOptions(
                bundle_dir=bundle_dir, socket_path=Path(run_dir) / "engine.sock", device=str(device),
                max_batch=plan.batch, max_wait_ms=20, precision=precision.value, compile=compile,
            ))
            try:
                elapsed, mean_batches = _analyse_in_processes(
                    bundle_dir, device, precision, plan.batch, compile, warm, timed_studies, concurrent,
                    processes, engine_socket=str(engine.socket_path),
                )
            finally:
                engine.stop()
    elif processes == 1:
        elapsed, mean_batch = _analyse_timed(
            bundle_dir, device, precision, plan.batch, compile, warm, timed_studies, concurrent
        )
        mean_batches = [mean_batch]
    else:
        elapsed, mean_batches = _analyse_in_processes(
            bundle_dir, device, precision, plan.batch, compile, warm, timed_studies, concurrent,
            processes,
        )
    print(
        f"    end-to-end: {images} images, {processes} process(es)"
        f"{' sharing one engine process' if shared_engine else ''}, mean batch "
        f"{statistics.mean(mean_batches):.1f}, {concurrent} studies in flight per process"
    )
    return images / elapsed


def _analyser(
    bundle_dir: Path, device: torch.device, precision: Precision, batch: int, compile: bool,
    warm: Sequence[StudyFiles], engine_socket: str | None = None,
) -> StudyAnalyser:
    """A warm analyser, as a worker is before its first job: compiled (every batch bucket on a
    CPU, the one graph elsewhere) when ``compile``, and one study analysed. With
    ``engine_socket`` it encodes in that (already warm) engine process."""
    keep_freed_memory_for_reuse()  # as the worker and `ortho-node infer` do
    if engine_socket is not None:
        analyser = StudyAnalyser.from_bundle_dir(bundle_dir, engine_socket=engine_socket)
    else:
        bundle = load_bundle(bundle_dir, device=device)
        analyser = StudyAnalyser(
            bundle, max_batch=batch, max_wait_ms=20, precision=precision, compile=compile
        )
    try:
        if compile and engine_socket is None:
            analyser.engine.warmup()
        analyse_studies(analyser, warm, concurrent_studies=1)
    except BaseException:
        analyser.close()
        raise
    return analyser


def _analyse_timed(
    bundle_dir: Path, device: torch.device, precision: Precision, batch: int, compile: bool,
    warm: Sequence[StudyFiles], studies: Sequence[StudyFiles], concurrent: int,
) -> tuple[float, float]:
    with _analyser(bundle_dir, device, precision, batch, compile, warm) as analyser:
        start = time.perf_counter()
        analyse_studies(analyser, studies, concurrent_studies=concurrent)
        elapsed = time.perf_counter() - start
        return elapsed, analyser.engine.stats().mean_batch


def _process_share(
    bundle_dir: Path, device: str, precision: Precision, batch: int, compile: bool,
    warm: Sequence[StudyFiles], studies: Sequence[StudyFiles], concurrent: int, threads: int,
    ready: multiprocessing.Queue, go: Event, results: multiprocessing.Queue, engine_socket: str | None,
) -> None:
    """One process of a multi-process run: warm up, wait for the others, analyse its share."""
    configure_engine_threads(threads)
    with _analyser(bundle_dir, torch.device(device), precision, batch, compile, warm, engine_socket) as analyser:
        ready.put(os.getpid())
        go.wait()
        analyse_studies(analyser, studies, concurrent_studies=concurrent)
        results.put(analyser.engine.stats().mean_batch)


def _analyse_in_processes(
    bundle_dir: Path, device: torch.device, precision: Precision, batch: int, compile: bool,
    warm: Sequence[StudyFiles], studies: Sequence[StudyFiles], concurrent: int, processes: int,
    engine_socket: str | None = None,
) -> tuple[float, list[float]]:
    """Wall time from the moment every process is warm until the last one is done."""
    context = multiprocessing.get_context("spawn")  # no fork after torch started threads
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    workers = [
        context.Process(
            target=_process_share,
            args=(bundle_dir, str(device), precision, batch, compile, warm,
                  studies[index::processes], concurrent, threads, ready, go, results, engine_socket),
            daemon=True,
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        _gather(ready, workers, "warming up")
        go.set()
        start = time.perf_counter()
        mean_batches = _gather(results, workers, "analysing")
        elapsed = time.perf_counter() - start
    except BaseException:
        for worker in workers:  # the others would wait for a start signal that never comes
            worker.terminate()
        raise
    for worker in workers:
        worker.join()
    return elapsed, mean_batches


def _gather(
    source: multiprocessing.Queue, workers: Sequence[multiprocessing.process.BaseProcess],
    stage: str, timeout_s: float = 900.0,
) -> list[Any]:
    """One message from each worker; a worker that dies or a stage that outlasts
    ``timeout_s`` ends the run at once instead of leaving the others waiting."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < len(workers):
        try:
            received.append(source.get(timeout=1.0))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(
                    f"an end-to-end process failed while {stage} (exit code {failed[0]})"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"end-to-end processes still {stage} after {timeout_s:.0f} s")
    return received


def profile_end_to_end(
    bundle_dir: Path, device: torch.device, precision: Precision, plan: Plan,
    files: list[Path], count: int,
) -> None:
    """Where one process spends its time end to end: ``count`` studies analysed one after
    the other in this thread under cProfile (the engine's forward runs in its own thread, so
    it shows here as the wait for its result). Prints the wall time per image, the engine's
    forward time, and the functions with the most time of their own and in all."""
    import cProfile
    import pstats

    studies = collect_studies(files).studies
    warm, chosen = studies[:1], studies[1 : 1 + count]
    images = sum(len(s.paths) for s in chosen)
    with _analyser(bundle_dir, device, precision, plan.batch, False, warm) as analyser:
        before = analyser.engine.stats().forward_seconds
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for study in chosen:
            analyser.analyse(read_study(study), study_instance_uid=study.study_instance_uid)
        profiler.disable()
        elapsed = time.perf_counter() - start
        forward = analyser.engine.stats().forward_seconds - before
    print(
        f"    profile: {images} images one study at a time, {elapsed / images * 1e3:.2f} ms "
        f"per image under cProfile, of which the engine's forward {forward / images * 1e3:.2f} ms"
    )
    stats = pstats.Stats(profiler)
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order).print_stats(30)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if native_bf16(device) else "no native bf16"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (
        f"CPU, {torch.get_num_threads()} threads, {capability}, {bf16} "
        f"(torch {torch.__version__}; OMP_WAIT_POLICY {policy}; load average {load})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--models", default="vits,vitl", help="comma list of vits, vitl")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and images")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoder (worker.compile)"
    )
    parser.add_argument(
        "--shared-engine", action="store_true",
        help="the --processes send their images to one engine process (worker.shared_engine) "
        "instead of each running its own engine",
    )
    parser.add_argument(
        "--processes", type=int, default=1,
        help="end to end in this many processes, each with its own engine on the device "
        "(several worker processes on one host; default 1)",
    )
    parser.add_argument(
        "--in-flight", type=int, default=None,
        help="studies in flight per process (default: two batches' worth over all processes; "
        "1 is a prefork worker's child, which runs one job at a time)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="STUDIES",
        help="instead of raw and end-to-end figures, analyse this many studies one at a time "
        "under cProfile and print where the time goes",
    )
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.in_flight is not None and args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = [Precision(p.strip()) for p in args.precisions.split(",") if p.strip()]

    print(f"device: {describe_device(device)}" + (", torch.compile" if args.compile else ""))
    peaks = {
        Precision.FP32: matmul_peak(device, torch.float32, args.quick),
        Precision.BF16: matmul_peak(device, torch.bfloat16, args.quick),
    }
    print(
        f"matmul peak: fp32 {peaks[Precision.FP32]:,.1f} GFLOP/s, "
        f"bf16 {peaks[Precision.BF16]:,.1f} GFLOP/s"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ortho-bench-infer-") as tmp:
        work = Path(tmp)
        most = max(
            plan_for(device, m, p, args.quick).e2e_images + 2 for m in models for p in precisions
        )
        if args.profile:
            most = 2 * (args.profile + 1)
        print(f"writing {most} knee radiographs (1024 x 1024 DX) ...")
        files = write_radiographs(work / "dicom", most)
        for model in models:
            label, arch = MODELS[model]
            encoder = random_encoder(arch, torch.device("cpu"))
            bundle_dir = write_bundle(encoder, work)
            encoder = encoder.to(device)
            flops = forward_flops(encoder, device)
            for precision in precisions:
                if args.compile:
                    # torch.compile keeps at most eight graphs per function across the process;
                    # a worker compiles one model, this benchmark several: start afresh each time.
                    torch._dynamo.reset()
                plan = plan_for(device, model, precision, args.quick)
                if args.profile:
                    profile_end_to_end(bundle_dir, device, precision, plan, files, args.profile)
                    continue
                print(
                    f"  {label} {precision.value}: batch {plan.batch}, "
                    f"{plan.iterations} timed iterations"
                )
                raw = raw_forward(encoder, device, precision, plan, args.compile, flops)
                print(
                    f"    raw: bf16 product rate sampled around the iterations "
                    f"{raw.peak_low:,.0f}-{raw.peak_high:,.0f} GFLOP/s"
                )
                e2e = end_to_end(
                    bundle_dir, device, precision, plan, files, args.compile, args.processes,
                    args.in_flight, args.shared_engine,
                )
                rows.append((label, precision, plan.batch, flops, raw, e2e))
            del encoder

    print()
    header = (
        f"{'model':9} {'prec':5} {'batch':>5} {'GFLOP/img':>9} {'raw img/s':>10} {'GFLOP/s':>9} "
        f"{'%fp32pk':>8} {'%bf16pk':>8} {'%bf16now':>9} {'e2e img/s':>10} {'e2e/raw':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, precision, batch, flops, raw, e2e in rows:
        achieved = flops * raw.images_per_s / 1e9
        print(
            f"{label:9} {precision.value:5} {batch:>5} {flops / 1e9:>9.1f} {raw.images_per_s:>10.2f} "
            f"{achieved:>9.1f} {achieved / peaks[Precision.FP32]:>8.0%} "
            f"{achieved / peaks[Precision.BF16]:>8.0%} {raw.paired_share:>9.0%} "
            f"{e2e:>10.2f} {e2e / raw.images_per_s:>8.0%}"
        )
    print()
    print(
        "%fp32pk, %bf16pk: mean forward against the best product rate seen at the start;\n"
        "%bf16now: median over iterations of each forward against the bf16 rate sampled just\n"
        "before and after it (the fair figure where the machine's own rate moves).\n"
        "targets: raw forward >= 70% of the bf16 matmul peak (%bf16now, and %bf16pk where the rate\n"
        "is steady); end-to-end >= 80% of raw (e2e/raw)"
    )
    if device.type == "cpu":
        print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
