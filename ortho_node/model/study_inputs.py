"""What a study offers each task head: screened images, prepared radiographs and MR series.

The steps :class:`~ortho_node.model.study.StudyAnalyser` runs before the encoder:

1. **Screen** every instance once with the scope gate against all heads' rules
   (:func:`screen_images`): header checks only, no pixels decoded.
2. For each head and each side, pick the images the head's own rule covers
   (:func:`~ortho_node.model.scope.rule_mismatch` on the screening decision).
3. **Prepare** them, each input once however many heads read it (:class:`InputCache`):

   * a radiograph: decode frame 0, look at its content (out-of-distribution images are out
     of scope, see :func:`~ortho_node.model.scope.check_image_content`), preprocess;
   * an MR series: survey the side's MR images, select the series the head prefers
     (:func:`~ortho_node.model.series.select_series` over the head's planes), look at the
     content of its central slice, then decode, window and stack its sampled slices;

   and submit it to the engine at once, so encoding overlaps the next input's decoding.

A step that fails leaves a :class:`Problem` on the input instead of a tensor: out of scope
(the input is not what the model is for) or failed (it should have worked and did not).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pydicom.dataset import Dataset

from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.engine import EncodingError
from ortho_node.model.findings import Laterality, OutcomeStatus
from ortho_node.model.heads import HeadSpec
from ortho_node.model.pixels import (
    UnsupportedImageError,
    decode_display_frame,
    decode_frame,
    to_display,
)
from ortho_node.model.preprocess import PreprocessConfig, PreprocessedImage, preprocess_frame, side_of
from ortho_node.model.scope import (
    ContentLimits,
    ScopeDecision,
    ScopeRule,
    assess_instance,
    check_image_content,
)
from ortho_node.model.series import (
    NoSuitableSeriesError,
    SeriesCandidate,
    SeriesPreference,
    SliceSampling,
    preference_for_planes,
    prepare_series,
    select_series,
    survey_series,
)
from ortho_node.privacy import uid_ref

__all__ = [
    "HeadPlan",
    "InputCache",
    "ModelInput",
    "Problem",
    "ScreenedImage",
    "screen_images",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """Why an input gives no answer: out of scope, or failed."""

    status: OutcomeStatus
    reason: str


@dataclass(frozen=True)
class HeadPlan:
    """A reportable head with the scope rule and MR series preference derived from its spec."""

    spec: HeadSpec
    rule: ScopeRule
    preference: tuple[SeriesPreference, ...] | None
    """The head's series preference order (MR heads), None for radiograph heads."""

    @classmethod
    def from_spec(cls, spec: HeadSpec) -> "HeadPlan":
        """Derive the rule (a paired body part needs a stated side) and preference."""
        rule = ScopeRule.from_task_scope(
            spec.scope, name=spec.name, requires_side=spec.scope.paired
        )
        preference = preference_for_planes(spec.scope.planes) if spec.scope.is_mri else None
        return cls(spec=spec, rule=rule, preference=preference)

    def is_relevant(self, decision: ScopeDecision) -> bool:
        """Whether an image has this head's modality and body part (view/side aside)."""
        scope = self.spec.scope
        return decision.modality in scope.modalities and decision.body_part in scope.body_parts


@dataclass(frozen=True, eq=False)
class ScreenedImage:
    """One instance of the study with the scope gate's decision."""

    dataset: Dataset
    decision: ScopeDecision

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID") or "")

    def side(self, *, paired: bool) -> Laterality | None:
        """L or R for a paired head; None when unknown, bilateral, or the head is unpaired."""
        side = self.decision.laterality
        return side if paired and side in (Laterality.LEFT, Laterality.RIGHT) else None


def screen_images(
    datasets: Sequence[Dataset],
    rules: Sequence[ScopeRule],
    *,
    study_ref: str,
    config: PreprocessConfig | None = None,
) -> list[ScreenedImage]:
    """Assess every instance against ``rules`` (headers only) and log the ones set aside; with
    ``config``, each image's side is read as preprocessing will read it (:func:`side_of`)."""
    laterality_of = None if config is None else (lambda ds: side_of(ds, 0, config).laterality)
    screened = []
    for ds in datasets:
        decision = assess_instance(ds, rules, laterality_of=laterality_of)
        if not decision.in_scope:
            log.info(
                "study %s: image %s not used: %s",
                study_ref, uid_ref(str(ds.get("SOPInstanceUID") or "")), decision.reason,
            )
        screened.append(ScreenedImage(ds, decision))
    return screened


@dataclass(eq=False)
class ModelInput:
    """One encoder request: a radiograph, or the sampled slices of one MR series.

    After preparation either ``pending`` (submitted to the engine) or ``problem`` is set;
    ``encoded`` is set once the engine answered (:meth:`collect`).
    """

    label: str
    """PHI-free name for logs, e.g. ``"image u:3f2a..."``."""
    slices: tuple[PreprocessedImage, ...] = ()
    """Per image or slice: geometry, ImageRef, laterality (in encoder order)."""
    pending: Future[EncoderOutput] | None = None
    """The engine's answer to come, once the input was prepared and submitted."""
    problem: Problem | None = None
    encoded: EncoderOutput | None = None

    def fail(self, problem: Problem) -> None:
        self.problem = problem
        self.pending = None
        log.info("%s not used: %s", self.label, problem.reason)

    def collect(self, timeout: float | None) -> None:
        """Wait for the engine's answer; an encoder failure becomes this input's problem."""
        if self.pending is None:
            return
        try:
            self.encoded = self.pending.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.pending.cancel()
            self.fail(_failed("the encoder did not answer within the study's time limit"))
        except EncodingError as exc:
            self.fail(_failed(str(exc)))
        except (TypeError, ValueError) as exc:
            self.fail(_failed(f"the encoder refused the input: {exc}"))


