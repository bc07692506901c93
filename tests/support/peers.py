"""Real peers for tests: DCMTK senders, a node process, Redis and PostgreSQL instances.

Nothing here fakes a peer. Each helper starts or drives the real program on loopback ports and
fails loudly (with the program's output) when it does not behave.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; run scripts/setup-test-env (installs DCMTK, dicom3tools, Orthanc)")
    return path


# ---------------------------------------------------------------------------------------- DCMTK


@dataclass(frozen=True)
class StoreRun:
    returncode: int
    output: str

    def statuses(self) -> list[int]:
        """DIMSE statuses of the C-STORE responses, in order (from ``storescu -v`` output)."""
        return [int(code, 16) for code in re.findall(r"Received Store Response \(.*?(?:0x([0-9A-Fa-f]{4}))", self.output)]


def storescu(
    port: int,
    files: Sequence[Path] | Path,
    *,
    calling: str = "TESTSCU",
    called: str = "ORTHO",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> StoreRun:
    """Send files (or a folder, scanned recursively) with DCMTK ``storescu``."""
    require_tool("storescu")
    targets = [str(files)] if isinstance(files, Path) else [str(f) for f in files]
    scan = ["+sd", "+r"] if isinstance(files, Path) and files.is_dir() else []
    command = ["storescu", "-v", "-aet", calling, "-aec", called, *scan, *extra, "127.0.0.1", str(port), *targets]
    done = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)
    return StoreRun(done.returncode, done.stdout + done.stderr)


def dcmsend(port: int, folder: Path, *, calling: str = "TESTSCU", called: str = "ORTHO", timeout: float = 300) -> StoreRun:
    """Send every file of a folder in its own transfer syntax with DCMTK ``dcmsend``."""
    require_tool("dcmsend")
    command = [
        "dcmsend", "-v", "-aet", calling, "-aec", called, "+sd", "+r", "--no-halt",
        "127.0.0.1", str(port), str(folder),
    ]
    done = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)
    return StoreRun(done.returncode, done.stdout + done.stderr)


def echoscu(port: int, *, calling: str = "TESTSCU", called: str = "ORTHO") -> StoreRun:
    require_tool("echoscu")
    done = subprocess.run(
        ["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60,
    )
    return StoreRun(done.returncode, done.stdout + done.stderr)


# -------------------------------------------------------------------------------------- the node


class NodeProcess:
    """``ortho-node serve`` as a real subprocess with its own config file and var dir."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.config = config
        self.extra_args = list(extra_args)
        self.port = int(config["dimse"]["port"])
        self.config_path = workdir / "ortho.yaml"
        self.log_path = workdir / "serve.log"
        self.process: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def var_dir(self) -> Path:
        return Path(self.config["var_dir"])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
        env["ORTHO_CONFIG"] = str(self.config_path)
        return env

    def start(self, *, wait: bool = True) -> "NodeProcess":
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ortho_node.cli", "serve", *self.extra_args],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            try:
                wait_for_port(self.port, process=self.process, timeout=60)
                if self.config.get("http", {}).get("enabled", True) and "port" in self.config.get("http", {}):
                    wait_for_port(int(self.config["http"]["port"]), process=self.process, timeout=30)
            except Exception as exc:
                raise RuntimeError(f"node did not start:\n{self.log()}") from exc
        return self

    def start_worker(self) -> subprocess.Popen:
        """A separate ``ortho-node worker`` process on this node's config (production layout)."""
        log = open(self.workdir / f"worker{len(self.workers)}.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "ortho_node.cli", "worker"],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workers.append(worker)
        return worker

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run another ``ortho-node`` command against this node's config."""
        return subprocess.run(
            [sys.executable, "-m", "ortho_node.cli", *args],
            cwd=self.workdir, env=self.env(), capture_output=True, text=True, timeout=timeout,
        )

    def kill(self) -> None:
        """SIGKILL the serving process and its whole group (worker included): a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # leftovers of the group, if any

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def database_url(self) -> str:
        return self.config.get("database_url") or f"sqlite:///{(self.var_dir / 'index.sqlite').resolve()}"

    def index(self) -> "Database":
        """The node's index database, for assertions (read it, don't write it)."""
        from ortho_node.db.engine import Database

        return Database(self.database_url, pool_size=2)

    def wait_for_jobs(self, predicate, *, timeout: float = 120.0, interval: float = 0.3):
        """Poll the index until ``predicate(jobs)`` is true; return the jobs (list of Job rows)."""
        from sqlalchemy import select

        from ortho_node.db.models import Job

        db = self.index()
        deadline = time.monotonic() + timeout
        try:
            while True:
                with db.session() as session:
                    jobs = list(session.scalars(select(Job).order_by(Job.id)))
                if predicate(jobs):
                    return jobs
                if time.monotonic() > deadline:
                    states = [(j.id, j.state, j.reason) for j in jobs]
                    raise TimeoutError(f"jobs never satisfied the condition; now {states}\n{self.log()[-4000:]}")
                time.sleep(interval)
        finally:
            db.dispose()


def node_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A test config: free port, var dir under ``tmp``, short stable ages.

    Workers use the tiny test-fixture bundle (``tests/infer_support.py``: seeded random weights,
    fast) unless ``worker={"bundle": None}`` asks for the node's default (the shipped demo bundle).
    """
    from tests.infer_support import fixture_bundle_dir

    config: dict[str, Any] = {
        "var_dir": str(tmp / "var"),
        "log_level": "INFO",
        "assembler_interval_s": 0.3,
        "dimse": {"ae_title": "ORTHO", "host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "stable_age": {"default_s": 2.0, "per_modality": {"MR": 2.0, "DX": 2.0, "CR": 2.0}},
        "worker": {"job_lease_s": 60, "bundle": str(fixture_bundle_dir())},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {k: v for k, v in {**config[key], **value}.items() if v is not None}
        else:
            config[key] = value
    return config


# ------------------------------------------------------------------------------- Redis / Postgres


class RedisServer:
    """A private ``redis-server`` on a free port; stop/start it to simulate an outage."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = require_tool("redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process, timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


# not ORTHO_*: the node refuses ORTHO_ variables that name no setting, and its processes inherit this
POSTGRES_ADMIN_URL = os.environ.get("ORTHONODE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database for one test and drop it afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"ortho_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------- reference DCMTK storescp


class ReferenceStoreScp:
    """DCMTK ``storescp +B`` (bit-preserving): records exactly the bytes a sender put on the wire."""

    def __init__(self, outdir: Path, *, implicit_only: bool = False) -> None:
        self.outdir = outdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.syntaxes = "+xi" if implicit_only else "+xa"  # only Implicit VR Little Endian, or all
        outdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> "ReferenceStoreScp":
        require_tool("storescp")
        self.process = subprocess.Popen(
            ["storescp", self.syntaxes, "+B", "-od", str(self.outdir), str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)
        return self

    def files_by_sop_instance_uid(self) -> dict[str, Path]:
        # storescp names files "<modality prefix>.<SOP Instance UID>"
        return {path.name.split(".", 1)[1]: path for path in self.outdir.iterdir() if "." in path.name}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
