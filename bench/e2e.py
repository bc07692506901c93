"""End-to-end latency: last instance received -> SR stored in a real Orthanc PACS.

For a 1-image knee X-ray study and a 30-slice knee MRI series, sent with DCMTK storescu to
``ortho-node serve`` (embedded defaults, or ``--broker redis``), with a real Orthanc as the
result destination, prints the timeline of each study:

  stable-age wait   last instance -> job created (the configured quiet period; reported apart)
  queue             job created -> worker started (outbox publish + broker + Celery pick-up)
  read              worker opens the stored instances
  model forward     encoder forward passes (the engine's own timer)
  analyse (rest)    decode, preprocess, heads, explanation maps
  build SR          the TID 1500 SR (highdicom)
  store SR          SR written durably and indexed, its delivery rows committed
  C-STORE SR        the SR sent to Orthanc and acknowledged (before the Secondary Captures
                    are rendered; the time until they are stored too is printed after)

and the pipeline overhead = everything but the model forward, as a fraction of the total
(stable-age wait excluded). Target: <= 20 % on CPU with a ViT-S bundle.

With ``--storage-commitment`` the destination commits: Orthanc reports, on an association of its
own to the node, that it holds each object, and the bench also prints when the SR counted as
committed (the report's round trip after the C-STORE).

The default bundle is a *benchmark* bundle: ViT-S/16 DINOv3 architecture at 224 px with random
weights and heads flagged trained so every step runs. Timing only; its answers mean nothing.

Usage: ``bench/e2e [--repeats 3] [--broker embedded|redis] [--storage-commitment] [--bundle DIR] [--arch ...]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from ortho_node.db.engine import Database  # noqa: E402
from ortho_node.db.models import Delivery, Instance, Job, StoredResult, Study  # noqa: E402
from ortho_node.model.bundle import Provenance, save_bundle  # noqa: E402
from ortho_node.model.encoder import build_encoder  # noqa: E402
from ortho_node.model.heads import create_head  # noqa: E402
from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, write_knee_study  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.peers import NodeProcess, RedisServer, node_config, storescu  # noqa: E402

HEADS = ("kl_grade", "oa_present", "acl", "meniscus")


def benchmark_bundle(out: Path, arch: str) -> Path:
    if (out / "manifest.json").exists():
        return out
    torch.manual_seed(0)
    encoder = build_encoder(arch, img_size=224)
    heads = {name: create_head(name, embed_dim=encoder.embed_dim) for name in HEADS}
    return save_bundle(
        out, encoder=encoder, heads=heads, trained=HEADS, name=f"benchmark-{arch}", version="0.0.0-bench",
        provenance=Provenance(training_data="BENCHMARK ONLY: random weights, timing, never use", synthetic=True),
        license="benchmark only", input_size=(224, 224),
    )


def _sent_by_kind(session, job_id: int) -> list[tuple[str, object, object]]:
    """(result kind, delivery sent_at, committed_at) for every delivery of the job's result objects."""
    return session.execute(
        select(StoredResult.kind, Delivery.sent_at, Delivery.committed_at)
        .join(StoredResult, Delivery.result_id == StoredResult.id)
        .where(StoredResult.job_id == job_id)
    ).all()


def timeline(db: Database, study_uid: str) -> dict[str, float]:
    with db.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        last = max(s.scalars(select(Instance.received_at).where(Instance.study_id == study.id)))
        job = s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)).one()
        sent_by_kind = _sent_by_kind(s, job.id)
        timing = dict(job.summary["timing_s"])
        stamps = (job.created_at, job.started_at)
    created, started = ((t - last).total_seconds() for t in stamps)
    sr_sent = next((t - last).total_seconds() for kind, t, _ in sent_by_kind if kind == "sr")
    all_sent = max((t - last).total_seconds() for _, t, _ in sent_by_kind)
    sr_committed = next((c - last).total_seconds() if c else None for kind, _, c in sent_by_kind if kind == "sr")
    before_delivery = timing["read"] + timing["analyse"] + timing["build_report"] + timing["record_report"]
    return {
        "stable-age wait": created,
        "queue": started - created,
        "read": timing["read"],
        "model forward": timing["model_forward"],
        "analyse (rest)": timing["analyse"] - timing["model_forward"],
        "build SR": timing["build_report"],
        "store SR": timing["record_report"],
        "C-STORE SR": sr_sent - started - before_delivery,
        "total": sr_sent,
        "all objects": all_sent,
        **({"SR committed": sr_committed} if sr_committed is not None else {}),
    }


