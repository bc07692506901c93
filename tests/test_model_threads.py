"""One OpenMP team per process: threads that prepare images run torch single-threaded while the
engine's batching thread keeps the process's threads (ortho_node.model.threads)."""

from __future__ import annotations

import threading

import pytest
import torch

from ortho_node.model import threads
from ortho_node.model.study import StudyAnalyser
from tests.infer_support import fixture_bundle_dir, xray_study


def _in_thread(fn):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    threads.configure_engine_threads(2)
    yield
    threads.configure_engine_threads(before)


def test_a_preparing_thread_runs_single_threaded_and_gets_its_setting_back(two_threads):
    def prepare() -> tuple[int, int]:
        with threads.single_threaded():
            inside = torch.get_num_threads()
        return inside, torch.get_num_threads()

    assert _in_thread(prepare) == (1, 2)
    assert torch.get_num_threads() == 2, "the caller's own setting is untouched"


def test_the_engine_thread_keeps_the_process_threads_while_others_prepare(two_threads):
    """A thread started while another prepares inherits torch's default of one; the engine's
    batching thread sets the process's count for itself."""
    inside = threading.Event()
    leave = threading.Event()

    def preparing() -> None:
        with threads.single_threaded():
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=preparing)
    holder.start()
    try:
        assert inside.wait(10)

        def engine_thread() -> int:
            threads.use_engine_threads()
            return torch.get_num_threads()

        assert _in_thread(engine_thread) == 2
    finally:
        leave.set()
        holder.join()


def test_configure_engine_threads_checks_its_argument():
    with pytest.raises(ValueError, match="positive int"):
        threads.configure_engine_threads(0)


def test_a_study_is_prepared_single_threaded_and_encoded_with_the_process_threads(two_threads, monkeypatch):
    seen: dict[str, int] = {}
    from ortho_node.model import study as study_module

    original_evaluate = study_module.evaluate_head

    def evaluate(*args, **kwargs):
        seen["heads"] = torch.get_num_threads()
        return original_evaluate(*args, **kwargs)

    monkeypatch.setattr(study_module, "evaluate_head", evaluate)
    study = xray_study(seed=21)
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), max_wait_ms=5) as analyser:
        engine = analyser.engine
        original_model = engine._model

        def model(images):
            seen["forward"] = torch.get_num_threads()
            return original_model(images)

        engine._model = model
        findings = _in_thread(lambda: analyser.analyse(study.datasets, study_instance_uid=study.study_instance_uid))
    assert findings.findings, "the study was analysed"
    assert seen == {"heads": 1, "forward": 2}
