"""Schedules as pure functions of the step: learning rate, weight decay, teacher momentum and
teacher temperature. A run's whole schedule state is its step counter, which is what makes a
resumed run follow the same curve as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.pretrain.config import PretrainConfig

__all__ = ["ScheduleValues", "cosine", "schedule_at"]


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``), constant after."""
    if total <= 0:
        return end
    progress = min(1.0, max(0.0, step / total))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ScheduleValues:
    """Scheduled values for one step."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float


def schedule_at(config: PretrainConfig, step: int) -> ScheduleValues:
    """The scheduled values at ``step`` (0-based) of a run with ``config``."""
    if step < config.warmup_steps:
        lr = config.lr * (step + 1) / config.warmup_steps
    else:
        lr = cosine(
            step - config.warmup_steps, config.steps - config.warmup_steps, config.lr, config.min_lr
        )
    if config.teacher_temp_warmup_steps and step < config.teacher_temp_warmup_steps:
        fraction = step / config.teacher_temp_warmup_steps
        temp = config.teacher_temp_start + fraction * (
            config.teacher_temp - config.teacher_temp_start
        )
    else:
        temp = config.teacher_temp
    return ScheduleValues(
        lr=lr,
        weight_decay=cosine(step, config.steps, config.weight_decay, config.weight_decay_end),
        momentum=cosine(step, config.steps, config.momentum_start, config.momentum_end),
        teacher_temp=temp,
    )
