"""``ortho-node model ...``: import a checkpoint into a bundle, show a bundle, verify a bundle,
and run the model offline on DICOM files (``infer``).

The main CLI mounts :data:`app` and :func:`infer_command` (as ``ortho-node infer``). Commands
only parse options and call :mod:`ortho_node.model.bundle` / :mod:`ortho_node.model.infer`;
torch is imported when a command runs, not when the CLI starts.
Errors an admin can fix (missing file, checkpoint that does not fit, tampered weights) print
one readable message and exit with status 1, never a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ortho_node.model.findings import StudyFindings

__all__ = ["app", "infer_command"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Model bundles: import a checkpoint, show a bundle, verify a bundle; offline inference.",
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=1)


def _default_name(checkpoint: Path) -> str:
    # File stems like "OrthoFoudation-L" make a fine default; drop characters a name forbids.
    cleaned = re.sub(r"[^A-Za-z0-9 ._+-]", "-", checkpoint.stem).strip(" .-_+")
    return cleaned[:64] or "model"


@app.command("import")
def import_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file (.pth, .pt, .safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to create."),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="timm architecture; inferred from the checkpoint when omitted."
    ),
    heads: Optional[str] = typer.Option(
        None, "--heads", help="Comma-separated task heads (default: all registered heads)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: file name)."),
    version: str = typer.Option("1.0.0", "--version", help="Model version."),
    input_size: int = typer.Option(224, "--input-size", help="Square input size in pixels."),
    license_text: str = typer.Option(
        "unspecified: check the checkpoint publisher's terms", "--license", help="Weights licence."
    ),
    training_data: Optional[str] = typer.Option(
        None, "--training-data", help="What the weights were trained on."
    ),
    synthetic: bool = typer.Option(
        False, "--synthetic/--no-synthetic", help="Weights trained on synthetic data."
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Unpickle a .pth with more than tensors (trusted files only)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle folder."),
) -> None:
    """Import an encoder checkpoint (Meta DINOv3, OrthoFoundation, timm) into a model bundle."""
    from ortho_node.model.bundle import import_checkpoint, read_manifest

    head_names = tuple(h.strip() for h in heads.split(",") if h.strip()) if heads else None
    extra = {"training_data": training_data} if training_data else {}
    try:
        bundle_dir = import_checkpoint(
            checkpoint,
            out,
            name=name or _default_name(checkpoint),
            version=version,
            arch=arch,
            heads=head_names,
            img_size=input_size,
            license=license_text,
            synthetic=synthetic,
            allow_pickle=allow_pickle,
            overwrite=force,
            **extra,
        )
    except (OSError, ValueError) as exc:  # Checkpoint/Bundle/UnknownHead errors are ValueErrors
        raise _fail(str(exc)) from exc
    manifest = read_manifest(bundle_dir)
    console.print(
        f"[green]wrote[/] {escape(str(bundle_dir))}  ({escape(manifest.name)} {manifest.version})",
        highlight=False,
    )
    for note in manifest.provenance.import_notes:
        console.print(f"  {escape(note)}", highlight=False)
    untrained = [n for n in manifest.head_names if n not in manifest.trained_heads]
    if untrained:
        console.print(
            f"[yellow]{len(untrained)} heads are untrained[/]: the node will not report them "
            "until a bundle with trained heads replaces this one.",
            highlight=False,
        )


def _params(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


@app.command("info")
def info_command(bundle: Path = typer.Argument(..., help="Bundle folder.")) -> None:
    """Show a bundle's encoder, input, heads and provenance (reads the manifest only)."""
    from ortho_node.model.manifest import BundleError, read_manifest

    try:
        manifest = read_manifest(bundle)
    except BundleError as exc:
        raise _fail(str(exc)) from exc
    prov = manifest.provenance
    height, width = manifest.input_size
    source_sha = prov.source_checkpoint_sha256 or "-"
    summary = Table(title=f"{manifest.name} {manifest.version}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    rows = [
        ("architecture", manifest.arch),
        ("parameters", f"{_params(manifest.num_params)} encoder"),
        ("input size", f"{height} x {width}, patch {manifest.patch_size}"),
        ("normalisation", f"mean {list(manifest.mean)}, std {list(manifest.std)}"),
        ("synthetic", "YES - demo weights, not for clinical use" if prov.synthetic else "no"),
        ("training data", prov.training_data),
        ("source checkpoint", f"{prov.source_checkpoint or '-'} (sha256 {source_sha})"),
        ("intended use", prov.intended_use),
        ("disclaimer", prov.disclaimer),
        ("licence", manifest.license),
        ("weights sha256", manifest.weights_sha256),
        ("device UID", manifest.device_uid),
        ("created", f"{prov.created_at} by {prov.created_by}"),
    ]
    for field, value in rows:
        summary.add_row(field, escape(value))
    console.print(summary)
    heads = Table(title="task heads")
    for column in ("head", "kind", "labels", "scope", "pooling", "threshold", "trained"):
        heads.add_column(column)
    for entry in manifest.heads:
        spec = entry.spec
        modalities = "/".join(sorted(spec.scope.modalities))
        scope = f"{modalities} {'/'.join(sorted(spec.scope.body_parts))}"
        heads.add_row(
            spec.name,
            spec.kind.value,
            escape(", ".join(spec.labels)),
            escape(scope),
            spec.pooling.value if spec.pooling else "-",
            f"{spec.threshold:g}" if spec.threshold is not None else "-",
            "yes" if entry.trained else "[yellow]no (not reported)[/]",
        )
    console.print(heads)


