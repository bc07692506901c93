"""Study analysis: DICOM instances of one study in, :class:`StudyFindings` out.

:class:`StudyAnalyser` is what a worker holds for its whole life (one per process, shared by
all job threads). :meth:`StudyAnalyser.analyse` runs, for one study:

1. **Scope gate.** Every instance is screened against the reportable heads' scopes (headers
   only). A study with no image in scope is answered with ``out_of_scope_reason`` (each
   distinct per-image reason once): a chest CR, a head MR, a Secondary Capture, an image
   without Pixel Data. Nothing is guessed.
2. **Heads and sides.** A head is considered when the study has its modality and body part
   (an X-ray study does not list the MRI heads, a knee study not the hip heads). For a
   paired body part it answers per side (Image / Frame / series Laterality; an image of
   unknown side is never guessed onto one). A side the head cannot read (only a lateral
   view, no series in the head's planes, content out of distribution) gets a
   ``TaskOutcome(OUT_OF_SCOPE)``; a side whose images failed to decode or encode gets
   ``TaskOutcome(FAILED)``; both with the reason.
3. **Inputs** (:mod:`.study_inputs`): radiographs of the side in the head's views (AP/PA for
   the KL heads), or the series the head prefers among the side's MR series; each prepared
   once for all heads.
4. **Encoding** through the :class:`~ortho_node.model.engine.InferenceEngine`: each input is
   submitted as soon as it is prepared (the encoder works while the next one is decoded);
   the inputs share batches with each other and with the other jobs of the worker.
5. **Heads** (:mod:`.explain`): radiograph heads average their logits over the side's images
   in scope (each image weighs the same: a repeated AP or an AP plus a PA of one knee are one
   answer); MR heads pool the series' slices. Calibrated probabilities and the decision come
   from the head's spec; the explanation map is projected onto the key image or key slice in
   its own orientation (a left knee's map lands on the left knee image, flips undone).

If every considered head is out of scope, the study is out of scope as a whole (the outcomes
are kept). Images that fail are logged with hashed UIDs only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydicom.dataset import Dataset

import ortho_node
from ortho_node.model.bundle import LoadedBundle, load_bundle
from ortho_node.model.calibration import predict
from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.engine import InferenceEngine, Precision, check_device_available
from ortho_node.model.engine_client import RemoteEngine
from ortho_node.model.explain import evaluate_head
from ortho_node.model.findings import (
    Finding,
    ImageRef,
    Laterality,
    ModelIdentity,
    OutcomeStatus,
    StudyFindings,
    TaskOutcome,
)
from ortho_node.model.manifest import MANIFEST_FILE, BundleError
from ortho_node.model.preprocess import PreprocessConfig
from ortho_node.model.scope import (
    ContentLimits,
    ScopeRule,
    rule_mismatch,
    study_out_of_scope_reason,
)
from ortho_node.model.series import SliceSampling
from ortho_node.model.study_inputs import (
    HeadPlan,
    InputCache,
    ModelInput,
    Problem,
    ScreenedImage,
    screen_images,
)
from ortho_node.model.threads import single_threaded
from ortho_node.privacy import uid_ref

__all__ = ["DEMO_BUNDLE_DIR", "StudyAnalyser", "default_bundle_dir"]

log = logging.getLogger(__name__)

DEMO_BUNDLE_DIR = Path(ortho_node.__file__).resolve().parent / "assets" / "demo_bundle"
"""Where the packaged demo bundle (trained on phantoms, synthetic) lives."""



def _outcome_name(outcome: TaskOutcome) -> str:
    side = {Laterality.LEFT: " (left)", Laterality.RIGHT: " (right)"}.get(outcome.laterality, "")
    return outcome.task + side


def default_bundle_dir() -> Path:
    """The packaged demo bundle, for a node with no ``worker.bundle`` configured.

    Raises
    ------
    BundleError
        If the demo bundle is not installed; the message tells the admin what to set.
    """
    if not (DEMO_BUNDLE_DIR / MANIFEST_FILE).is_file():
        raise BundleError(
            f"no model bundle configured and no demo bundle at {DEMO_BUNDLE_DIR}: set "
            "worker.bundle (environment ORTHO_WORKER__BUNDLE) to a bundle folder, e.g. one "
            "made by 'ortho-node model import'"
        )
    return DEMO_BUNDLE_DIR


def _group_rules(plans: Sequence[HeadPlan]) -> tuple[ScopeRule, ...]:
    """One unnamed rule per distinct scope, so a study-level reason lists each scope once."""
    rules: dict[tuple[Any, ...], ScopeRule] = {}
    for plan in plans:
        rule = plan.rule
        key = (rule.modalities, rule.body_parts, rule.views, rule.requires_side)
        rules.setdefault(key, ScopeRule(*key))
    return tuple(rules.values())


def _counted(reasons: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(
        f"{reason} ({n} images)" if n > 1 else reason for reason, n in counts.items()
    )


def _concatenated(inputs: Sequence[ModelInput]) -> EncoderOutput:
    encoded = [item.encoded for item in inputs if item.encoded is not None]
    if len(encoded) == 1:
        return encoded[0]
    return EncoderOutput(
        cls=torch.cat([e.cls for e in encoded]),
        patches=torch.cat([e.patches for e in encoded]),
        grid=encoded[0].grid,
    )


class _HeadSide:
    """What one head reads for one side of the study, or why it reads nothing."""

    def __init__(self, plan: HeadPlan, side: Laterality | None) -> None:
        self.plan = plan
        self.side = side
        self.inputs: list[ModelInput] = []
        self.problem: Problem | None = None

    def usable(self) -> list[ModelInput]:
        return [item for item in self.inputs if item.encoded is not None]

    def outcome_problem(self) -> Problem:
        """The side's problem; out of scope only when every input was out of scope."""
        if self.problem is not None:
            return self.problem
        problems = [item.problem for item in self.inputs if item.problem is not None]
        status = (
            OutcomeStatus.OUT_OF_SCOPE
            if all(p.status is OutcomeStatus.OUT_OF_SCOPE for p in problems)
            else OutcomeStatus.FAILED
        )
        return Problem(status, _counted([p.reason for p in problems]) or "no input")


