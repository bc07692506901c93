"""Corpora on disk as shards, and a streaming dataset over them for corpora that do not fit in
memory.

Layout of a shard folder::

    index.json                  {"format": "ortho-train-shards", "version": 1, "image_size": S,
                                 "shards": [{"file": ..., "samples": n, "images": m}, ...]}
    shard-00000.safetensors     tensor "planes": uint8 [m, S, S]; metadata "samples": JSON list
    ...                         (identity, view, labels, num_slices of each sample, in order)

Shards are written to a temporary name and renamed, the index last, so a reader never sees a
half-written folder. :class:`ShardImageStream` streams planes shard by shard: every epoch the
shard order and the order within each shard are reshuffled from ``(seed, epoch)``; shards are
dealt to processes (``rank::world``) and DataLoader workers, so each plane is read by one
reader only and memory holds one shard per reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from training.augment import generator_for
from training.data.corpus import Sample, TensorCorpus

__all__ = ["ShardImageStream", "ShardIndex", "read_shards", "write_shards"]

INDEX_FILE = "index.json"
_FORMAT = "ortho-train-shards"


@dataclass(frozen=True)
class ShardIndex:
    """The index of a shard folder."""

    root: Path
    image_size: int
    shards: tuple[dict[str, Any], ...]

    @property
    def num_images(self) -> int:
        """Planes over all shards."""
        return sum(int(s["images"]) for s in self.shards)

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> "ShardIndex":
        """Read ``index.json``.

        Raises
        ------
        FileNotFoundError
            If the folder has no index.
        ValueError
            If the index is not a shard index of this format.
        """
        root = Path(root)
        path = root / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {INDEX_FILE} in {root}; is this a shard folder?")
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != _FORMAT or data.get("version") != 1:
            raise ValueError(f"{path} is not an {_FORMAT} v1 index")
        return cls(root=root, image_size=int(data["image_size"]), shards=tuple(data["shards"]))


def _sample_meta(sample: Sample) -> dict[str, Any]:
    return {
        "patient_id": sample.patient_id,
        "study_uid": sample.study_uid,
        "series_uid": sample.series_uid,
        "modality": sample.modality,
        "view": sample.view,
        "labels": dict(sample.labels),
        "num_slices": sample.num_slices,
    }


def write_shards(
    corpus: TensorCorpus, out_dir: str | os.PathLike[str], *, samples_per_shard: int = 1024
) -> ShardIndex:
    """Write a corpus as shards (format in the module docstring).

    Raises
    ------
    FileExistsError
        If ``out_dir`` already holds an index.
    ValueError
        If ``samples_per_shard`` < 1.
    """
    from safetensors.torch import save_file

    if (
        isinstance(samples_per_shard, bool)
        or not isinstance(samples_per_shard, int)
        or samples_per_shard < 1
    ):
        raise ValueError(f"samples_per_shard must be an int >= 1, got {samples_per_shard!r}")
    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds a shard index")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, start in enumerate(range(0, len(corpus), samples_per_shard)):
        chunk = [corpus[i] for i in range(start, min(len(corpus), start + samples_per_shard))]
        planes = torch.cat([s.planes for s in chunk]).contiguous()
        name = f"shard-{number:05d}.safetensors"
        staging = out_dir / f".{name}.tmp"
        save_file(
            {"planes": planes},
            str(staging),
            metadata={"samples": json.dumps([_sample_meta(s) for s in chunk])},
        )
        os.replace(staging, out_dir / name)
        entries.append({"file": name, "samples": len(chunk), "images": int(planes.shape[0])})
    index = {"format": _FORMAT, "version": 1, "image_size": corpus.image_size, "shards": entries}
    staging = out_dir / f".{INDEX_FILE}.tmp"
    staging.write_text(json.dumps(index, indent=1) + "\n", "utf-8")
    os.replace(staging, out_dir / INDEX_FILE)
    return ShardIndex(root=out_dir, image_size=corpus.image_size, shards=tuple(entries))


def _load_shard(path: Path) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        planes = handle.get_tensor("planes")
        meta = json.loads((handle.metadata() or {})["samples"])
    return planes, meta


def read_shards(root: str | os.PathLike[str]) -> TensorCorpus:
    """Load a whole shard folder into memory as a :class:`TensorCorpus`."""
    index = ShardIndex.read(root)
    samples = []
    for entry in index.shards:
        planes, meta = _load_shard(index.root / entry["file"])
        offset = 0
        for item in meta:
            count = int(item.pop("num_slices"))
            samples.append(Sample(planes=planes[offset : offset + count].clone(), **item))
            offset += count
    return TensorCorpus(samples)


class ShardImageStream(IterableDataset):
    """Planes streamed from shards, reshuffled every epoch, split over processes and workers.

    Yields ``(plane, epoch, position)``: the ``uint8`` ``[S, S]`` plane, the epoch of this
    reader, and the plane's position in this reader's sequence (use both to seed augmentation).
    The stream is endless (epoch after epoch); ``start`` skips that many planes of this reader's
    sequence, which is how a resumed run continues where it stopped.

    Parameters
    ----------
    root : path-like
        Shard folder.
    seed : int
        Shuffle seed.
    rank, world_size : int, optional
        This process and the number of processes; shards are dealt ``rank::world_size``.
    start : int, optional
        Planes of this reader's sequence to skip (per DataLoader worker when there are several).
    worker : int, optional
        Read the share of this DataLoader worker instead of the calling one's (a resumed
        stream hands each worker the share that comes next in the DataLoader's order).

    Raises
    ------
    ValueError
        If there are fewer shards than readers (some reader would get nothing).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        worker: int | None = None,
    ) -> None:
        super().__init__()
        self.index = ShardIndex.read(root)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        if len(self.index.shards) < world_size:
            raise ValueError(
                f"{len(self.index.shards)} shards cannot feed {world_size} processes; "
                "write more, smaller shards"
            )
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.worker = worker

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        workers = 1 if info is None else info.num_workers
        worker = 0 if info is None else info.id
        if self.worker is not None:
            if not 0 <= self.worker < workers:
                raise ValueError(f"worker must lie in [0, {workers}), got {self.worker}")
            worker = self.worker
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int]]:
        reader, readers = self._reader()
        shards = self.index.shards
        if len(shards) < readers:
            raise ValueError(f"{len(shards)} shards cannot feed {readers} readers")
        position, epoch = 0, 0
        while True:
            order = torch.randperm(len(shards), generator=generator_for(self.seed, epoch))
            mine = [shards[int(i)] for i in order[reader::readers]]
            for number, entry in enumerate(mine):
                count = int(entry["images"])
                if position + count <= self.start:  # whole shard skipped: do not even read it
                    position += count
                    continue
                planes, _ = _load_shard(self.index.root / entry["file"])
                within = torch.randperm(
                    count, generator=generator_for(self.seed, epoch, reader, number)
                )
                for i in within.tolist():
                    if position >= self.start:
                        yield planes[i], epoch, position
                    position += 1
            epoch += 1
