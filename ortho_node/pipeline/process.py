"""The processing step of a job.

Until the model runtime is wired in, the step records the study's series/instance summary on
the job (what the model stage will receive), so the queue can be exercised end to end.
"""

from __future__ import annotations

from collections import Counter

from ortho_node.pipeline.errors import PermanentJobError
from ortho_node.pipeline.jobs import ClaimedJob
from ortho_node.privacy import uid_ref


def summarise_study(job: ClaimedJob) -> dict:
    """A PHI-free summary of what the job covers: series, modalities, instance counts."""
    if not job.instances:
        raise PermanentJobError("the job has no analysable instance left to process")
    per_series: dict[str, Counter[str]] = {}
    modality: dict[str, str | None] = {}
    for instance in job.instances:
        ref = uid_ref(instance.series_instance_uid)
        per_series.setdefault(ref, Counter())[instance.transfer_syntax_uid] += 1
        modality[ref] = instance.modality
    return {
        "step": "summary",
        "instances": len(job.instances),
        "series": [
            {"series": ref, "modality": modality[ref], "instances": sum(c.values()), "transfer_syntaxes": dict(c)}
            for ref, c in per_series.items()
        ],
    }