_CONTENT_SIDE = 256
"""The content check looks at a regular subsample with at least this many pixels on the
short side: its statistics (spread, saturation, grey levels) do not need every pixel of a
3000 x 2500 radiograph, and the sort behind the grey-level count is the costly part."""


def _content_problem(values: np.ndarray, limits: ContentLimits | None) -> str | None:
    step = max(1, min(values.shape) // _CONTENT_SIDE)
    # A step > 1 only happens for short sides >= 512 px, far above the minimum side, so the
    # size and aspect checks give the same answer on the subsample.
    return check_image_content(values[::step, ::step], limits=limits)


def _out_of_scope(reason: str) -> Problem:
    return Problem(OutcomeStatus.OUT_OF_SCOPE, reason)


def _failed(reason: str) -> Problem:
    return Problem(OutcomeStatus.FAILED, reason)


class InputCache:
    """Prepares each radiograph and each selected series once per study, and submits it.

    Each input goes to the engine as soon as it is ready, so the encoder works on one input
    while the next is decoded.

    Parameters
    ----------
    submit : callable
        The engine's :meth:`~ortho_node.model.engine.InferenceEngine.submit`.
    config : PreprocessConfig
        The bundle's preprocessing.
    sampling : SliceSampling
        Slices kept per MR series.
    min_slices : int
        Fewer slices exclude a series.
    content_limits : ContentLimits or None
        Thresholds of the content check.
    """

    def __init__(
        self,
        *,
        submit: Callable[[torch.Tensor], Future[EncoderOutput]],
        config: PreprocessConfig,
        sampling: SliceSampling,
        min_slices: int,
        content_limits: ContentLimits | None,
    ) -> None:
        self._submit = submit
        self._config = config
        self._sampling = sampling
        self._min_slices = min_slices
        self._limits = content_limits
        self._inputs: dict[tuple[str, str], ModelInput] = {}
        self._surveys: dict[tuple[int, ...], tuple[SeriesCandidate, ...]] = {}

    @property
    def inputs(self) -> tuple[ModelInput, ...]:
        """Every input prepared so far."""
        return tuple(self._inputs.values())

    def _once(self, key: tuple[str, str], label: str,
              prepare: Callable[[ModelInput], torch.Tensor | None]) -> ModelInput:
        found = self._inputs.get(key)
        if found is None:
            found = self._inputs[key] = ModelInput(label=label)
            tensor = prepare(found)
            if tensor is not None:
                found.pending = self._submit(tensor)
        return found

    def radiograph(self, image: ScreenedImage) -> ModelInput:
        """The prepared radiograph (frame 0) of ``image``."""
        uid = image.sop_instance_uid
        return self._once(("image", uid), f"image {uid_ref(uid)}",
                          lambda item: self._prepare_radiograph(item, image.dataset))

    def _prepare_radiograph(self, item: ModelInput, ds: Dataset) -> torch.Tensor | None:
        try:
            raw = decode_frame(ds)
            display = to_display(raw, ds, percentiles=self._config.window_percentiles)
            problem = _content_problem(display.values, self._limits)
            if problem is not None:
                item.fail(_out_of_scope(f"image content out of distribution: {problem}"))
                return None
            prepared = preprocess_frame(ds, raw, config=self._config, display=display)
        except UnsupportedImageError as exc:
            item.fail(_failed(f"image could not be prepared: {exc.reason}"))
            return None
        item.slices = (prepared,)
        return prepared.tensor.unsqueeze(0)

    def series_for(
        self, images: Sequence[ScreenedImage], preference: Sequence[SeriesPreference]
    ) -> ModelInput:
        """The prepared series of ``images`` (one side's MR images) that ``preference`` picks.

        A study without a fitting series gives an input whose problem is out of scope, with
        the reason listing every series and why it was not taken.
        """
        key = tuple(id(image) for image in images)
        candidates = self._surveys.get(key)
        if candidates is None:
            candidates = self._surveys[key] = survey_series(
                [image.dataset for image in images], min_slices=self._min_slices
            )
        try:
            chosen = select_series(candidates, preference=preference)
        except NoSuitableSeriesError as exc:
            return ModelInput(label="series selection", problem=_out_of_scope(exc.reason))
        uid = chosen.series_instance_uid
        return self._once(("series", uid), f"series {uid_ref(uid)}",
                          lambda item: self._prepare_series(item, chosen))

    def _prepare_series(self, item: ModelInput, candidate: SeriesCandidate) -> torch.Tensor | None:
        central = candidate.slices[len(candidate.slices) // 2]
        try:
            display = decode_display_frame(
                central.dataset,
                frame_index=central.frame_index,
                percentiles=self._config.window_percentiles,
            )
            problem = _content_problem(display.values, self._limits)
            if problem is not None:
                item.fail(_out_of_scope(f"central slice out of distribution: {problem}"))
                return None
            prepared = prepare_series(candidate, config=self._config, sampling=self._sampling)
        except UnsupportedImageError as exc:
            item.fail(_failed(f"series could not be prepared: {exc.reason}"))
            return None
        item.slices = prepared.slices
        return prepared.tensor
