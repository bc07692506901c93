"""Routing rules: which stable studies the node processes, and why the others are ignored.

Rules are decided per series, then summed up per study. For each series the first rule whose
``match`` holds decides (``process`` or ``ignore``); a series no rule matches gets the
``default_action``. A study is processed when at least one of its series is; otherwise it is
ignored and the job records the reason. Series whose instances are all of SOP classes the node
does not analyse (SR, presentation states, …) never count as processable.

File format (YAML; ``routing.rules_file`` in the config, or inline under ``routing.rules``)::

    default_action: ignore          # optional, only in the main config
    rules:
      - name: knee-radiographs
        action: process
        match:
          modality: [CR, DX]        # exact, case-insensitive; any of the listed values
          body_part: [KNEE]
      - name: knee-mri
        action: process
        match:
          modality: [MR]
          study_description_pattern: "knee|genou|knie"   # Python regex, searched, case-insensitive
      - name: skip-scouts
        action: ignore
        match:
          series_description_pattern: "localizer|scout"
      - name: only-from-main-pacs
        action: ignore
        match:
          calling_ae: [TEST_AE]

All conditions given in one ``match`` must hold; a missing header value never matches a
condition that names values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from ortho_node.config import RoutingMatch, RoutingRule, RoutingSettings
from ortho_node.privacy import uid_ref


class RulesFileError(ValueError):
    """The routing rules file is missing or invalid; the message names the problem."""


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: tuple[RoutingRule, ...] = ()


@dataclass(frozen=True)
class SeriesFacts:
    """What the rules may look at for one series (``series_id`` is the index row id)."""

    series_id: int
    series_instance_uid: str
    modality: str | None
    body_part: str | None
    series_description: str | None
    study_description: str | None
    calling_ae: str | None
    analysable_instances: int


@dataclass(frozen=True)
class SeriesDecision:
    series_id: int
    series: str  # uid_ref of the series, no PHI
    action: str  # "process" | "ignore"
    rule: str | None
    reason: str


@dataclass(frozen=True)
class RoutingDecision:
    process: bool
    reason: str
    series: tuple[SeriesDecision, ...]

    @property
    def series_to_process(self) -> list[int]:
        return [d.series_id for d in self.series if d.action == "process"]

    def as_json(self) -> dict[str, object]:
        return {
            "process": self.process,
            "reason": self.reason,
            "series": [
                {"series_id": d.series_id, "series": d.series, "action": d.action, "rule": d.rule, "reason": d.reason} for d in self.series
            ],
        }


def load_rules(settings: RoutingSettings) -> tuple[RoutingRule, ...]:
    """The inline rules followed by those of ``rules_file``.

    Raises
    ------
    RulesFileError
        The file is missing, not YAML, or a rule in it is invalid.
    """
    rules = tuple(settings.rules)
    if settings.rules_file is None:
        return rules
    path = Path(settings.rules_file)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise RulesFileError(f"routing rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RulesFileError(f"routing rules file {path} is not valid YAML: {exc}") from exc
    try:
        parsed = _RulesFile.model_validate(data)
    except Exception as exc:
        raise RulesFileError(f"routing rules file {path} is invalid: {exc}") from exc
    return rules + parsed.rules


def _one_of(values: tuple[str, ...], actual: str | None) -> bool:
    if not values:
        return True
    return actual is not None and actual.strip().upper() in {v.strip().upper() for v in values}


def _pattern(pattern: str | None, actual: str | None) -> bool:
    if pattern is None:
        return True
    return actual is not None and re.search(pattern, actual, re.IGNORECASE) is not None


def matches(match: RoutingMatch, facts: SeriesFacts) -> bool:
    """True when every condition given in ``match`` holds for ``facts``."""
    return (
        _one_of(match.modality, facts.modality)
        and _one_of(match.body_part, facts.body_part)
        and _one_of(match.calling_ae, facts.calling_ae)
        and _pattern(match.study_description_pattern, facts.study_description)
        and _pattern(match.series_description_pattern, facts.series_description)
    )


def decide_series(rules: Sequence[RoutingRule], default_action: str, facts: SeriesFacts) -> SeriesDecision:
    ref = uid_ref(facts.series_instance_uid)
    if facts.analysable_instances == 0:
        return SeriesDecision(facts.series_id, ref, "ignore", None, "no instance of an analysed SOP class")
    for rule in rules:
        if matches(rule.match, facts):
            return SeriesDecision(facts.series_id, ref, rule.action, rule.name, f"rule '{rule.name}' says {rule.action}")
    return SeriesDecision(
        facts.series_id, ref, default_action, None, f"no rule matched; default action is {default_action}"
    )


def route_study(rules: Sequence[RoutingRule], default_action: str, series: Sequence[SeriesFacts]) -> RoutingDecision:
    """Decide a whole study from its series (see module docstring)."""
    decisions = tuple(decide_series(rules, default_action, facts) for facts in series)
    processed = [d for d in decisions if d.action == "process"]
    if processed:
        return RoutingDecision(True, f"{len(processed)} of {len(decisions)} series to process", decisions)
    if not decisions:
        return RoutingDecision(False, "study has no series", decisions)
    reasons = sorted({d.reason for d in decisions})
    return RoutingDecision(False, "no series to process: " + "; ".join(reasons), decisions)
