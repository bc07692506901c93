"""``ortho-node``: the command line. Commands parse options, build Settings and call one function."""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ortho_node.config import CONFIG_ENV_VAR, Settings, describe_validation_error, effective_config, load_settings
from ortho_node.db.models import JobState
from ortho_node.privacy import redact_logs

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AI node for musculoskeletal imaging (PACS in, DICOM SR/SC out).")
db_app = typer.Typer(no_args_is_help=True, help="Index database.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs: list, audit trail, retry, cancel.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(jobs_app, name="jobs")

console = Console()
err_console = Console(stderr=True)


def _mount_model_commands() -> None:
    from ortho_node.model.cli import app as model_app
    from ortho_node.model.cli import infer_command

    app.add_typer(model_app, name="model", help="Model bundles: import, info, verify.")
    app.command("infer", help="Run the model offline on DICOM files or folders and print the findings.")(infer_command)


_mount_model_commands()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU at INFO; its association events are logged by our handlers.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    redact_logs()  # UIDs in exception texts and paths; values pydicom and pynetdicom quote


def _settings(**overrides: Any) -> Settings:
    """Build Settings or exit with status 2 and one line per invalid field."""
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        err_console.print(f"[red]invalid configuration[/red]\n{describe_validation_error(exc)}")
        raise typer.Exit(2) from exc
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]invalid configuration[/red]: {exc}")
        raise typer.Exit(2) from exc


def overrides_to_env(overrides: dict[str, Any], prefix: str = "ORTHO_") -> dict[str, str]:
    """Flatten CLI overrides into the ``ORTHO_*`` variables a child process reads."""
    env: dict[str, str] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            env.update(overrides_to_env(value, prefix=f"{name}__"))
        else:
            env[name] = str(value)
    return env


@app.callback()
def main_options(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (else $ORTHO_CONFIG)."),
) -> None:
    if config is not None:
        os.environ[CONFIG_ENV_VAR] = str(config.resolve())


def _check_bundle(settings: Settings) -> None:
    """A worker whose model bundle is missing or unreadable stops at once (exit 2), instead of
    starting and failing every job it takes."""
    from ortho_node.model.manifest import BundleError, read_manifest
    from ortho_node.model.study import default_bundle_dir

    bundle = settings.worker.bundle or default_bundle_dir()
    try:
        read_manifest(Path(bundle))
    except (BundleError, OSError) as exc:
        err_console.print(f"[red]worker.bundle[/red] {bundle}: {exc}")
        raise typer.Exit(2) from exc


def _cli_overrides(
    *,
    var_dir: Optional[Path] = None,
    port: Optional[int] = None,
    ae_title: Optional[str] = None,
    http_port: Optional[int] = None,
    database_url: Optional[str] = None,
    broker_url: Optional[str] = None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "var_dir": str(var_dir.resolve()) if var_dir else None,
        "database_url": database_url,
        "broker_url": broker_url,
    }
    dimse = {k: v for k, v in {"port": port, "ae_title": ae_title}.items() if v is not None}
    if dimse:
        overrides["dimse"] = dimse
    if http_port is not None:
        overrides["http"] = {"port": http_port}
    return {k: v for k, v in overrides.items() if v is not None}


@app.command()
def serve(
    var_dir: Optional[Path] = typer.Option(None, help="Where the store and embedded databases live."),
    port: Optional[int] = typer.Option(None, help="DIMSE port."),
    ae_title: Optional[str] = typer.Option(None, help="The node's AE title."),
    http_port: Optional[int] = typer.Option(None, help="HTTP port (health, metrics, admin API, STOW-RS)."),
    database_url: Optional[str] = typer.Option(None, "--database", help="Index database URL (default SQLite)."),
    broker_url: Optional[str] = typer.Option(None, "--broker", help="Celery broker URL (default embedded)."),
    worker: Optional[bool] = typer.Option(None, "--worker/--no-worker", help="Start an embedded worker process."),
) -> None:
    """Run the node: DIMSE SCP, study assembly, outbox and (by default) a worker process."""
    from ortho_node.node import Node

    overrides = _cli_overrides(
        var_dir=var_dir, port=port, ae_title=ae_title, http_port=http_port,
        database_url=database_url, broker_url=broker_url,
    )
    settings = _settings(**overrides)
    if worker if worker is not None else settings.worker.embedded:
        _check_bundle(settings)  # else the embedded worker would exit and be restarted for ever
    configure_logging(settings.log_level)
    node = Node(settings, start_worker=worker, worker_env={**os.environ, **overrides_to_env(overrides)})
    try:
        node.start()
    except Exception as exc:
        logging.getLogger("ortho_node").exception("node failed to start")
        err_console.print(f"[red]node failed to start[/red]: {exc}")
        node.stop()
        raise typer.Exit(1) from exc
    node.run_until_signalled()


