"""The resident inference engine: one bundle on one device, micro-batching across jobs.

A worker process loads its bundle once and keeps it for its whole life. Jobs run in the
threads of one process (Celery's thread pool), or in the children of a prefork pool, which
either run an engine each or send their images to one engine process
(:mod:`~ortho_node.model.engine_server`, ``worker.shared_engine``); each job hands its images to
:meth:`InferenceEngine.submit` and gets a :class:`~concurrent.futures.Future`. One background
thread merges the requests of all callers into batches of up to ``max_batch`` images, waiting
at most ``max_wait_ms`` after the oldest waiting request (less when a caller says by
:meth:`InferenceEngine.flush` that nothing more is coming), and runs the encoder under
``torch.inference_mode()`` (and bf16 autocast when the precision says so). A request larger
than ``max_batch`` (an MR series) is spread over consecutive batches.

Each request's future receives an :class:`~ortho_node.model.encoder.EncoderOutput` with its
own images only: CLS and patch tokens as float32 in host memory, as ordinary tensors (not
inference tensors), so task heads and gradient explanations run on them per job. On a GPU the
features are copied to the host once per batch: the heads (one norm and one linear layer) and
their explanations run on the CPU, so a job's thread never waits for the device, whose queue
holds the next batch's forward, and a GPU process touches the device only in the engine.

Failures stay with their request:

- input that cannot be encoded (wrong type, shape, size, dtype; NaN or infinite values) is
  refused before batching: the returned future carries the error, no other request sees it;
- if a batched forward pass raises (out of memory, a kernel error), each request of that
  batch is run again alone, so only the culprit fails;
- non-finite encoder output fails only the request whose images produced it.

Precision (:class:`Precision`): ``fp32``; ``bf16`` (autocast); or ``auto``, which picks bf16
only where the hardware computes it natively: CUDA devices with bf16 support and CPUs with AMX
or AVX512-BF16. Measured on a 2-core AVX2 CPU without them (``bench/infer``), bf16 matrix
products run 7 to 100 times slower than fp32, so ``auto`` means fp32 there.

In bf16 the engine runs a copy of the encoder whose linear layers hold bf16 weights (norms,
embeddings and RoPE periods are shared with the bundle and stay float32). Autocast would cast
those same weights to bf16 on every forward pass, so the results are bit-identical, without the
cast: on a 2-core AMX CPU, ViT-L/16 runs 24-29 % faster. On a CPU in bf16 its attention also
runs with the key sequence padded to a multiple of 16 (:mod:`ortho_node.model.attention`). The
bundle's own encoder is not touched. :func:`inference_model` is that forward, shared with
``bench/infer``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import enum
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch._inductor.config as inductor_config

from ortho_node.model.attention import CpuBf16Attention
from ortho_node.model.bundle import LoadedBundle
from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.threads import engine_threads, use_engine_threads

__all__ = [
    "MAX_REQUEST_IMAGES",
    "EncodingError",
    "EngineClosedError",
    "EngineStats",
    "InferenceEngine",
    "all_finite",
    "Precision",
    "check_device_available",
    "batch_buckets",
    "bucket_plan",
    "compile_any_batch",
    "compile_for_inference",
    "compile_frozen",
    "images_to_take",
    "inference_model",
    "native_bf16",
    "with_bf16_linear_weights",
    "resolve_precision",
    "validate_images",
]

log = logging.getLogger(__name__)

MAX_REQUEST_IMAGES = 4096
"""Largest request accepted (a 4096-slice stack is far beyond any real series)."""
_RECENT_BATCHES = 1024


class Precision(str, enum.Enum):
    """Arithmetic of the encoder forward pass."""

    AUTO = "auto"
    """bf16 where the device computes it natively (see the module docstring), else fp32."""
    FP32 = "fp32"
    """float32 throughout."""
    BF16 = "bf16"
    """bf16 autocast (matrix products and convolutions in bf16, norms and softmax in fp32)."""


class EngineClosedError(RuntimeError):
    """The engine was closed; it takes no new requests."""


class EncodingError(RuntimeError):
    """The encoder could not encode a request's images; the message says why."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products natively (fast).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AMX tiles or AVX512-BF16 (torch's own
    CPU feature probes). Anything else: False.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def with_bf16_linear_weights(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` weights and biases are bf16 (what autocast would
    compute with); every other parameter and buffer is shared with ``module``, not copied."""
    memo: dict[int, Any] = {}
    linear_tensors: set[int] = set()
    for child in module.modules():
        if isinstance(child, torch.nn.Linear):
            for parameter in child.parameters(recurse=False):
                linear_tensors.add(id(parameter))
                memo[id(parameter)] = torch.nn.Parameter(
                    parameter.detach().to(torch.bfloat16), requires_grad=False
                )
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in linear_tensors:
            memo[id(tensor)] = tensor
    return copy.deepcopy(module, memo)


def inference_model(
    encoder: torch.nn.Module, precision: Precision, device: torch.device
) -> torch.nn.Module:
    """The module the engine runs for ``encoder`` at a resolved ``precision`` on ``device``:
    the encoder itself in fp32; in bf16 a copy with bf16 linear weights
    (:func:`with_bf16_linear_weights`), on a CPU wrapped in
    :class:`~ortho_node.model.attention.CpuBf16Attention`."""
    if precision is Precision.AUTO:
        raise ValueError("resolve the precision first (resolve_precision)")
    if precision is Precision.FP32:
        return encoder
    model = with_bf16_linear_weights(encoder)
    return CpuBf16Attention(model) if device.type == "cpu" else model


_MAX_COMPILED_BATCH_SHAPES = 8
"""torch.compile keeps at most eight graphs per function (``recompile_limit``)."""


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a compiled CPU engine runs: powers of two below ``max_batch``, and
    ``max_batch`` itself; the eight largest when there would be more. Every forward has one of
    these sizes (:func:`bucket_plan`), so a compiled engine never meets a ninth shape."""
    _check_number("max_batch", max_batch, low=1, integer=True)
    sizes = sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch} | {max_batch})
    return tuple(sizes[-_MAX_COMPILED_BATCH_SHAPES:])


def bucket_plan(count: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """How a compiled CPU engine runs ``count`` images: ``(start, stop, bucket)`` slices, each
    run as one forward of ``bucket`` images: the largest buckets that fit, then the rest padded
    with blank images up to the smallest bucket (6 = 4 + 2). On a CPU every padded image costs
    as much as a real one (ViT-L/16 bf16 on 2 cores: 6 images as 4 + 2 took 1.9 s, padded to 8
    2.4 s). Without buckets (eager, or compiled for any batch size on a GPU) one forward of
    ``count``.
    """
    if not buckets:
        return [(0, count, count)]
    plan, start = [], 0
    while start < count:
        left = count - start
        size = max((b for b in buckets if b <= left), default=None)
        take = size if size is not None else left
        plan.append((start, start + take, size if size is not None else buckets[0]))
        start += take
    return plan


def images_to_take(
    waiting: int, max_batch: int, buckets: Sequence[int], *, more_coming: bool = True
) -> int:
    """How many of ``waiting`` images the next forward takes: up to ``max_batch``; where a
    compiled CPU engine splits batches into ``buckets`` (:func:`bucket_plan`) and
    ``more_coming``, the largest bucket they fill. The rest waits for the next forward, which
    newcomers join, instead of running now as smaller buckets (14 waiting: 8 now, not
    8 + 4 + 2). With nothing more coming (a flush, closing) everything waiting runs now, split
    into buckets inside the one forward, so none of it waits out ``max_wait_ms``."""
    if not buckets or not more_coming:
        return max_batch
    return max((b for b in buckets if b <= waiting), default=max_batch)


def compile_for_inference(
    module: torch.nn.Module, device: torch.device, max_batch: int
) -> tuple[Callable[[torch.Tensor], EncoderOutput], tuple[int, ...]]:
    """``torch.compile`` as the engine uses it for an encoder on ``device``, and the batch
    sizes the compiled encoder must be given (``()``: any up to ``max_batch``). On a CPU
    :func:`compile_frozen` with :func:`batch_buckets`; elsewhere :func:`compile_any_batch`."""
    if device.type == "cpu":
        return compile_frozen(module), batch_buckets(max_batch)
    return compile_any_batch(module), ()


def compile_frozen(module: torch.nn.Module) -> Callable[[torch.Tensor], EncoderOutput]:
    """``torch.compile`` for a CPU: static shapes, one graph per batch bucket
    (:func:`batch_buckets`), and inductor's *freezing*: weights folded in as constants, so
    linear layers become oneDNN kernels with pre-packed weights and their bias and GELU fused.
    Matrix products are also autotuned between ATen/oneDNN and inductor's C++ GEMM
    template (AMX micro-kernels with fused epilogues), about a third of a minute per shape.

    Freezing has to be on while dynamo *traces* (it decides then whether parameters may
    become constants); ``torch.compile(options={"freezing": True})`` only reaches inductor,
    and with it alone the weights stayed graph inputs. Each call therefore runs with the
    global flag set. Measured on a 2-core AMX CPU (bf16, each forward against the matmul rate
    sampled around it, forwards interleaved in one process): ViT-S/16 at batch 32 at 32 %
    without real freezing, 39 % frozen and autotuned, 47 % with padded attention keys too;
    ViT-L/16 at batch 16 58 %, 69-71 %. Freezing fails with dynamic shapes in torch 2.14,
    hence the buckets. Call only under ``torch.inference_mode`` (the engine does)."""
    options: dict[str, Any] = {
        "freezing": True,
        "max_autotune": True,
        "max_autotune_gemm_backends": "CPP,ATEN",
        "autotune_num_choices_displayed": 0,  # no timing tables on stderr in the worker log
    }
    compiled = torch.compile(module, dynamic=False, options=options)

    def frozen(images: torch.Tensor) -> EncoderOutput:
        with inductor_config.patch(freezing=True):
            return compiled(images)

    return frozen


def compile_any_batch(
    module: torch.nn.Module, *, backend: Any = "inductor"
) -> Callable[[torch.Tensor], EncoderOutput]:
    """``torch.compile`` of an encoder with the batch dimension dynamic: one graph serves
    every batch size, so a GPU worker compiles once (ViT-L/16 on an H200: 116 s) instead of
    once per batch bucket. Dynamo specialises sizes 0 and 1, so a lone image runs with a blank
    one beside it (a GPU does two images in the time of one). Weights are not frozen: on an
    H200 in bf16 this graph ran ViT-L/16 at batch 64 at 2,689 images/s (45 % of the bf16
    matrix-product rate; frozen static shapes 44 %, eager 24 %), ViT-S/16 at batch 256 at
    20,071 (25 %; eager 11 %). ``backend`` is for tests (a compile counter)."""
    compiled = torch.compile(module, backend=backend)

    def any_batch(images: torch.Tensor) -> EncoderOutput:
        count = images.shape[0]
        if count == 1:
            images = torch.cat([images, torch.zeros_like(images)])
        elif torch.is_inference_mode_enabled() and not images.is_inference():
            # Dynamo guards on dispatch keys, which differ for inference tensors: a batch
            # already on the device (not copied in inference mode) would compile again.
            images = images.clone()
        torch._dynamo.mark_dynamic(images, 0)
        output = compiled(images)
        if count == 1:
            return EncoderOutput(cls=output.cls[:1], patches=output.patches[:1], grid=output.grid)
        return output

    return any_batch


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``; other values pass through.

    Raises
    ------
    ValueError
        For an unknown precision name.
    """
    try:
        chosen = Precision(precision)
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise ValueError(f"precision must be one of {allowed}, got {precision!r}") from None
    if chosen is not Precision.AUTO:
        return chosen
    return Precision.BF16 if native_bf16(device) else Precision.FP32


def check_device_available(device: str | torch.device) -> torch.device:
    """The device, after checking this machine has it (a CUDA index that exists).

    Raises
    ------
    ValueError
        A CUDA device is asked for and CUDA is not available, or the index is out of range.
    """
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for, but CUDA is not available on this "
                "machine (no GPU, driver or CUDA build of torch); use 'cpu'"
            )
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has {count} GPU(s)"
            )
    return target


@dataclass(frozen=True)
class EngineStats:
    """Counters of an engine since it started (see :meth:`InferenceEngine.stats`).

    Attributes
    ----------
    requests, images : int
        Requests accepted and their images.
    batches : int
        Forward passes that succeeded (isolation re-runs included).
    failed_requests : int
        Requests whose future got an error (refused input included).
    isolation_reruns : int
        Batches that failed as a whole and were re-run request by request.
    largest_batch : int
        Most images in one forward pass.
    forward_seconds : float
        Wall time spent in successful encoder forward passes.
    recent_batch_sizes : tuple of int
        Images per forward pass, for the last 1024 passes, oldest first.
    recent_batch_requests : tuple of int
        Requests that shared each of those passes.
    """

    requests: int
    images: int
    batches: int
    failed_requests: int
    isolation_reruns: int
    largest_batch: int
    forward_seconds: float
    recent_batch_sizes: tuple[int, ...]
    recent_batch_requests: tuple[int, ...]

    @property
    def mean_batch(self) -> float:
        """Mean images per recent forward pass (0 before the first)."""
        sizes = self.recent_batch_sizes
        return sum(sizes) / len(sizes) if sizes else 0.0


@dataclass(eq=False)
class _Request:
    images: torch.Tensor
    future: Future[EncoderOutput]
    arrived: float
    cursor: int = 0
    cls_parts: list[torch.Tensor] = field(default_factory=list)
    patch_parts: list[torch.Tensor] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    @property
    def remaining(self) -> int:
        return self.count - self.cursor


@dataclass(frozen=True)
class _Segment:
    """Images ``start:stop`` of one request, as part of one forward pass."""

    request: _Request
    start: int
    stop: int

    @property
    def images(self) -> torch.Tensor:
        return self.request.images[self.start : self.stop]


def _check_number(name: str, value: object, *, low: float, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    if not value >= low:
        raise ValueError(f"{name} must be >= {low:g}, got {value}")


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN and no infinity. One reduction (NaN
    propagates through the minimum and the maximum) instead of a boolean tensor the size of
    the input: a batch of 16 images in 0.14 ms instead of 2.4 ms on a CPU."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def validate_images(
    images: torch.Tensor | Sequence[torch.Tensor], input_shape: tuple[int, int, int]
) -> torch.Tensor:
    """``images`` as one contiguous float32 ``[n, C, H, W]`` batch in host memory, checked.

    Raises
    ------
    TypeError
        Not a tensor or a non-empty sequence of tensors; not floating point.
    ValueError
        Another shape than ``[n, *input_shape]``, too many images, NaN or infinite values.
    """
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.ndim == 3 else images
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images or not all(isinstance(item, torch.Tensor) for item in images):
            raise TypeError("images must be a non-empty sequence of torch.Tensor")
        shapes = {tuple(item.shape) for item in images}
        if len(shapes) != 1:
            raise ValueError(f"images in one request must share a shape, got {sorted(shapes)}")
        batch = torch.stack(list(images))
    else:
        raise TypeError(
            f"images must be a torch.Tensor or a sequence of them, got {type(images).__name__}"
        )
    expected = f"[n, {', '.join(str(v) for v in input_shape)}]"
    if batch.ndim != 4 or tuple(batch.shape[1:]) != input_shape:
        raise ValueError(f"images must have shape {expected}, got {tuple(batch.shape)}")
    if not 1 <= batch.shape[0] <= MAX_REQUEST_IMAGES:
        raise ValueError(
            f"a request must hold 1-{MAX_REQUEST_IMAGES} images, got {batch.shape[0]}"
        )
    if not batch.is_floating_point():
        raise TypeError(f"images must be floating point, got {batch.dtype}")
    if not all_finite(batch):
        raise ValueError("images contain NaN or infinite values")
    # Every request in host memory: requests from anywhere batch together (one already
    # on the device comes back once, a rare case), and the batch goes over in one copy.
    return batch.detach().to(device="cpu", dtype=torch.float32).contiguous()


class InferenceEngine:
    """A bundle's encoder behind a thread-safe, batching ``submit`` (see the module docstring).

    Parameters
    ----------
    bundle : LoadedBundle
        The loaded bundle; the engine runs on ``bundle.device``.
    max_batch : int, optional
        Most images in one forward pass (default 32).
    max_wait_ms : float, optional
        Longest wait, after the oldest waiting request arrived, for more requests to fill a
        batch (default 20 ms). 0 runs whatever is waiting at once.
    precision : Precision or str, optional
        ``"auto"`` (default), ``"fp32"`` or ``"bf16"``.
    compile : bool, optional
        Run the encoder through :func:`compile_for_inference`. On a CPU: static shapes, frozen
        weights, batches run in :func:`batch_buckets` sizes (:func:`bucket_plan`), the first
        batch of each bucket pays its compilation (on a 2-core CPU about 20 s for ViT-S, 50 s
        for ViT-L, with the matrix-product autotuning). On a GPU: one graph for every batch
        size (:func:`compile_any_batch`; on an H200 31 s for ViT-S, 116 s for ViT-L). Call
        :meth:`warmup` to pay it all at start.

    Raises
    ------
    TypeError, ValueError
        For bad arguments.
    """

    def __init__(
        self,
        bundle: LoadedBundle,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 20.0,
        precision: Precision | str = Precision.AUTO,
        compile: bool = False,
    ) -> None:
        if not isinstance(bundle, LoadedBundle):
            raise TypeError(f"bundle must be a LoadedBundle, got {type(bundle).__name__}")
        if any(parameter.is_meta for parameter in bundle.encoder.parameters()):
            raise ValueError("the bundle was loaded without its encoder weights (encoder_weights=False): nothing to run")
        _check_number("max_batch", max_batch, low=1, integer=True)
        _check_number("max_wait_ms", max_wait_ms, low=0, integer=False)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
        engine_threads()  # the process's torch threads, before any preparing thread changes them
        self._bundle = bundle
        self._max_batch = max_batch
        self._max_wait_s = float(max_wait_ms) / 1000.0
        self._precision = resolve_precision(precision, bundle.device)
        model = inference_model(bundle.encoder, self._precision, bundle.device)
        self._model: Callable[[torch.Tensor], EncoderOutput] = model
        self._buckets: tuple[int, ...] = ()
        if compile:
            self._model, self._buckets = compile_for_inference(model, bundle.device, max_batch)
        self._input_shape = (bundle.encoder.in_chans, *bundle.manifest.input_size)
        self._condition = threading.Condition()
        self._pending: collections.deque[_Request] = collections.deque()
        self._pending_images = 0
        self._closing = False
        self._flush = False
        self._counts = collections.Counter[str]()
        self._largest_batch = 0
        self._forward_seconds = 0.0
        self._recent_sizes: collections.deque[int] = collections.deque(maxlen=_RECENT_BATCHES)
        self._recent_requests: collections.deque[int] = collections.deque(maxlen=_RECENT_BATCHES)
        self._thread = threading.Thread(
            target=self._serve, name=f"ortho-inference-{bundle.manifest.name}", daemon=True
        )
        self._thread.start()
        log.info(
            "inference engine: %s %s on %s, %s, max batch %d, max wait %.1f ms%s",
            bundle.manifest.name,
            bundle.manifest.version,
            bundle.device,
            self._precision.value,
            max_batch,
            max_wait_ms,
            ", compiled" if compile else "",
        )

    # ------------------------------------------------------------------ properties

    @property
    def bundle(self) -> LoadedBundle:
        """The bundle the engine runs."""
        return self._bundle

    @property
    def device(self) -> torch.device:
        """Where the encoder runs and where outputs live."""
        return self._bundle.device

    @property
    def precision(self) -> Precision:
        """The resolved precision (never ``auto``)."""
        return self._precision

    @property
    def max_batch(self) -> int:
        """Most images in one forward pass."""
        return self._max_batch

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` every image must have."""
        return self._input_shape  # type: ignore[return-value]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    # ------------------------------------------------------------------ public API

    def flush(self) -> None:
        """Run what is waiting without waiting out ``max_wait_ms``: for a caller that knows no
        more images are coming soon (e.g. every study in flight has submitted all of its).
        The next batch fires at once, with whatever is pending then; with nothing pending it
        does nothing (a later request waits for company as usual)."""
        with self._condition:
            if self._pending:
                self._flush = True
                self._condition.notify_all()

    def submit(self, images: torch.Tensor | Sequence[torch.Tensor]) -> Future[EncoderOutput]:
        """Queue images for encoding.

        Parameters
        ----------
        images : torch.Tensor or sequence of torch.Tensor
            ``[n, C, H, W]`` or ``[C, H, W]``, or a sequence of ``[C, H, W]`` tensors:
            normalised float images of the bundle's input size (:attr:`input_shape`).

        Returns
        -------
        concurrent.futures.Future
            Resolves to an :class:`EncoderOutput` with ``n`` rows, in input order. Input that
            cannot be encoded resolves to ``TypeError`` / ``ValueError`` (never raised
            here, so a caller handles every per-image failure in one place); an encoder
            failure to :class:`EncodingError`.

        Raises
        ------
        EngineClosedError
            If the engine was closed.
        """
        future: Future[EncoderOutput] = Future()
        try:
            batch = self._validated(images)
        except (TypeError, ValueError) as exc:
            with self._condition:
                if self._closing:
                    raise EngineClosedError("the inference engine is closed") from None
                self._counts["requests"] += 1
                self._counts["failed_requests"] += 1
            future.set_exception(exc)
            return future
        request = _Request(images=batch, future=future, arrived=time.monotonic())
        with self._condition:
            if self._closing:
                raise EngineClosedError("the inference engine is closed")
            self._pending.append(request)
            self._pending_images += request.count
            self._counts["requests"] += 1
            self._counts["images"] += request.count
            self._condition.notify_all()
        return future

    def encode(
        self, images: torch.Tensor | Sequence[torch.Tensor], *, timeout: float | None = None
    ) -> EncoderOutput:
        """:meth:`submit` and wait for the result (raises what the future carries)."""
        return self.submit(images).result(timeout=timeout)

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes the compiled encoder runs (a batch runs as these, :func:`bucket_plan`); () when eager."""
        return self._buckets

    def warmup(self) -> None:
        """Run blank batches (pays CUDA set-up, and ``torch.compile`` of every batch bucket, now)."""
        for size in self._buckets or (self._max_batch,):
            self.encode(torch.zeros((size, *self._input_shape), dtype=torch.float32))

    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters."""
        with self._condition:
            return EngineStats(
                requests=self._counts["requests"],
                images=self._counts["images"],
                batches=self._counts["batches"],
                failed_requests=self._counts["failed_requests"],
                isolation_reruns=self._counts["isolation_reruns"],
                largest_batch=self._largest_batch,
                forward_seconds=self._forward_seconds,
                recent_batch_sizes=tuple(self._recent_sizes),
                recent_batch_requests=tuple(self._recent_requests),
            )

    def close(self, *, timeout: float | None = 60.0) -> None:
        """Stop taking requests, finish the ones already queued, stop the thread.

        Parameters
        ----------
        timeout : float or None, optional
            Seconds to wait for the queued work (default 60); None waits for ever.
        """
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("inference engine still busy %s s after close", timeout)

    def __enter__(self) -> "InferenceEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ validation

    def _validated(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        batch = validate_images(images, self._input_shape)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy to the GPU overlap
        return batch

    # ------------------------------------------------------------------ the batching thread

    def _serve(self) -> None:
        segments: list[_Segment] | None = []
        use_engine_threads()  # the forward gets the process's threads (ortho_node.model.threads)
        try:
            while True:
                segments = self._next_batch()
                if segments is None:
                    return
                self._run(segments)
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave callers waiting
            log.exception("inference engine stopped by an unexpected error")
            self._abandon(segments, exc)

    def _abandon(self, segments: list[_Segment] | None, cause: BaseException) -> None:
        """Close the engine and fail every request it holds: the current batch's and the
        queued ones (the thread is about to end; nothing would ever resolve them)."""
        with self._condition:
            self._closing = True
            requests = [segment.request for segment in segments or ()] + list(self._pending)
            self._pending.clear()
            self._pending_images = 0
        error = EncodingError(f"the inference engine stopped: {type(cause).__name__}")
        error.__cause__ = cause
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)

    def _next_batch(self) -> list[_Segment] | None:
        with self._condition:
            while not self._pending and not self._closing:
                self._condition.wait()
            if not self._pending:
                return None
            deadline = self._pending[0].arrived + self._max_wait_s
            while self._pending_images < self._max_batch and not self._closing and not self._flush:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            flushing, self._flush = self._flush, False
            segments: list[_Segment] = []
            room = images_to_take(
                self._pending_images, self._max_batch, self._buckets,
                more_coming=not (flushing or self._closing),
            )
            while self._pending and room:
                request = self._pending[0]
                if request.cursor == 0 and not request.future.set_running_or_notify_cancel():
                    self._drop(request)  # cancelled by its caller before it ran
                    continue
                take = min(room, request.remaining)
                segments.append(_Segment(request, request.cursor, request.cursor + take))
                request.cursor += take
                room -= take
                self._pending_images -= take
                if request.remaining == 0:
                    self._pending.popleft()
            return segments

    def _drop(self, request: _Request) -> None:
        self._pending.popleft()
        self._pending_images -= request.remaining

    def _run(self, segments: list[_Segment]) -> None:
        live = [s for s in segments if not s.request.future.done()]
        if not live:
            return
        started = time.perf_counter()
        try:
            images = live[0].images if len(live) == 1 else torch.cat([s.images for s in live])
            output = self._forward(images)
        except Exception as exc:  # noqa: BLE001 - the batching thread's boundary: never dies
            if len(live) > 1:
                log.warning("batch of %d requests failed (%s); re-running them one by one",
                            len(live), type(exc).__name__)
                self._count("isolation_reruns")
                for segment in live:
                    self._run([segment])
                return
            self._fail(live[0].request, EncodingError(f"the encoder failed: {exc}"), cause=exc)
            return
        self._record_batch(images.shape[0], len(live), time.perf_counter() - started)
        offset = 0
        for segment in live:
            count = segment.stop - segment.start
            self._deliver(segment, output.cls[offset : offset + count],
                          output.patches[offset : offset + count], output.grid)
            offset += count

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._precision is Precision.BF16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, images: torch.Tensor) -> EncoderOutput:
        chunks = []
        for start, stop, size in bucket_plan(images.shape[0], self._buckets):
            chunk = images[start:stop]
            if size > stop - start:  # blank images up to the bucket: no new shape to compile
                # Padded here, outside inference mode, so that every chunk is the same kind of
                # tensor: dynamo guards on it and would compile a bucket twice otherwise.
                chunk = torch.cat([chunk, chunk.new_zeros((size - (stop - start), *chunk.shape[1:]))])
            chunks.append((chunk, stop - start))
        cls_parts, patch_parts, grid = [], [], (0, 0)
        with torch.inference_mode(), self._autocast():
            for chunk, count in chunks:
                output = self._model(chunk.to(self.device, non_blocking=True))
                cls_parts.append(output.cls[:count].float())
                patch_parts.append(output.patches[:count].float())
                grid = output.grid
        cls, patches = _joined(cls_parts), _joined(patch_parts)
        if cls.device.type == "cuda":
            # One copy per batch into pinned host memory, then wait for it (module docstring):
            # the copy runs on the current stream of the device the features are on.
            source = cls.device
            cls, patches = cls.to("cpu", non_blocking=True), patches.to("cpu", non_blocking=True)
            torch.cuda.current_stream(source).synchronize()
        elif cls.device.type != "cpu":
            cls, patches = cls.cpu(), patches.cpu()
        return EncoderOutput(cls=cls, patches=patches, grid=grid)

    def _deliver(
        self, segment: _Segment, cls: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]
    ) -> None:
        request = segment.request
        if request.future.done():
            return
        if not (all_finite(cls) and all_finite(patches)):
            self._fail(request, EncodingError("the encoder produced non-finite features"))
            return
        # Cloned outside inference mode: ordinary tensors that autograd (explanations) accepts.
        request.cls_parts.append(cls.clone())
        request.patch_parts.append(patches.clone())
        if segment.stop < request.count:
            return
        result = EncoderOutput(
            cls=_joined(request.cls_parts), patches=_joined(request.patch_parts), grid=grid
        )
        request.cls_parts.clear()
        request.patch_parts.clear()
        request.future.set_result(result)

    def _fail(
        self, request: _Request, error: Exception, *, cause: BaseException | None = None
    ) -> None:
        if cause is not None:
            error.__cause__ = cause
        self._count("failed_requests")
        with self._condition:
            if request.remaining and request in self._pending:
                # The rest of a request spread over several batches is not worth running.
                self._pending.remove(request)
                self._pending_images -= request.remaining
        request.cls_parts.clear()
        request.patch_parts.clear()
        if not request.future.done():
            request.future.set_exception(error)

    def _count(self, name: str) -> None:
        with self._condition:
            self._counts[name] += 1

    def _record_batch(self, images: int, requests: int, seconds: float) -> None:
        with self._condition:
            self._counts["batches"] += 1
            self._forward_seconds += seconds
            self._largest_batch = max(self._largest_batch, images)
            self._recent_sizes.append(images)
            self._recent_requests.append(requests)


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)
