"""Shared fixtures: real node processes, real Redis / PostgreSQL, generated knee studies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ortho_node.config import CONFIG_ENV_VAR, Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from tests.support.peers import NodeProcess, RedisServer, fresh_postgres_database, node_config


@pytest.fixture(autouse=True)
def no_config_file_from_another_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_settings(path)`` sets ``ORTHO_CONFIG`` for the processes it starts; a test that
    calls it would leave its file to every later test's ``Settings()`` (an AE title "FROMFILE"
    turned up in a PACS's log). Each test starts without it and leaves none behind."""
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)


@pytest.fixture
def node_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., NodeProcess]]:
    """Build ``ortho-node serve`` subprocesses; all are stopped after the test (logs shown on failure)."""
    nodes: list[NodeProcess] = []

    def make(name: str = "node", *, extra_args: tuple[str, ...] = (), **overrides: Any) -> NodeProcess:
        workdir = tmp_path / name
        node = NodeProcess(workdir, node_config(workdir, **overrides), extra_args=extra_args)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for node in nodes:
            print(f"\n----- {node.workdir.name} serve.log (tail) -----\n{node.log()[-8000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def multiseries_study(tmp_path_factory: pytest.TempPathFactory):
    """A knee study: 204 MR slices in three series + 2 DX, mixed J2K / JPEG-LS / RLE / uncompressed."""
    from tests.support.studies import write_multiseries_study

    return write_multiseries_study(tmp_path_factory.mktemp("multiseries"))


@pytest.fixture
def orthanc(tmp_path: Path):
    """A real Orthanc PACS (DIMSE + DICOMweb) on free loopback ports."""
    from tests.support.orthanc import Orthanc

    pacs = Orthanc(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Database]:
    """The index, migrated, on SQLite under ``settings.var_dir`` (the default) and on a fresh
    PostgreSQL database. Modules that use it define their own ``settings`` fixture."""
    settings.var_dir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = settings.effective_database_url
        else:
            url = stack.enter_context(fresh_postgres_database())
        upgrade(url)
        database = Database(url)
        stack.callback(database.dispose)
        yield database
