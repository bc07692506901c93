"""``ortho-node demo``: the whole node on embedded defaults, end to end, in one command.

It starts a stand-in PACS (a real Storage SCP on loopback) and the node (SCP, assembler, outbox,
worker process) with that PACS as its result destination; generates synthetic knee studies;
sends them to the node over DIMSE as a PACS routing rule would; waits until every study is
processed and its SR and Secondary Capture are delivered; then prints the findings next to the
phantoms' ground truth, and where each result object went.
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from ortho_node.config import CONFIG_ENV_VAR, DimseDestination, load_settings
from ortho_node.db.models import Delivery, DeliveryState, Job, JobState, StoredResult, Study
from ortho_node.dimse.demo_pacs import DemoPacs
from ortho_node.dimse.scu import send_files
from ortho_node.node import Node
from ortho_node.phantoms import MRPhantomSpec, PhantomStudy, XrayPhantomSpec, write_knee_study
from ortho_node.phantoms.nonknee import write_non_knee_study

NOT_CLINICAL = "Synthetic phantoms and a model trained on them: a demonstration, not for clinical use."


@dataclass(frozen=True)
class DemoStudy:
    title: str
    study: PhantomStudy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_studies(folder: Path, seed: int) -> list[DemoStudy]:
    rng = random.Random(seed)
    grades = rng.sample(range(5), 2)
    tear = rng.random() < 0.5
    return [
        DemoStudy(
            "Bilateral knee radiographs (AP)",
            write_knee_study(
                folder / "xray",
                seed=seed,
                xrays=[XrayPhantomSpec(kl_grade=grades[0], side="L"), XrayPhantomSpec(kl_grade=grades[1], side="R")],
            ),
        ),
        DemoStudy(
            "Knee MRI (sagittal PD fat-sat)",
            write_knee_study(
                folder / "mri",
                seed=seed + 1,
                mr_series=[MRPhantomSpec(acl_tear=tear, meniscus_tear=not tear, side="R", contrast="PD_FS")],
            ),
        ),
        DemoStudy("Chest radiograph (not a knee)", write_non_knee_study(folder / "chest", seed=seed + 2, kind="chest_cr")),
    ]


def _demo_config(var_dir: Path, node_port: int, pacs_port: int, pacs_ae: str) -> dict[str, Any]:
    return {
        "var_dir": str(var_dir.resolve()),
        "log_level": "WARNING",
        "assembler_interval_s": 0.5,
        "dimse": {
            "ae_title": "ORTHO",
            "host": "127.0.0.1",
            "port": node_port,
            "allowed_callers": [
                {"ae_title": "DEMOMODALITY", "hosts": ["127.0.0.1"]},
                {"ae_title": pacs_ae, "hosts": ["127.0.0.1"]},  # its storage commitment reports
            ],
        },
        "http": {"host": "127.0.0.1", "port": _free_port()},
        "stable_age": {"default_s": 2.0, "per_modality": {"CR": 2.0, "DX": 2.0, "MR": 3.0}},
        "destinations": [{
            "kind": "dimse", "name": "demo-pacs", "ae_title": pacs_ae, "host": "127.0.0.1", "port": pacs_port,
            "storage_commitment": True,
        }],
    }


def _finished(node: Node, study_uids: set[str]) -> tuple[bool, str]:
    with node.db.session() as session:
        jobs = session.execute(
            select(Job.state, Study.study_instance_uid).join(Study, Job.study_id == Study.id).where(Study.study_instance_uid.in_(study_uids))
        ).all()
        pending = session.scalar(
            select(Delivery.id).where(Delivery.state.in_([DeliveryState.PENDING.value, DeliveryState.SENDING.value, DeliveryState.COMMITTING.value])).limit(1)
        )
    done = {uid for state, uid in jobs if JobState(state).is_final}
    status = f"{len(done)}/{len(study_uids)} studies processed"
    return len(done) == len(study_uids) and pending is None, status


def run_demo(var_dir: Path, *, seed: int | None = None, timeout_s: float = 900, console: Console | None = None) -> int:
    """Run the demo; returns the number of result objects delivered to the stand-in PACS, 0
    when the node did not finish every study within ``timeout_s``."""
    console = console or Console()
    seed = random.randrange(1, 10**6) if seed is None else seed
    demo_dir = var_dir / "demo" / f"run-{seed}"
    console.print(f"[bold]ortho-node demo[/bold] (seed {seed}) — {NOT_CLINICAL}")
    node_port = _free_port()
    pacs = DemoPacs(demo_dir / "pacs", report_to=("ORTHO", "127.0.0.1", node_port))
    pacs_port = pacs.start()
    config_path = demo_dir / "config.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(_demo_config(var_dir, node_port, pacs_port, pacs.ae_title)))
    os.environ[CONFIG_ENV_VAR] = str(config_path)  # the worker process reads the same file
    settings = load_settings(config_path)
    node = Node(settings, start_worker=True, worker_env=dict(os.environ))
    try:
        with console.status("starting the node (SCP, assembler, worker with the model bundle) ..."):
            node.start()
        studies = _make_studies(demo_dir / "studies", seed)
        target = DimseDestination(name="node", ae_title=settings.dimse.ae_title, host="127.0.0.1", port=settings.dimse.port)
        for item in studies:
            outcomes = send_files(target, [f.path for f in item.study.files], calling_ae_title="DEMOMODALITY")
            sent = sum(o.ok for o in outcomes)
            console.print(f"sent {item.title}: {sent}/{len(outcomes)} instances acknowledged by the node")
        uids = {item.study.study_instance_uid for item in studies}
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("waiting for studies to become stable ...", total=None)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                finished, status = _finished(node, uids)
                progress.update(task, description=status + " (stable age, model, SR/SC, delivery)")
                if finished:
                    break
                time.sleep(0.5)
            else:
                console.print("[red]timed out waiting for the node[/red]; see `ortho-node status`")
                _print_report(node, studies, pacs, console)
                return 0  # not done: what arrived so far is shown, but the demo did not finish
        _print_report(node, studies, pacs, console)
        return len(pacs.received)
    finally:
        node.stop()
        pacs.stop()


def _truth(study: PhantomStudy) -> str:
    parts = []
    for task, sides in study.labels.items():
        for side, value in dict(sides).items():
            parts.append(f"{task} {side}={value}")
    return ", ".join(parts) or "—"


def _print_report(node: Node, studies: list[DemoStudy], pacs: DemoPacs, console: Console) -> None:
    with node.db.session() as session:
        jobs = {
            uid: job
            for job, uid in session.execute(
                select(Job, Study.study_instance_uid).join(Study, Job.study_id == Study.id).order_by(Job.id)
            ).all()
        }
        results = session.execute(
            select(StoredResult.kind, StoredResult.sop_instance_uid, Delivery.committed_at)
            .join(Delivery, Delivery.result_id == StoredResult.id)
        ).all()
    kinds = {uid: kind for kind, uid, _ in results}
    committed = {uid for _, uid, at in results if at is not None}
    for item in studies:
        job = jobs.get(item.study.study_instance_uid)
        table = Table(title=f"{item.title} — ground truth: {_truth(item.study)}", title_justify="left")
        for column in ("task", "side", "result", "probability / reason"):
            table.add_column(column)
        if job is None:
            console.print(f"[red]{item.title}: no job[/red]")
            continue
        summary = job.summary or {}
        for finding in summary.get("findings", []):
            table.add_row(finding["title"], finding["side"] or "", finding["result"], f"{finding['probability']:.2f}")
        for outcome in summary.get("not_evaluated", []):
            status = outcome["status"].replace("_", " ")
            table.add_row(outcome.get("title") or outcome["task"], outcome["side"] or "", f"[yellow]{status}[/yellow]", outcome["reason"])
        if summary.get("out_of_scope"):
            table.add_row("(study)", "", "[yellow]out of scope[/yellow]", summary["out_of_scope"])
        if job.state != JobState.DONE.value:
            table.add_row("(job)", "", f"[red]{job.state}[/red]", job.reason or "")
        console.print(table)
        if summary.get("model"):
            console.print(f"  model: {summary['model']}" + (" — synthetic, not for clinical use" if summary.get("synthetic_model") else ""))
    delivered = Table(title=f"Delivered to the stand-in PACS (DEMOPACS), files in {pacs.folder}", title_justify="left")
    for column in ("object", "series", "file", "committed"):
        delivered.add_column(column)
    titles = {item.study.study_instance_uid: item.title for item in studies}
    for obj in sorted(pacs.received, key=lambda o: (titles.get(o.study_instance_uid, ""), o.modality)):
        sop_instance_uid = obj.path.stem.split("_", 1)[1]
        kind = kinds.get(sop_instance_uid, obj.modality)
        delivered.add_row(
            f"{str(kind).upper()} for {titles.get(obj.study_instance_uid, 'study')}", obj.series_description, obj.path.name,
            "yes" if sop_instance_uid in committed else "[yellow]no[/yellow]",
        )
    console.print(delivered)
    console.print(
        "committed: the PACS reported that it holds the object (DICOM Storage Commitment); "
        "the node counts an object delivered only then"
    )
    console.print(f"Look at them with any DICOM viewer, or: dcsrdump {pacs.folder}/SR_*.dcm")
