"""Concurrent ``analyse`` calls (jobs in a worker's threads) share the engine's batches, get the
answers a sequential run gets, and a bad image fails only its own job."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from pydicom.dataset import Dataset
from tests.infer_support import fixture_bundle_dir, xray_study

from ortho_node.model.bundle import load_bundle
from ortho_node.model.findings import OutcomeStatus, StudyFindings
from ortho_node.model.preprocess import PreprocessConfig, preprocess_image
from ortho_node.model.study import StudyAnalyser

STUDIES = 4  # two radiographs each


def summary(findings: StudyFindings) -> dict[tuple[str, str], tuple[str, tuple[float, ...]]]:
    return {
        (f.task, f.laterality.value if f.laterality else "-"): (f.label, f.probabilities)
        for f in findings.findings
    }


def run_concurrently(analyser: StudyAnalyser, studies: list[list[Dataset]]) -> list[StudyFindings]:
    start = threading.Barrier(len(studies))
    results: list[StudyFindings | None] = [None] * len(studies)
    errors: list[BaseException] = []

    def job(index: int) -> None:
        try:
            start.wait()
            datasets = studies[index]
            results[index] = analyser.analyse(
                datasets, study_instance_uid=str(datasets[0].StudyInstanceUID)
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(len(studies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return [r for r in results if r is not None]


@pytest.fixture(scope="module")
def studies() -> list[list[Dataset]]:
    return [list(xray_study(seed=40 + k).datasets) for k in range(STUDIES)]


@pytest.fixture(scope="module")
def sequential(studies: list[list[Dataset]]) -> list[StudyFindings]:
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), max_wait_ms=0) as analyser:
        return [
            analyser.analyse(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
            for datasets in studies
        ]


def test_concurrent_jobs_are_batched_together_and_agree_with_sequential(
    studies: list[list[Dataset]], sequential: list[StudyFindings]
) -> None:
    # The batch runs as soon as all 8 radiographs are in; the long wait only makes sure the
    # jobs' requests meet whatever the thread scheduling.
    with StudyAnalyser.from_bundle_dir(
        fixture_bundle_dir(), max_batch=2 * STUDIES, max_wait_ms=5000
    ) as analyser:
        concurrent = run_concurrently(analyser, studies)
        stats = analyser.engine.stats()
    assert max(stats.recent_batch_requests) > 2  # more than one job's images in a pass
    assert stats.largest_batch > 2
    assert len(concurrent) == STUDIES
    for together, alone in zip(concurrent, sequential):
        assert summary(together) == summary(alone)  # fp32: batching changes no bit


def test_one_bad_image_fails_only_its_job(
    studies: list[list[Dataset]], sequential: list[StudyFindings]
) -> None:
    bundle = load_bundle(fixture_bundle_dir())
    bad_image = studies[0][0]  # the first job's first radiograph
    poison = preprocess_image(
        bad_image, config=PreprocessConfig.from_manifest(bundle.manifest)
    ).tensor
    fail_on_poison = _hook(lambda batch: any(torch.equal(row, poison) for row in batch))
    handle = bundle.encoder.register_forward_pre_hook(fail_on_poison)
    try:
        with StudyAnalyser(bundle, max_batch=2 * STUDIES, max_wait_ms=5000) as analyser:
            results = run_concurrently(analyser, studies)
            stats = analyser.engine.stats()
    finally:
        handle.remove()
    assert stats.isolation_reruns >= 1 and stats.failed_requests == 1
    bad_side = bad_image.ImageLaterality
    failed = {(o.task, o.laterality.value): o for o in results[0].not_evaluated}
    assert set(failed) == {("kl_grade", bad_side), ("oa_present", bad_side)}
    assert all(o.status is OutcomeStatus.FAILED for o in failed.values())
    assert "simulated kernel failure" in failed[("kl_grade", bad_side)].reason
    other_side = {k: v for k, v in summary(sequential[0]).items() if k[1] != bad_side}
    assert summary(results[0]) == other_side  # the job's other knee is still answered
    for result, alone in zip(results[1:], sequential[1:]):
        assert summary(result) == summary(alone) and result.not_evaluated == ()


def _hook(is_poisoned: Callable[[torch.Tensor], bool]):
    def fail_on_poison(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        if is_poisoned(args[0]):
            raise RuntimeError("simulated kernel failure")

    return fail_on_poison
