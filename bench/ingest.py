"""C-STORE ingest benchmark: ortho-node against DCMTK storescp, same sender, same data, one run.

Sends a 400-slice MR series (256x256, 16-bit) and 20 DX radiographs (2000x2500) with DCMTK
``storescu`` to (a) ``ortho-node serve`` (durability on: fsync + link + committed index row before
each 0x0000) and (b) DCMTK ``storescp -od DIR`` (C++, writes files without fsync). Prints images/s,
MB/s and the node/storescp ratio, for one association and for several in parallel.

Usage: ``bench/ingest [--parallel 4] [--repeats 3] [--poll-delay 0.001]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, write_knee_study  # noqa: E402
from tests.support.peers import NodeProcess, free_port, node_config, wait_for_port  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[Path, ...]

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def make_data(root: Path) -> list[Dataset]:
    """400 MR slices in one series (five phantom blocks re-labelled as one series) and 20 DX."""
    mr_dir, dx_dir = root / "mr400", root / "dx20"
    if not mr_dir.exists():
        series_uid, study_uid = generate_uid(), generate_uid()
        number = 0
        for block in range(5):
            study = write_knee_study(root / f"mrblock{block}", seed=100 + block, mr_series=[MRPhantomSpec(slices=80)])
            for item in sorted(study.files, key=lambda f: f.instance_number):
                number += 1
                ds = pydicom.dcmread(item.path)
                ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = series_uid, study_uid, number
                mr_dir.mkdir(parents=True, exist_ok=True)
                ds.save_as(mr_dir / f"I{number:04d}.dcm", enforce_file_format=True)
            shutil.rmtree(root / f"mrblock{block}")
    if not dx_dir.exists():
        dx_dir.mkdir(parents=True)
        for index in range(20):  # one study per patient: a knee has one KL grade
            spec = XrayPhantomSpec(kl_grade=index % 5, side="L" if index % 2 else "R", rows=2500, columns=2000)
            study = write_knee_study(root / "dxstudy", seed=7 + index, xrays=[spec], patient_index=index)
            shutil.copy(study.files[0].path, dx_dir / f"X{index:03d}.dcm")
            shutil.rmtree(root / "dxstudy")
    return [
        Dataset("MR 400 x 256x256", tuple(sorted(mr_dir.iterdir()))),
        Dataset("DX 20 x 2000x2500", tuple(sorted(dx_dir.iterdir()))),
    ]


def send(port: int, files: tuple[Path, ...], parallel: int) -> float:
    """Wall time of ``parallel`` storescu processes splitting ``files`` between them."""
    chunks = [files[i::parallel] for i in range(parallel)]
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", "ORTHO", "127.0.0.1", str(port), *map(str, chunk)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


class StoreScp:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / "storescp"
        self.process: subprocess.Popen | None = None

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        self.process = subprocess.Popen(
            ["storescp", "+xa", "-od", str(self.out), str(self.port)], env=DCMTK_ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


NULL_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts, evt
sys.path.insert(0, {repo!r})
from ortho_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES
ae = AE("ORTHO"); ae.maximum_pdu_size = 0; ae.maximum_associations = 32
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
ae.start_server(("127.0.0.1", {port}), block=True, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
"""


class NullPynetdicom:
    """pynetdicom with a handler that stores nothing: the framework's own per-instance cost."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def reset(self) -> None:
        self.stop()
        script = NULL_SCP.format(repo=str(REPO), port=self.port)
        self.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)
        time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


class Node:
    def __init__(self, workdir: Path, poll_delay: float) -> None:
        self.workdir = workdir
        self.poll_delay = poll_delay
        self.node: NodeProcess | None = None

    @property
    def port(self) -> int:
        return self.node.port

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        config = node_config(
            self.workdir, log_level="WARNING",
            dimse={"idle_poll_delay_s": self.poll_delay, "max_associations": 32},
            worker={"embedded": False}, stable_age={"default_s": 3600, "per_modality": {}},
        )
        self.node = NodeProcess(self.workdir, config).start()

    def stop(self) -> None:
        if self.node:
            self.node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=4, help="associations in the parallel run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is printed")
    parser.add_argument("--poll-delay", type=float, default=None, help="node dimse.idle_poll_delay_s (default: config default)")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "out" / "ingest-data")
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        sys.exit("needs DCMTK (scripts/setup-test-env installs it)")

    print("generating data (cached in bench/out) ...", flush=True)
    datasets = make_data(args.data)
    from ortho_node.config import DimseSettings

    poll_delay = DimseSettings().idle_poll_delay_s if args.poll_delay is None else args.poll_delay
    work = Path(tempfile.mkdtemp(prefix="ortho-bench-"))
    receivers = {
        "storescp": StoreScp(work),
        "pynetdicom-null": NullPynetdicom(),
        "ortho-node": Node(work / "node", poll_delay),
    }
    print(f"\nnode: fsync + link + committed SQLite row per instance; dimse.idle_poll_delay_s={poll_delay}")
    print("storescp: DCMTK 'storescp +xa -od DIR' (no fsync; one association at a time)")
    print("pynetdicom-null: pynetdicom SCP whose C-STORE handler returns 0x0000 and stores nothing\n")
    header = f"{'data':<20} {'assoc':>5} {'receiver':<16} {'seconds':>8} {'images/s':>9} {'MB/s':>8} {'vs storescp':>12}"
    print(header)
    print("-" * len(header))
    try:
        for data in datasets:
            for parallel in (1, args.parallel):
                times: dict[str, float] = {}
                for name, receiver in receivers.items():
                    samples = []
                    for _ in range(args.repeats):
                        receiver.reset()
                        samples.append(send(receiver.port, data.files, parallel))
                    times[name] = statistics.median(samples)
                for name, seconds in times.items():
                    ratio = times["storescp"] / seconds if name != "storescp" else None
                    print(
                        f"{data.name:<20} {parallel:>5} {name:<16} {seconds:>8.3f} {len(data.files) / seconds:>9.1f} "
                        f"{data.megabytes / seconds:>8.1f} {'' if ratio is None else f'{ratio:.2f}x':>12}",
                        flush=True,
                    )
    finally:
        for receiver in receivers.values():
            receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\nratio = throughput / storescp throughput (node targets: >= 0.5x MR, >= 0.8x DX)")


if __name__ == "__main__":
    main()