class StudyAnalyser:
    """Analyses studies with one bundle (see the module docstring); thread-safe.

    Parameters
    ----------
    source : LoadedBundle, InferenceEngine or RemoteEngine
        A bundle (the analyser starts its own engine and closes it in :meth:`close`), or a
        running engine to share, in this process or the host's shared engine process
        (:mod:`~ortho_node.model.engine_server`); the caller closes it.
    max_batch, max_wait_ms, precision, compile
        Engine options, used when ``source`` is a bundle (see :class:`InferenceEngine`).
    preprocess_options : Mapping, optional
        Node choices for :meth:`PreprocessConfig.from_manifest` (``target_spacing_mm``,
        ``canonical_side``, ...); size and normalisation always come from the bundle.
    sampling : SliceSampling, optional
        Slices kept per MR series (default 16, evenly spread).
    min_slices : int, optional
        A series with fewer slices is not used (default 5).
    content_limits : ContentLimits, optional
        Thresholds of the image-content check.
    explain : bool, optional
        Compute an explanation map per finding (default True).
    encode_timeout_s : float or None, optional
        Longest wait for the engine per study (default 600 s); past it the inputs fail.

    Raises
    ------
    TypeError, ValueError
        For bad arguments.
    BundleError
        If the bundle has no trained head, or a head's scope cannot be checked.
    """

    def __init__(
        self,
        source: LoadedBundle | InferenceEngine | RemoteEngine,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 20.0,
        precision: Precision | str = Precision.AUTO,
        compile: bool = False,
        preprocess_options: Mapping[str, Any] | None = None,
        sampling: SliceSampling | None = None,
        min_slices: int = 5,
        content_limits: ContentLimits | None = None,
        explain: bool = True,
        encode_timeout_s: float | None = 600.0,
    ) -> None:
        if isinstance(source, (InferenceEngine, RemoteEngine)):
            engine, owns_engine = source, False
        elif isinstance(source, LoadedBundle):
            engine = InferenceEngine(
                source, max_batch=max_batch, max_wait_ms=max_wait_ms,
                precision=precision, compile=compile,
            )
            owns_engine = True
        else:
            raise TypeError(
                f"source must be a LoadedBundle, an InferenceEngine or a RemoteEngine, got {type(source).__name__}"
            )
        try:
            self._plans = self._head_plans(engine.bundle)
            self._config = PreprocessConfig.from_manifest(
                engine.bundle.manifest, **dict(preprocess_options or {})
            )
            self._sampling = sampling if sampling is not None else SliceSampling()
            if not isinstance(self._sampling, SliceSampling):
                raise TypeError(f"sampling must be a SliceSampling, got {type(sampling).__name__}")
            if isinstance(min_slices, bool) or not isinstance(min_slices, int) or min_slices < 1:
                raise ValueError(f"min_slices must be an int >= 1, got {min_slices!r}")
            if not isinstance(explain, bool):
                raise TypeError(f"explain must be a bool, got {type(explain).__name__}")
        except Exception:
            if owns_engine:
                engine.close()
            raise
        self._engine = engine
        self._owns_engine = owns_engine
        self._group_rules = _group_rules(self._plans)
        self._min_slices = min_slices
        self._content_limits = content_limits
        self._explain = explain
        self._timeout = encode_timeout_s
        self._studies_preparing = 0
        self._preparing_lock = threading.Lock()

    @classmethod
    def from_bundle_dir(
        cls,
        path: str | Path | None = None,
        *,
        engine_socket: str | Path | None = None,
        device: str | torch.device = "cpu",
        max_batch: int = 32,
        max_wait_ms: float = 20.0,
        compile: bool = False,
        precision: Precision | str = Precision.AUTO,
        **options: Any,
    ) -> "StudyAnalyser":
        """Load a bundle (checksum verified) onto ``device`` and start an analyser on it.

        Parameters
        ----------
        path : str, Path or None
            Bundle folder; None means :func:`default_bundle_dir`.
        engine_socket : str, Path or None
            The host's shared engine (:mod:`~ortho_node.model.engine_server`), serving this
            bundle: the analyser encodes there and runs only the heads here; the engine options
            below are then the engine process's, not used here. None: an engine of its own.
        device : str or torch.device, optional
            ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``.
        max_batch, max_wait_ms, compile, precision
            Engine options (:class:`InferenceEngine`).
        **options
            Further :class:`StudyAnalyser` options (``sampling``, ``explain``, ...).

        Raises
        ------
        BundleError
            Missing, invalid or tampered bundle; no trained head.
        ValueError
            ``device`` is not on this machine.
        EngineMismatchError
            The shared engine serves another bundle.
        """
        if engine_socket is not None:
            bundle = load_bundle(default_bundle_dir() if path is None else path, encoder_weights=False)
            engine = RemoteEngine(bundle, engine_socket)
            try:
                analyser = cls(engine, **options)
            except BaseException:
                engine.close()
                raise
            analyser._owns_engine = True
            return analyser
        check_device_available(device)
        bundle = load_bundle(default_bundle_dir() if path is None else path, device=device)
        analyser = cls(
            bundle, max_batch=max_batch, max_wait_ms=max_wait_ms,
            precision=precision, compile=compile, **options,
        )
        if compile:
            try:
                analyser.engine.warmup()  # pay the compilation at start, not in the first job
            except Exception:
                analyser.close()
                raise
        return analyser

    @staticmethod
    def _head_plans(bundle: LoadedBundle) -> tuple[HeadPlan, ...]:
        names = bundle.reportable_heads
        if not names:
            raise BundleError(
                f"bundle {bundle.manifest.name} {bundle.manifest.version} has no trained head: "
                "there is nothing it may report"
            )
        plans = []
        for name in names:
            try:
                plans.append(HeadPlan.from_spec(bundle.head(name).spec))
            except ValueError as exc:
                raise BundleError(
                    f"head {name!r} has a scope this node cannot check: {exc}"
                ) from exc
        return tuple(plans)

    # ------------------------------------------------------------------ properties

    @property
    def engine(self) -> InferenceEngine | RemoteEngine:
        """The engine the analyser encodes with."""
        return self._engine

    @property
    def model(self) -> ModelIdentity:
        """Identity of the model (name, version, synthetic flag, disclaimer)."""
        return self._engine.bundle.identity

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the analyser reports (the bundle's trained heads)."""
        return tuple(plan.spec.name for plan in self._plans)

    def close(self) -> None:
        """Stop the engine if the analyser started it (queued work finishes first)."""
        if self._owns_engine:
            self._engine.close()

    def __enter__(self) -> "StudyAnalyser":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ analysis

    def analyse(self, datasets: Sequence[Dataset], *, study_instance_uid: str) -> StudyFindings:
        """Analyse the instances of one study.

        Parameters
        ----------
        datasets : sequence of pydicom.dataset.Dataset
            The study's instances (Pixel Data may be deferred; only used images are decoded).
        study_instance_uid : str
            The study they belong to.

        Returns
        -------
        StudyFindings
            Findings per head and side, outcomes for what could not be evaluated, or the
            reason the study is out of scope.

        Raises
        ------
        TypeError, ValueError
            ``datasets`` holds something else than datasets, or an instance of another study.
        EngineClosedError
            The analyser was closed.
        """
        with single_threaded():  # one OpenMP team per process: the engine's (.threads)
            return self._analyse(self._checked(datasets, study_instance_uid), study_instance_uid)

    def _analyse(self, datasets: list[Dataset], study_instance_uid: str) -> StudyFindings:
        study_ref = uid_ref(study_instance_uid)
        model = self.model
        screened = screen_images(datasets, self._group_rules, study_ref=study_ref, config=self._config)
        reason = study_out_of_scope_reason([image.decision for image in screened])
        if reason is not None:
            return StudyFindings(study_instance_uid, model, out_of_scope_reason=reason)
        cache = InputCache(
            submit=self._engine.submit, config=self._config, sampling=self._sampling,
            min_slices=self._min_slices, content_limits=self._content_limits,
        )
        with self._preparing():
            head_sides = [
                head_side
                for plan in self._plans
                for head_side in self._head_sides(plan, screened, cache)
            ]
        self._collect(cache.inputs)
        findings: list[Finding] = []
        outcomes: list[TaskOutcome] = []
        for head_side in head_sides:
            result = self._conclude(head_side)
            (findings if isinstance(result, Finding) else outcomes).append(result)
        evaluated = tuple(dict.fromkeys(ref for f in findings for ref in f.source_images))
        if not findings and all(o.status is OutcomeStatus.OUT_OF_SCOPE for o in outcomes):
            listing = "; ".join(f"{_outcome_name(o)}: {o.reason}" for o in outcomes)
            return StudyFindings(
                study_instance_uid, model, not_evaluated=tuple(outcomes),
                out_of_scope_reason=f"no task can be evaluated: {listing}",
            )
        log.info("study %s: %d finding(s), %d outcome(s)", study_ref, len(findings), len(outcomes))
        return StudyFindings(
            study_instance_uid, model, findings=tuple(findings),
            not_evaluated=tuple(outcomes), evaluated_images=evaluated,
        )

    @staticmethod
    def _checked(datasets: Sequence[Dataset], study_instance_uid: str) -> list[Dataset]:
        if not isinstance(study_instance_uid, str) or not study_instance_uid.strip():
            raise ValueError(
                f"study_instance_uid must be a non-empty str, got {study_instance_uid!r}"
            )
        if isinstance(datasets, (str, bytes, Dataset)) or not isinstance(datasets, Sequence):
            raise TypeError(
                f"datasets must be a sequence of Dataset, got {type(datasets).__name__}"
            )
        for index, ds in enumerate(datasets):
            if not isinstance(ds, Dataset):
                raise TypeError(
                    f"datasets[{index}] must be a pydicom Dataset, got {type(ds).__name__}"
                )
            found = str(ds.get("StudyInstanceUID") or "")
            if found and found != study_instance_uid:
                raise ValueError(
                    f"datasets[{index}] belongs to study {uid_ref(found)}, not "
                    f"{uid_ref(study_instance_uid)}"
                )
        return list(datasets)

    def _head_sides(
        self, plan: HeadPlan, screened: Sequence[ScreenedImage], cache: InputCache
    ) -> list[_HeadSide]:
        paired = plan.spec.scope.paired
        by_side: dict[Laterality | None, list[ScreenedImage]] = {}
        for image in screened:
            if plan.is_relevant(image.decision):
                by_side.setdefault(image.side(paired=paired), []).append(image)
        head_sides = []
        for side in sorted(by_side, key=lambda s: "" if s is None else s.value):
            head_side = _HeadSide(plan, side if paired else None)
            images = by_side[side]
            eligible = [i for i in images if rule_mismatch(plan.rule, i.decision) is None]
            if not eligible:
                mismatches = [rule_mismatch(plan.rule, i.decision) or "" for i in images]
                head_side.problem = Problem(OutcomeStatus.OUT_OF_SCOPE, _counted(mismatches))
            elif plan.preference is None:
                head_side.inputs = [cache.radiograph(image) for image in eligible]
            else:
                head_side.inputs = [cache.series_for(eligible, plan.preference)]
            head_sides.append(head_side)
        return head_sides

    @contextlib.contextmanager
    def _preparing(self) -> Iterator[None]:
        """Around a study's preparation and submission of its inputs. When the last study in
        flight leaves it, nothing more is coming soon: the engine runs what waits at once
        instead of waiting out ``max_wait_ms`` (the whole of it, for a study that arrives alone)."""
        with self._preparing_lock:
            self._studies_preparing += 1
        try:
            yield
        finally:
            with self._preparing_lock:
                self._studies_preparing -= 1
                last = self._studies_preparing == 0
            if last:
                self._engine.flush()

    def _collect(self, inputs: Sequence[ModelInput]) -> None:
        """Wait for the engine's answers to every input the study submitted, all of them
        within one ``encode_timeout_s`` of the study (not one each)."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        for item in inputs:
            item.collect(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _conclude(self, head_side: _HeadSide) -> Finding | TaskOutcome:
        spec = head_side.plan.spec
        usable = head_side.usable()
        if not usable:
            problem = head_side.outcome_problem()
            return TaskOutcome(
                spec.name, spec.title, problem.status, problem.reason, head_side.side
            )
        slices = [item for model_input in usable for item in model_input.slices]
        evaluation = evaluate_head(
            self._engine.bundle.head(spec.name), _concatenated(usable), explain=self._explain
        )
        prediction = predict(evaluation.logits, spec)[0]
        heatmap = None
        if evaluation.patch_map is not None:
            heatmap = slices[evaluation.key_index].heatmap(evaluation.patch_map)
        sources: tuple[ImageRef, ...] = tuple(item.image for item in slices)
        return Finding(
            task=spec.name,
            title=spec.title,
            kind=spec.kind,
            laterality=head_side.side,
            finding_site=spec.codes.finding_site,
            finding_type=spec.codes.finding_type,
            concept=spec.codes.concept,
            label=prediction.label,
            value_code=prediction.value_code,
            probability=prediction.probability,
            probabilities=prediction.probabilities,
            labels=spec.labels,
            source_images=sources,
            positive_probability=prediction.positive_probability,
            probability_concept=spec.codes.probability,
            heatmap=heatmap,
        )
