"""DIMSE associations kept open between delivery batches: reused, released when idle, replaced
when the PACS closed them, never shared between batches or with a forked child."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from ortho_node.config import DimseDestination
from ortho_node.dimse.associations import AssociationPool
from ortho_node.dimse.scu import send_files
from ortho_node.results import build_result_objects
from ortho_node.results.encoding import encode_part10
from tests.results_support import kl_finding, make_dx, ref, study
from tests.support.peers import free_port


class CountingScp:
    """A pynetdicom storage SCP on loopback that counts associations and what it stored."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self.released = 0
        self.aborted = 0
        self.stored: list[str] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="COUNTING")
        ae.supported_contexts = AllStoragePresentationContexts
        handlers = [
            (evt.EVT_ACCEPTED, self._count("accepted", +1)),
            (evt.EVT_RELEASED, self._count("released", -1)),
            (evt.EVT_ABORTED, self._count("aborted", -1)),
            (evt.EVT_C_STORE, self._store),
        ]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _count(self, name: str, open_delta: int):
        def handler(event) -> None:
            with self._lock:
                setattr(self, name, getattr(self, name) + 1)
                self.concurrent += open_delta
                self.most_concurrent = max(self.most_concurrent, self.concurrent)
        return handler

    def _store(self, event) -> int:
        with self._lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        time.sleep(0.05)  # long enough for two batches sent at once to overlap
        return 0x0000

    def destination(self) -> DimseDestination:
        return DimseDestination(name="pacs", ae_title="COUNTING", host="127.0.0.1", port=self.port)

    def abort_all(self) -> None:
        for assoc in self.server.active_associations:
            assoc.abort()

    def wait_until(self, condition, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp():
    server = CountingScp()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def result_files(tmp_path_factory) -> list[Path]:
    """An SR and a Secondary Capture the node built, as stored files."""
    folder = tmp_path_factory.mktemp("results")
    su = generate_uid()
    dx = make_dx(su, laterality="L")
    objects = build_result_objects(study(su, findings=(kl_finding(dx),), evaluated_images=(ref(dx),)), sources=[dx])
    paths = []
    for i, obj in enumerate(objects):
        paths.append(folder / f"{i}_{obj.kind.value}.dcm")
        paths[-1].write_bytes(encode_part10(obj.dataset))
    return paths


def _send(scp: CountingScp, paths: list[Path], pool: AssociationPool | None) -> list[bool]:
    return [o.ok for o in send_files(scp.destination(), paths, calling_ae_title="NODE", associations=pool)]


def test_batches_in_a_row_share_one_association_released_once_idle(scp, result_files):
    sr, sc = result_files[:2]
    pool = AssociationPool(idle_s=0.5)
    try:
        assert _send(scp, [sr], pool) == [True]
        assert _send(scp, [sc], pool) == [True]  # the captures after the SR, on its association
        assert scp.accepted == 1 and len(pool) == 1
        assert scp.wait_until(lambda: scp.released == 1), "released by the pool once idle"
        assert len(pool) == 0 and scp.aborted == 0
        assert _send(scp, [sr], pool) == [True]  # later: a new one
        assert scp.accepted == 2
    finally:
        pool.close()
    assert scp.wait_until(lambda: scp.released == 2), "closing the pool releases what it kept"
    assert len(scp.stored) == 3


def test_without_a_pool_or_with_no_idle_time_every_batch_releases_its_own(scp, result_files):
    no_keep = AssociationPool(idle_s=0)
    for pool in (None, no_keep, None, no_keep):
        assert _send(scp, result_files[:1], pool) == [True]
    assert scp.wait_until(lambda: scp.released == 4)
    assert scp.accepted == 4 and len(no_keep) == 0


def test_an_association_the_pacs_closed_is_replaced_and_nothing_is_lost(scp, result_files):
    pool = AssociationPool(idle_s=30)
    try:
        for attempt in range(5):
            assert _send(scp, result_files, pool) == [True] * len(result_files)
            # The PACS drops the idle association; the next batch may find out before it
            # borrows it or only when its first request fails: either way it is sent anew.
            scp.abort_all()
        assert len(scp.stored) == 5 * len(result_files)
        assert scp.accepted == 5
    finally:
        pool.close()


def test_batches_sent_at_once_never_share_an_association(scp, result_files):
    pool = AssociationPool(idle_s=30)
    outcomes: list[list[bool]] = []
    try:
        threads = [threading.Thread(target=lambda: outcomes.append(_send(scp, result_files, pool))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes == [[True] * len(result_files)] * 2
        assert scp.accepted == 2 and scp.most_concurrent == 2, "two batches at once: two associations"
        assert len(pool) == 1, "one kept per destination, the other released"
        assert scp.wait_until(lambda: scp.released == 1)
        assert _send(scp, result_files[:1], pool) == [True] and scp.accepted == 2
    finally:
        pool.close()


def _send_in_child(port: int, path: Path, pool: AssociationPool, queue) -> None:
    destination = DimseDestination(name="pacs", ae_title="COUNTING", host="127.0.0.1", port=port)
    outcomes = send_files(destination, [path], calling_ae_title="NODE", associations=pool)
    queue.put(([o.ok for o in outcomes], len(pool)))
    pool.close()  # as a worker's context does when it stops


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(scp, result_files):
    pool = AssociationPool(idle_s=30)
    try:
        assert _send(scp, result_files[:1], pool) == [True] and len(pool) == 1
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_send_in_child, args=(scp.port, result_files[1], pool, queue))
        child.start()
        sent, kept_in_child = queue.get(timeout=30)
        child.join(timeout=30)
        assert sent == [True] and kept_in_child == 1
        assert scp.accepted == 2, "the child associated anew"
        assert scp.wait_until(lambda: scp.released == 1), "and released its own on closing its pool"
        assert _send(scp, result_files[:1], pool) == [True], "the parent's association still works"
        assert scp.accepted == 2
    finally:
        pool.close()


def _use_pool_in_child(pool: AssociationPool, queue) -> None:
    pool.give_back("somewhere", _NotEstablished())  # takes the pool's lock
    queue.put((pool.take("somewhere"), len(pool)))
    pool.close()


class _NotEstablished:
    is_established = False


def test_a_child_forked_while_another_thread_holds_the_lock_is_not_locked_out():
    """A reaper (or any delivery thread) may hold the pool's lock at the moment a prefork
    worker forks; the child, where that thread does not exist, must get a lock of its own."""
    pool = AssociationPool(idle_s=30)
    holding, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with pool._lock:
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    child = None
    try:
        assert holding.wait(10)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_use_pool_in_child, args=(pool, queue))
        child.start()
        assert queue.get(timeout=20) == (None, 0), "the child used its pool while the parent's lock was held"
        child.join(timeout=20)
        assert child.exitcode == 0
    finally:
        if child is not None and child.is_alive():
            child.kill()  # locked out: do not leave it behind
        done.set()
        holder.join()
        pool.close()


def test_associations_propose_every_class_the_conformance_statement_names():
    from ortho_node.conformance import RESULT_SOP_CLASSES as documented
    from ortho_node.dimse.scu import RESULT_SOP_CLASSES

    assert RESULT_SOP_CLASSES == {uid for uid, _ in documented}


def test_a_batch_that_fails_on_our_side_releases_its_association_instead_of_lending_it(scp, result_files):
    """Recording an outcome can fail (the index unavailable): the association is released."""
    pool = AssociationPool(idle_s=30)

    def index_down(outcome) -> None:
        raise OSError("index unavailable")

    try:
        with pytest.raises(OSError):
            send_files(scp.destination(), result_files, calling_ae_title="NODE", on_outcome=index_down, associations=pool)
        assert len(pool) == 0
        assert scp.wait_until(lambda: scp.released == 1) and scp.aborted == 0
    finally:
        pool.close()