@app.command()
def worker(
    concurrency: Optional[int] = typer.Option(None, help="Parallel jobs in this process (default from config)."),
    pool: Optional[str] = typer.Option(
        None, help="Celery pool: threads (one resident model) or prefork (one per child); default from config."
    ),
    shared_engine: Optional[bool] = typer.Option(
        None, "--shared-engine/--no-shared-engine",
        help="With prefork: one engine process holds the model for all children; default from config.",
    ),
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
    broker_url: Optional[str] = typer.Option(None, "--broker"),
) -> None:
    """Run a Celery worker that processes jobs (one per GPU host, or embedded by serve)."""
    # Before torch loads: busy-waiting OpenMP threads starve each other on shared cores
    # (measured: ViT-S forward 7 -> 3.5 images/s on 2 busy cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ortho_node.pipeline.celery_app import NodeCelery

    overrides = _cli_overrides(var_dir=var_dir, database_url=database_url, broker_url=broker_url)
    chosen = {
        k: v
        for k, v in {"concurrency": concurrency, "pool": pool, "shared_engine": shared_engine}.items()
        if v is not None
    }
    if chosen:  # into the settings: the pool's children read them (their share of the cores)
        overrides["worker"] = chosen
    settings = _settings(**overrides)
    _check_bundle(settings)
    configure_logging(settings.log_level)
    celery = NodeCelery(settings)
    quiet = ["--quiet"] if settings.log_level in ("WARNING", "ERROR") else []  # no banner when quiet
    if quiet:
        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)  # "running as root": said once at INFO level
    celery.start(
        [
            *quiet,
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={settings.worker.concurrency}",
            f"--pool={settings.worker.pool}",
            "--queues=ortho",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def conformance() -> None:
    """Print the DICOM Conformance Statement of this node's configuration (markdown)."""
    from ortho_node.conformance import conformance_statement

    typer.echo(conformance_statement(_settings()))


store_app = typer.Typer(no_args_is_help=True, help="The instance store.")
app.add_typer(store_app, name="store")


@store_app.command("check")
def store_check(
    repair: bool = typer.Option(False, "--repair", help="Index the stored files that have no index row."),
    verify_hashes: bool = typer.Option(False, "--verify-hashes", help="Also compare every file's SHA-256 (reads all data)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """Compare the store with the index: files without rows, rows without files, changed files.

    Exit status 0 when everything matches (after --repair), 1 when something needs attention.
    """
    from ortho_node.db.engine import Database
    from ortho_node.db.migrate import is_up_to_date
    from ortho_node.ingest.reconcile import check_store
    from ortho_node.store import InstanceStore

    settings = _settings(**_cli_overrides(var_dir=var_dir, database_url=database_url))
    configure_logging(settings.log_level)
    db = Database(settings.effective_database_url)
    if not is_up_to_date(db.engine):
        err_console.print("[red]the index database is missing or not migrated[/red]: run `ortho-node db upgrade`")
        raise typer.Exit(1)
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    try:
        report = check_store(store, db, repair=repair, verify_hashes=verify_hashes)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title="store check", show_header=False)
        for key, value in report.to_dict().items():
            table.add_row(key.replace("_", " "), str(value))
        console.print(table)
        if report.unindexed and not repair:
            console.print("files without an index row: run `ortho-node store check --repair` to index them")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """Queue depth, jobs by state and recent failures (no PHI)."""
    from ortho_node.db.engine import Database
    from ortho_node.db.migrate import is_up_to_date
    from ortho_node.status import collect_status

    settings = _settings(**_cli_overrides(var_dir=var_dir, database_url=database_url))
    db = Database(settings.effective_database_url)
    if not is_up_to_date(db.engine):  # one that cannot be opened at all: main() says so
        err_console.print("[red]the index database is missing or not migrated[/red]: run `ortho-node db upgrade`")
        raise typer.Exit(1)
    snapshot = collect_status(db, quarantine_dir=settings.quarantine_dir)
    db.dispose()
    if as_json:
        typer.echo(json.dumps(snapshot.as_json(), indent=2))
        return
    table = Table(title="ortho-node status", show_header=False)
    table.add_row("queue depth (queued jobs)", str(snapshot.queue_depth))
    table.add_row("  of which unpublished (outbox)", str(snapshot.unpublished_jobs))
    table.add_row("running jobs", str(snapshot.running_jobs))
    table.add_row("studies receiving / total", f"{snapshot.studies_receiving} / {snapshot.studies_total}")
    table.add_row("instances stored", str(snapshot.instances_total))
    table.add_row("quarantined duplicates", str(snapshot.quarantined_duplicates))
    for state, count in snapshot.jobs_by_state.items():
        table.add_row(f"jobs {state}", str(count))
    for state, count in snapshot.deliveries_by_state.items():
        table.add_row(f"deliveries {state}", str(count))
    if snapshot.committing_since:
        table.add_row("  oldest waiting for the PACS's commitment since (UTC)", snapshot.committing_since)
    console.print(table)
    if snapshot.recent_failures:
        failures = Table(title="recent failures")
        for column in ("job", "study", "finished", "reason"):
            failures.add_column(column)
        for line in snapshot.recent_failures:
            failures.add_row(str(line.job_id), line.study, line.finished_at or "", line.reason)
        console.print(failures)
    if snapshot.dead_letters:
        dead = Table(title="dead-lettered deliveries (ortho-node resend puts them back)")
        for column in ("delivery", "job", "destination", "attempts", "last error"):
            dead.add_column(column)
        for item in snapshot.dead_letters:
            dead.add_row(str(item.delivery_id), str(item.job_id), item.destination, str(item.attempts), item.last_error)
        console.print(dead)


@app.command()
def resend(
    job: Optional[int] = typer.Option(None, help="Only deliveries of this job."),
    destination: Optional[str] = typer.Option(None, help="Only deliveries to this destination."),
    to: Optional[str] = typer.Option(
        None, "--to", help="Send them to this configured destination instead (with --destination: a PACS replaced or renamed)."
    ),
    include_sent: bool = typer.Option(False, "--all", help="Also re-send objects already delivered."),
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """Put dead-lettered deliveries back in the queue (a running node sends them within seconds)."""
    from ortho_node.db.engine import Database
    from ortho_node.pipeline.delivery import resend as resend_deliveries
    from ortho_node.pipeline.delivery import retarget

    settings = _settings(**_cli_overrides(var_dir=var_dir, database_url=database_url))
    configured = [d.name for d in settings.destinations]
    if to is not None and (destination is None or to not in configured or to == destination):
        err_console.print(
            f"[red]--to needs --destination (the old one) and another configured destination[/red]; configured: {configured}"
        )
        raise typer.Exit(2)
    if to is None and destination is not None and destination not in configured:
        err_console.print(
            f"[red]unknown destination[/red] {destination!r}; configured: {configured} "
            "(deliveries to a destination no longer configured: --destination OLD --to NEW)"
        )
        raise typer.Exit(2)
    db = Database(settings.effective_database_url)
    try:
        if to is not None:
            count = retarget(db, source=str(destination), target=to, job_id=job, include_sent=include_sent)
            typer.echo(f"{count} deliveries moved from {destination} to {to} and queued")
        else:
            count = resend_deliveries(db, job_id=job, destination=destination, include_sent=include_sent)
            typer.echo(f"{count} deliveries queued again")
    finally:
        db.dispose()


@app.command()
def demo(
    var_dir: Path = typer.Option(Path("var"), help="Where the demo node keeps its store and databases."),
    seed: Optional[int] = typer.Option(None, help="Phantom seed (default: random, printed)."),
    timeout: float = typer.Option(900.0, help="Give up after this many seconds."),
) -> None:
    """Run the node end to end on embedded defaults with generated knee studies and a stand-in PACS."""
    from ortho_node.demo import run_demo

    configure_logging("WARNING")
    delivered = run_demo(var_dir.resolve(), seed=seed, timeout_s=timeout, console=console)
    raise typer.Exit(0 if delivered else 1)


@db_app.command("upgrade")
def db_upgrade(
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """Create or migrate the index schema to the latest revision."""
    from ortho_node.db.migrate import upgrade

    settings = _settings(**_cli_overrides(var_dir=var_dir, database_url=database_url))
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    typer.echo("index database is at the latest revision")


def _index(var_dir: Optional[Path], database_url: Optional[str]):
    from ortho_node.db.engine import Database

    settings = _settings(**_cli_overrides(var_dir=var_dir, database_url=database_url))
    return Database(settings.effective_database_url)


# typer shows the choices and refuses others (exit 2), instead of a traceback from JobState()
JobStateChoice = enum.Enum("JobStateChoice", {state.name: state.value for state in JobState}, type=str)


@jobs_app.command("list")
def jobs_list(
    state: Optional[JobStateChoice] = typer.Option(None, help="Only jobs in this state."),
    limit: int = typer.Option(50, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json"),
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """Recent jobs (studies appear as short hashes, no PHI)."""
    from dataclasses import asdict

    from ortho_node.pipeline.admin import list_jobs

    lines = list_jobs(_index(var_dir, database_url), state=None if state is None else state.value, limit=limit)
    if as_json:
        typer.echo(json.dumps([asdict(line) for line in lines], indent=2))
        return
    table = Table(title="jobs")
    for column in ("job", "study", "state", "revision", "attempts", "created", "reason"):
        table.add_column(column)
    for line in lines:
        revision = "-" if line.revision is None else str(line.revision)
        table.add_row(
            str(line.job_id), line.study, line.state, revision, str(line.attempts), line.created_at, line.reason or ""
        )
    console.print(table)


@jobs_app.command("events")
def jobs_events(
    job_id: int,
    var_dir: Optional[Path] = typer.Option(None),
    database_url: Optional[str] = typer.Option(None, "--database"),
) -> None:
    """The audit trail of one job."""
    from ortho_node.pipeline.admin import JobActionError, job_events

    try:
        events = job_events(_index(var_dir, database_url), job_id)
    except JobActionError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    table = Table(title=f"job {job_id}")
    for column in ("at", "event", "detail"):
        table.add_column(column)
    for event in events:
        table.add_row(event.at, f"[red]{event.kind}[/red]" if event.is_error else event.kind, event.detail or "")
    console.print(table)


def _job_action(action: str, job_id: int, var_dir: Optional[Path], database_url: Optional[str]) -> None:
    from ortho_node.pipeline import admin

    try:
        getattr(admin, f"{action}_job")(_index(var_dir, database_url), job_id, actor=f"cli:{os.environ.get('USER', 'admin')}")
    except admin.JobActionError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    typer.echo(f"job {job_id}: {action} done")


@jobs_app.command("retry")
def jobs_retry(job_id: int, var_dir: Optional[Path] = typer.Option(None), database_url: Optional[str] = typer.Option(None, "--database")) -> None:
    """Queue a failed or cancelled job again."""
    _job_action("retry", job_id, var_dir, database_url)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, var_dir: Optional[Path] = typer.Option(None), database_url: Optional[str] = typer.Option(None, "--database")) -> None:
    """Cancel a job that has not started."""
    _job_action("cancel", job_id, var_dir, database_url)


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective configuration, secrets masked."""
    data = effective_config(_settings())
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


def main() -> None:
    from sqlalchemy.exc import OperationalError

    try:
        app()
    except OperationalError as exc:  # the index cannot be reached: one line, no traceback
        err_console.print(
            f"[red]cannot open the index database[/red] ({type(exc.orig).__name__}): check --var-dir / "
            "--database and that the database server is up, or create it with `ortho-node db upgrade`"
        )
        raise SystemExit(1) from None
    except NotADirectoryError as exc:
        err_console.print(f"[red]not a folder[/red]: {exc.filename} (check --var-dir)")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
