"""The shared inference engine: one engine process serving the worker processes of a host over
a Unix socket (ortho_node.model.engine_server / engine_client), and its place in a prefork worker."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ortho_node.config import Settings
from ortho_node.db.models import JobState
from ortho_node.model.bundle import LoadedBundle, load_bundle
from ortho_node.model.engine import EngineClosedError, InferenceEngine
from ortho_node.model.engine_client import EngineMismatchError, RemoteEngine
from ortho_node.model.engine_server import EngineServer, EngineServerOptions, serve_until_stopped, start_engine_process
from ortho_node.model.engine_wire import receive_message, send_message
from ortho_node.model.study import StudyAnalyser
from ortho_node.phantoms import write_knee_study
from ortho_node.pipeline.errors import TransientJobError
from ortho_node.pipeline.jobs import ClaimedJob, JobInstance
from ortho_node.pipeline.process import AnalyseStudyStep
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.db.models import Job
from ortho_node.pipeline.celery_app import NodeCelery, build_analysis_step
from ortho_node.pipeline.context import WorkerContext
from ortho_node.pipeline.outbox import PROCESS_STUDY_TASK
from ortho_node.pipeline.shared_engine import SharedEngine, engine_socket_path
from celery.exceptions import Retry
from ortho_node.store import InstanceStore
from tests.infer_support import INPUT_SIZE, fixture_bundle_dir, small_xray, write_fixture_bundle, xray_study
from tests.support.index import queued_job
from tests.support.peers import storescu


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(fixture_bundle_dir())


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def served(bundle: LoadedBundle, tmp_path: Path):
    """An engine (fp32, waits up to 5 s for company) served on a socket in this process."""
    engine = InferenceEngine(bundle, max_batch=16, max_wait_ms=5000, precision="fp32")
    server = EngineServer(engine, tmp_path / "run" / "engine.sock")
    yield server
    server.close()


def test_two_clients_share_one_forward_and_get_what_a_local_engine_gives(bundle, served) -> None:
    first, second = images(2, seed=1), images(3, seed=2)
    with RemoteEngine(bundle, served.socket_path) as a, RemoteEngine(bundle, served.socket_path) as b:
        futures = [a.submit(first), b.submit(second)]
        outputs = [f.result(timeout=30) for f in futures]
        stats = a.stats()
    assert stats.recent_batch_sizes == (5,) and stats.recent_batch_requests == (2,)
    with InferenceEngine(bundle, max_batch=16, max_wait_ms=0, precision="fp32") as local:
        expected = [local.encode(first), local.encode(second)]
    for got, want in zip(outputs, expected, strict=True):
        assert torch.equal(got.cls, want.cls) and torch.equal(got.patches, want.patches)
        assert got.grid == want.grid == (INPUT_SIZE // 16, INPUT_SIZE // 16)
        assert got.cls.device.type == "cpu" and got.cls.dtype == torch.float32


def test_flush_runs_a_lone_request_without_waiting_for_company(bundle, served) -> None:
    with RemoteEngine(bundle, served.socket_path) as client:
        future = client.submit(images(1))
        client.flush()
        # The engine would wait 5 s for more images; flushed, it answers well before.
        assert future.result(timeout=4).cls.shape == (1, bundle.manifest.embed_dim)


def test_bad_input_fails_its_own_request_only(bundle, served) -> None:
    bad = images(2)
    bad[1, 0, 0, 0] = float("nan")
    with RemoteEngine(bundle, served.socket_path) as client:
        refused = client.submit(bad)
        wrong_size = client.submit(torch.zeros(1, 3, 32, 32))
        good = client.submit(images(1, seed=3))
        client.flush()
        assert isinstance(refused.exception(timeout=5), ValueError)
        assert "NaN" in str(refused.exception())
        assert isinstance(wrong_size.exception(timeout=5), ValueError)
        assert good.result(timeout=5).cls.shape[0] == 1


def test_server_refuses_what_a_client_bypassing_its_checks_sends(bundle, served) -> None:
    # The engine process checks input itself: a NaN that reaches it fails that request only,
    # on a connection that stays usable.
    bad = images(1)
    bad[0, 1, 2, 3] = float("inf")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(served.socket_path))
        hello, _ = receive_message(raw)
        assert hello["kind"] == "hello" and hello["bundle"]["weights_sha256"] == bundle.manifest.weights_sha256
        send_message(raw, {"kind": "encode", "id": 7}, [bad])
        failed, tensors = receive_message(raw)
        assert failed == {"kind": "failed", "id": 7, "error": "ValueError", "message": "images contain NaN or infinite values"}
        assert tensors == []
        send_message(raw, {"kind": "encode", "id": 8}, [images(1)])
        send_message(raw, {"kind": "flush"})
        encoded, tensors = receive_message(raw)
        assert encoded["kind"] == "encoded" and encoded["id"] == 8 and [t.shape[0] for t in tensors] == [1, 1]
        # Garbage is not a message: the server drops that connection (and only that one).
        raw.sendall(b"\x00\x00\xff\xffnot a message" + bytes(64))
        assert receive_message(raw) is None
    with RemoteEngine(bundle, served.socket_path) as client:
        client.submit(images(1))
        client.flush()


def test_a_client_with_another_model_is_refused(bundle, served, tmp_path) -> None:
    # Heads trained on other encoder weights would turn its features into wrong answers.
    retrained = dataclasses.replace(
        bundle, manifest=dataclasses.replace(bundle.manifest, version="0.0.2-test", weights_sha256="0" * 64)
    )
    with pytest.raises(EngineMismatchError, match="serves test-fixture-micro 0.0.1-test, not .* 0.0.2-test .*weights differ"):
        RemoteEngine(retrained, served.socket_path)
    smaller = load_bundle(write_fixture_bundle(tmp_path / "other", input_size=96))
    with pytest.raises(EngineMismatchError, match=r"images of shape \[3, 112, 112\], this bundle \[3, 96, 96\]"):
        RemoteEngine(smaller, served.socket_path)


def test_closing_finishes_queued_work_then_clients_fail_until_they_reconnect(bundle, tmp_path) -> None:
    path = tmp_path / "engine.sock"
    server = EngineServer(InferenceEngine(bundle, max_batch=16, max_wait_ms=60_000, precision="fp32"), path)
    client = RemoteEngine(bundle, path)
    try:
        queued = client.submit(images(1))  # would wait a minute for company...
        assert client.stats().requests == 1  # ...and is in the engine (one connection: in order)
        server.close()  # closing runs it, and its answer goes out before the connection closes
        assert queued.result(timeout=10).cls.shape[0] == 1
        # Nothing listens now: the next request fails at once, it does not hang or raise.
        assert isinstance(client.submit(images(1)).exception(timeout=10), EngineClosedError)
        with EngineServer(InferenceEngine(bundle, max_batch=16, max_wait_ms=0, precision="fp32"), path):
            assert client.submit(images(1)).result(timeout=30).cls.shape[0] == 1
    finally:
        client.close()
        server.close()
    with pytest.raises(EngineClosedError):
        client.submit(images(1))


def test_an_engine_process_killed_mid_request_fails_what_waits_on_it(bundle, tmp_path) -> None:
    options = EngineServerOptions(
        bundle_dir=fixture_bundle_dir(), socket_path=tmp_path / "engine.sock", max_wait_ms=60_000
    )
    engine = start_engine_process(options, ready_timeout_s=120)
    try:
        with RemoteEngine(bundle, options.socket_path) as client:
            waiting = client.submit(images(1))
            assert client.stats().requests == 1
            os.kill(engine.process.pid, signal.SIGKILL)
            error = waiting.exception(timeout=10)
            assert isinstance(error, EngineClosedError) and "shared inference engine" in str(error)
    finally:
        engine.stop(timeout=5)


def test_engine_process_serves_a_study_analyser_like_a_local_engine(tmp_path) -> None:
    options = EngineServerOptions(
        bundle_dir=fixture_bundle_dir(), socket_path=tmp_path / "engine.sock", precision="fp32", max_wait_ms=5
    )
    process = start_engine_process(options, ready_timeout_s=120)
    study = list(xray_study(seed=5).datasets)
    uid = str(study[0].StudyInstanceUID)
    try:
        assert process.alive and options.socket_path.is_socket()
        assert options.socket_path.stat().st_mode & 0o777 == 0o600
        with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), engine_socket=options.socket_path) as remote:
            shared = remote.analyse(study, study_instance_uid=uid)
            assert remote.engine.stats().images == 2  # both radiographs went to the engine process
    finally:
        process.stop()
    assert not process.alive and not options.socket_path.exists()
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), precision="fp32") as local:
        alone = local.analyse(study, study_instance_uid=uid)
    assert [(f.task, f.laterality, f.label) for f in shared.findings] == [
        (f.task, f.laterality, f.label) for f in alone.findings
    ]
    for got, want in zip(shared.findings, alone.findings, strict=True):
        assert got.probability == pytest.approx(want.probability, abs=1e-6)


def test_engine_process_that_cannot_load_its_bundle_says_why(tmp_path) -> None:
    options = EngineServerOptions(bundle_dir=tmp_path / "no-bundle", socket_path=tmp_path / "engine.sock")
    with pytest.raises(RuntimeError, match="did not start: BundleError"):
        start_engine_process(options, ready_timeout_s=120)


def test_job_step_retries_when_the_shared_engine_is_away(bundle, tmp_path, served) -> None:
    # An engine restarting must not fail jobs for good: the job step raises a transient error
    # (the task then releases the job for a retry with backoff).
    store = InstanceStore(tmp_path / "store", quarantine=tmp_path / "quarantine")
    study = write_knee_study(store.root / "study", seed=3, xrays=[small_xray(1, "R")])
    (image,) = study.files
    job = ClaimedJob(
        job_id=1, study_id=1, study_instance_uid=study.study_instance_uid, revision=0,
        supersedes_job_id=None, attempt=1,
        instances=(
            JobInstance(
                instance_id=1, series_id=1, sop_instance_uid=image.sop_instance_uid,
                sop_class_uid=image.sop_class_uid, series_instance_uid=image.series_instance_uid,
                modality=image.modality, body_part="KNEE", series_description=None,
                transfer_syntax_uid=image.transfer_syntax_uid,
                relative_path=str(image.path.relative_to(store.root)),
            ),
        ),
    )
    analyser = StudyAnalyser(RemoteEngine(bundle, served.socket_path))
    settings = Settings(var_dir=tmp_path / "var")
    step = AnalyseStudyStep(settings=settings, db=Database(settings.effective_database_url), store=store, analyser=analyser)
    served.close()
    with pytest.raises(TransientJobError, match="inference engine is not available"):
        step(job)
    analyser.engine.close()


def test_shared_engine_is_for_prefork_pools_only() -> None:
    with pytest.raises(ValidationError, match="shared_engine serves the children of a prefork pool"):
        Settings(worker={"pool": "threads", "shared_engine": True})
    assert Settings(worker={"pool": "prefork", "shared_engine": True}).worker.shared_engine


def test_prefork_children_encode_in_the_workers_shared_engine(node_factory, tmp_path) -> None:
    node = node_factory(worker={"pool": "prefork", "concurrency": 2, "shared_engine": True}).start()
    studies = [
        write_knee_study(tmp_path / f"study{i}", seed=60 + i, xrays=[small_xray(i, "L")]) for i in range(3)
    ]
    for study in studies:
        sent = storescu(node.port, [f.path for f in study.files])
        assert sent.returncode == 0, sent.output[-2000:]
    jobs = node.wait_for_jobs(lambda js: len(js) == 3 and all(JobState(j.state).is_final for j in js))
    assert all(j.state == JobState.DONE.value for j in jobs), [(j.state, j.reason) for j in jobs]
    sockets = list((node.var_dir.resolve() / "run").glob("engine-*.sock"))
    assert len(sockets) == 1, sockets
    with RemoteEngine(load_bundle(fixture_bundle_dir()), sockets[0]) as client:
        stats = client.stats()
    assert stats.images == 3 and stats.requests == 3  # every radiograph went through the one engine


def test_a_client_loads_the_heads_without_the_encoders_weights(bundle, served) -> None:
    light = load_bundle(fixture_bundle_dir(), encoder_weights=False)
    assert all(p.is_meta for p in light.encoder.parameters())
    for name, head in bundle.heads.items():
        state, light_state = head.state_dict(), light.heads[name].state_dict()
        assert all(torch.equal(state[k], light_state[k]) for k in state)
    with pytest.raises(ValueError, match="without its encoder weights"):
        InferenceEngine(light)
    with RemoteEngine(light, served.socket_path) as client:  # the shared engine encodes for it
        future = client.submit(images(1))
        client.flush()
        assert future.result(timeout=10).cls.shape == (1, bundle.manifest.embed_dim)


def test_a_message_larger_than_any_request_is_refused_before_it_is_read(bundle, served) -> None:
    # 4096 images of the bundle's size is the most one request may hold; a message announcing
    # more is dropped at its prefix, before the server allocates anything for it.
    shape = [4097, 3, INPUT_SIZE, INPUT_SIZE]
    too_big = math.prod(shape) * 4
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(served.socket_path))
        assert receive_message(raw)[0]["kind"] == "hello"
        header = json.dumps({"kind": "encode", "id": 1, "tensors": [{"dtype": "float32", "shape": shape}]}).encode()
        raw.sendall(struct.pack("!IQ", len(header), too_big) + header)
        assert receive_message(raw) is None  # dropped at once: no wait for 600 MB that never come


def test_engine_process_stops_while_forked_children_hold_its_pipe(tmp_path) -> None:
    # A prefork pool forks its children after the engine started: they inherit the end of the
    # pipe whose closing tells the engine to stop. Stopping must not wait for them.
    options = EngineServerOptions(bundle_dir=fixture_bundle_dir(), socket_path=tmp_path / "engine.sock")
    engine = start_engine_process(options, ready_timeout_s=120)
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    child.start()
    try:
        started = time.monotonic()
        engine.stop(timeout=30)
        assert time.monotonic() - started < 15
        assert engine.process.exitcode == 0, "stopped by its own shutdown, not killed"
        assert not options.socket_path.exists()
    finally:
        child.kill()
        child.join()


def test_a_late_answer_to_a_cancelled_request_leaves_the_others_alone(bundle, served) -> None:
    # A study past its time limit cancels its requests; the engine answers them later anyway.
    with RemoteEngine(bundle, served.socket_path) as client:
        given_up = client.submit(images(1))
        assert given_up.cancel()
        other = client.submit(images(2, seed=4))
        client.flush()
        assert other.result(timeout=10).cls.shape[0] == 2
        again = client.submit(images(1, seed=5))  # the connection survived the late answer
        client.flush()
        assert again.result(timeout=10).cls.shape[0] == 1


def test_an_engine_that_closed_itself_ends_its_process_for_a_restart(bundle, tmp_path) -> None:
    server = EngineServer(InferenceEngine(bundle, max_wait_ms=0, precision="fp32"), tmp_path / "engine.sock")
    try:
        server.engine.close()  # what the batching thread does when it fails unexpectedly
        assert serve_until_stopped(server, [], threading.Event()) == 1
    finally:
        server.close()
    server = EngineServer(InferenceEngine(bundle, max_wait_ms=0, precision="fp32"), tmp_path / "engine.sock")
    try:
        assert serve_until_stopped(server, [signal.SIGTERM], threading.Event()) == 0
    finally:
        server.close()


def test_a_worker_child_started_while_the_engine_is_away_retries_its_job(tmp_path) -> None:
    # A child built during an engine restart: its job goes back to the queue, not to failed.
    settings = Settings(var_dir=tmp_path / "var", worker={"pool": "prefork", "shared_engine": True, "bundle": str(fixture_bundle_dir())})
    settings.var_dir.mkdir(parents=True)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    job_id = queued_job(db)
    app = NodeCelery(settings)
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    app._context = WorkerContext(
        settings=settings, db=db, store=store, build_step=build_analysis_step, engine_socket=tmp_path / "gone.sock"
    )
    with pytest.raises(Retry):
        app.tasks[PROCESS_STUDY_TASK].apply(args=[job_id], throw=True)
    with db.session() as session:
        retried = session.get(Job, job_id)
        assert retried.state == JobState.QUEUED.value, retried.reason
        events = [(e.kind, e.detail) for e in retried.events]
    assert ("retry", "the inference engine is not available: the shared inference engine cannot be reached: "
            "[Errno 2] No such file or directory") in events


def test_the_worker_restarts_an_engine_process_that_died(tmp_path) -> None:
    settings = Settings(var_dir=tmp_path / "var", worker={"pool": "prefork", "shared_engine": True})
    shared = SharedEngine(settings, fixture_bundle_dir())
    shared.start()
    try:
        with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), engine_socket=shared.socket_path) as analyser:
            first = shared.process
            os.kill(first.process.pid, signal.SIGKILL)  # the OOM killer, say
            first.process.join(10)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and (shared.process is first or not shared.process.alive):
                time.sleep(0.5)
            assert shared.process is not first and shared.process.alive, "restarted"
            # The child's client connects again on its next request.
            study = list(xray_study(seed=6).datasets)
            findings = analyser.analyse(study, study_instance_uid=str(study[0].StudyInstanceUID))
            assert findings.findings
    finally:
        shared.stop()
    assert shared.process is None


def test_engine_socket_goes_to_a_private_temporary_folder_when_the_var_dir_is_too_deep(tmp_path, monkeypatch) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert engine_socket_path(Settings(var_dir=tmp_path / "var"), 42) == (tmp_path / "var").resolve() / "run" / "engine-42.sock"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = engine_socket_path(Settings(var_dir=deep), 42)
    assert path == tmp_path / "tmp" / f"ortho-node-{os.getuid()}" / "engine-42.sock"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # A folder planted as a link (to a folder of this user, private or not) is refused.
    path.parent.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    path.parent.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a private folder of this user"):
        engine_socket_path(Settings(var_dir=deep), 42)