@app.command("verify")
def verify_command(bundle: Path = typer.Argument(..., help="Bundle folder.")) -> None:
    """Verify schema, checksum, keys/shapes and a forward pass; exit status 0 if it passes."""
    from ortho_node.model.bundle import verify_bundle

    report = verify_bundle(bundle)
    colours = {"pass": "green", "fail": "red", "warn": "yellow", "skip": "dim"}
    verdict = "[green]OK[/]" if report.ok else "[red]FAILED[/]"
    console.print(f"bundle {escape(str(report.path))}: {verdict}", highlight=False)
    for check in report.checks:
        colour = colours.get(check.status, "white")
        console.print(
            f"  [{colour}]{check.status.upper():4}[/] {check.name}: {escape(check.detail)}",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------- infer

_PROGRESS_MIN_FILES = 20
SYNTHETIC_WARNING = "synthetic model - not for clinical use"


def _side(laterality: object) -> str:
    return {"L": "left", "R": "right"}.get(getattr(laterality, "value", ""), "-")


def _findings_table(findings: "StudyFindings") -> Table:
    table = Table(title=f"study {findings.study_instance_uid}", title_justify="left")
    for column in ("task", "side", "result", "probability", "note"):
        table.add_column(column, overflow="fold")
    for finding in findings.findings:
        note = "" if finding.heatmap is None else "explanation map"
        table.add_row(
            escape(finding.title), _side(finding.laterality), escape(finding.label),
            f"{finding.probability:.3f}", note,
        )
    for outcome in findings.not_evaluated:
        status = outcome.status.value.replace("_", " ")
        table.add_row(
            escape(outcome.title), _side(outcome.laterality), f"[yellow]{status}[/]", "-",
            escape(outcome.reason),
        )
    model = findings.model
    caption = f"model {model.label}"
    if model.synthetic:
        caption += f" - [bold red]{SYNTHETIC_WARNING}[/]"
    table.caption = f"{caption}\n{escape(model.disclaimer)}"
    return table


def _print_tables(results: "list[StudyFindings]") -> None:
    for findings in results:
        if not findings.in_scope:
            console.print(
                f"[bold]study {escape(findings.study_instance_uid)}[/]: [yellow]out of scope[/] - "
                f"{escape(findings.out_of_scope_reason or '')}",
                highlight=False,
            )
            continue
        console.print(_findings_table(findings))


@app.command("infer")
def infer_command(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help="Model bundle folder (default: the packaged demo bundle)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch: int = typer.Option(32, "--batch", min=1, help="Most images per forward pass."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32 or bf16."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the encoder."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress",
        help=f"Progress bar on stderr (default: from {_PROGRESS_MIN_FILES} files on).",
    ),
) -> None:
    """Run the model on DICOM files offline and print the findings per study."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ortho_node.model.infer import collect_studies, findings_to_dict, run_infer
    from ortho_node.model.manifest import BundleError

    try:
        found = collect_studies(paths)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    for path, reason in found.skipped:
        err_console.print(f"[dim]skipped {escape(str(path))}: {escape(reason)}[/]", highlight=False)
    if not found.studies:
        raise _fail("no DICOM study found in the given paths")
    show = progress if progress is not None else found.file_count >= _PROGRESS_MIN_FILES
    bar = Progress(
        TextColumn("analysing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
        console=err_console, transient=err_console.is_terminal, disable=not show,
    )
    with bar:
        task = bar.add_task("infer", total=found.file_count)
        try:
            results = run_infer(
                found, bundle_dir=bundle, device=device, max_batch=batch,
                precision=precision, compile=compile_model,
                on_study=lambda _, study: bar.advance(task, len(study.paths)),
            )
        except (BundleError, ValueError) as exc:  # bad bundle, device or precision name
            raise _fail(str(exc)) from exc
    if as_json:
        document = {
            "studies": [findings_to_dict(findings) for findings in results],
            "skipped_files": [{"path": str(p), "reason": r} for p, r in found.skipped],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _print_tables(results)