def wait_for_results(db: Database, study_uid: str, timeout: float = 600, committed: bool = False) -> None:
    """Until the study's job has finished and every result object of it is stored in Orthanc
    (the SR leaves during the job, the captures after it). The timeline comes from the node's
    own timestamps, so this polls gently: on a 2-core machine a tighter loop (it opened a new
    database engine every 50 ms) took CPU from the node it measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with db.session() as s:
            job = s.scalars(
                select(Job).join(Study, Job.study_id == Study.id).where(Study.study_instance_uid == study_uid)
            ).first()
            sent = _sent_by_kind(s, job.id) if job is not None and job.finished_at is not None else []
        done = all(t is not None and (c is not None or not committed) for _, t, c in sent)
        if sent and done and any(kind == "sr" for kind, _, _ in sent):
            return
    raise TimeoutError("results not all delivered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--broker", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to use (default: ViT-S benchmark bundle)")
    parser.add_argument("--arch", default="vit_small_patch16_dinov3")
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument(
        "--storage-commitment", action="store_true",
        help="the destination commits (Storage Commitment Push Model); also prints when the SR was committed",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ortho-e2e-"))
    bundle = args.bundle or benchmark_bundle(REPO / "bench" / "out" / f"bundle-{args.arch}", args.arch)
    redis = RedisServer(work / "redis").start() if args.broker == "redis" else None
    orthanc = Orthanc(work / "orthanc")
    config = node_config(
        work / "node",
        log_level="WARNING",
        assembler_interval_s=0.1,
        stable_age={"default_s": args.stable_age, "per_modality": {"DX": args.stable_age, "MR": args.stable_age}},
        worker={"bundle": str(bundle)},
        destinations=[{
            "kind": "dimse", "name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
            "storage_commitment": args.storage_commitment,
        }],
        **({"broker_url": redis.url} if redis else {}),
    )
    orthanc.modalities = {"node": [config["dimse"]["ae_title"], "127.0.0.1", config["dimse"]["port"]]}
    orthanc.start()
    node = NodeProcess(work / "node", config).start()
    index = node.index()
    cases = {
        "X-ray, 1 image": lambda seed: write_knee_study(work / f"x{seed}", seed=seed, xrays=[XrayPhantomSpec(kl_grade=2, side="L")]),
        "MRI, 30 slices": lambda seed: write_knee_study(work / f"m{seed}", seed=seed, mr_series=[MRPhantomSpec(slices=30)]),
    }
    try:
        # One throw-away study first: the worker loads the bundle on its first job.
        warm = cases["X-ray, 1 image"](999)
        storescu(node.port, [f.path for f in warm.files])
        wait_for_results(index, warm.study_instance_uid, committed=args.storage_commitment)
        print(
            f"bundle: {bundle.name}; broker: {args.broker}; stable age {args.stable_age} s; "
            f"{torch.get_num_threads()} CPU threads{'; storage commitment' if args.storage_commitment else ''}"
        )
        for name, make in cases.items():
            runs = []
            for repeat in range(args.repeats):
                study = make(1000 * (1 + list(cases).index(name)) + repeat)
                run = storescu(node.port, [f.path for f in study.files])
                if run.returncode != 0:
                    raise RuntimeError(run.output[-2000:])
                wait_for_results(index, study.study_instance_uid, committed=args.storage_commitment)
                runs.append(timeline(index, study.study_instance_uid))
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            processing = median["total"] - median["stable-age wait"]
            overhead = processing - median["model forward"]
            print(f"\n{name} (median of {args.repeats})")
            for key, seconds in median.items():
                if key in ("all objects", "SR committed"):
                    continue
                share = "" if key in ("total", "stable-age wait") else f"{100 * seconds / processing:6.1f} %"
                print(f"  {key:<18} {seconds:8.3f} s {share}")
            print(
                f"  (the Secondary Captures follow the SR: all objects stored "
                f"{median['all objects'] - median['stable-age wait']:.3f} s after the stable-age wait)"
            )
            if "SR committed" in median:
                print(
                    f"  (storage commitment: the SR counted as committed {median['SR committed'] - median['total']:.3f} s"
                    " after its C-STORE was acknowledged)"
                )
            print(f"  pipeline overhead  {overhead:8.3f} s = {100 * overhead / processing:.1f} % of {processing:.3f} s (target <= 20 %)")
    except TimeoutError:
        print(node.log()[-3000:], file=sys.stderr)
        raise
    finally:
        index.dispose()
        node.stop()
        orthanc.stop()
        if redis:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
