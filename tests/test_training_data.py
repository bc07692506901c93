"""Training data: label mapping, corpora from phantoms / labels CSV / image files, patient
splits, shards and the streaming dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from ortho_node.model.heads import head_spec
from ortho_node.model.preprocess import PreprocessConfig, preprocess_image
from ortho_node.phantoms import write_phantom_cohort
from tests.test_training_support import TINY_SIZE, tiny_corpus
from training.data.corpus import Sample, TensorCorpus, to_model_input
from training.data.loaders import PipelineOptions
from training.data.shards import ShardImageStream, read_shards, write_shards
from training.data.sources import corpus_from_labels_csv
from training.data.splits import patient_subset, split_by_patient
from training.tasks import encode_label, labels_from_row


@pytest.fixture(scope="module")
def corpus() -> TensorCorpus:
    return tiny_corpus(xray_patients=10, mr_patients=4)


def test_labels_from_row_maps_columns_and_derives_oa() -> None:
    labels = labels_from_row({"kl_grade": "3", "acl_tear": "1", "meniscus_tear": "", "view": "AP"})
    assert labels == {"kl_grade": 3, "acl": 1, "oa_present": 1}
    assert labels_from_row({"kl_grade": 1})["oa_present"] == 0
    assert encode_label(head_spec("acl"), "present") == 1
    assert encode_label(head_spec("acl"), "false") == 0
    with pytest.raises(ValueError, match="kl_grade"):
        labels_from_row({"kl_grade": "7"})
    with pytest.raises(ValueError, match="not a class"):
        encode_label(head_spec("acl"), "maybe")


def test_phantom_corpus_mixes_radiographs_and_mr_with_labels(corpus: TensorCorpus) -> None:
    radiographs = [s for s in corpus if not s.is_mri]
    series = [s for s in corpus if s.is_mri]
    assert len(radiographs) == 20 and len(series) == 4  # AP + LAT per patient; one series each
    assert {s.view for s in radiographs} == {"AP", "LAT"}
    assert all(s.planes.shape == (6, TINY_SIZE, TINY_SIZE) for s in series)
    assert corpus.num_images == 20 + 4 * 6
    assert all(set(s.labels) == {"kl_grade", "oa_present"} for s in radiographs)
    assert all(set(s.labels) == {"acl", "meniscus"} for s in series)
    model_input = to_model_input(radiographs[0].planes)
    assert model_input.shape == (1, 3, TINY_SIZE, TINY_SIZE) and model_input.dtype == torch.float32


def test_labels_csv_dicom_corpus_matches_node_pipeline(tmp_path: Path) -> None:
    csv_path = write_phantom_cohort(
        tmp_path / "cohort",
        3,
        seed=9,
        xray_views=("AP",),
        with_mr=True,
        mr_slices=10,
        xray_rows=256,
        xray_columns=256,
        xray_pixel_spacing_mm=0.6,
    )
    corpus = corpus_from_labels_csv(csv_path, options=PipelineOptions(image_size=64, max_slices=4))
    assert len(corpus) == 6 and sum(s.is_mri for s in corpus) == 3
    rows = list(csv.DictReader(csv_path.open()))
    xray_row = next(r for r in rows if r["modality"] != "MR")
    sample = next(s for s in corpus if s.series_uid == xray_row["series_uid"])
    assert sample.labels["kl_grade"] == int(xray_row["kl_grade"])
    # The plane is the node's own preprocessing output (bicubic, as bundles ask), to 1/255.
    node = preprocess_image(
        csv_path.parent / xray_row["path"],
        config=PreprocessConfig(input_size=64, interpolation="bicubic"),
    )
    expected = node.tensor[0] * 0.229 + 0.485
    assert torch.allclose(sample.planes[0].float() / 255, expected, atol=1 / 255 + 1e-4)


def test_labels_csv_image_files(tmp_path: Path) -> None:
    rows = []
    for number in range(4):
        array = np.zeros((40, 80), dtype=np.uint8)
        array[:, : 10 * (number + 1)] = 255
        path = tmp_path / f"img{number}.png"
        Image.fromarray(array).save(path)
        rows.append(
            {
                "patient_id": f"P{number % 2}",
                "path": path.name,
                "modality": "DX",
                "laterality": "L" if number == 0 else "R",
                "kl_grade": str(number),
            }
        )
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    corpus = corpus_from_labels_csv(tmp_path / "labels.csv", options=PipelineOptions(image_size=32))
    assert len(corpus) == 4 and corpus.patients() == ("P0", "P1")
    first = corpus[0].planes[0]
    # 80x40 fit into 32x32: 16 rows of image centred, black padding above and below.
    assert first[:8].max() == 0 and first[8:24].max() == 255
    # Left image mirrored: its white band is on the right.
    assert first[16, -1] == 255 and first[16, 0] == 0
    assert [s.labels["kl_grade"] for s in corpus] == [0, 1, 2, 3]


def test_patient_splits_are_disjoint_and_subsets_nested(corpus: TensorCorpus) -> None:
    split = split_by_patient(corpus, fractions=(0.6, 0.2, 0.2), seed=3)
    parts = [set(p.patients()) for p in (split.train, split.val, split.test) if p is not None]
    assert sum(len(p) for p in parts) == len(corpus.patients())
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    patients = corpus.patients()
    small = patient_subset(patients, fraction=0.25, seed=1)
    large = patient_subset(patients, fraction=0.5, seed=1)
    assert set(small) < set(large) and len(small) == int(np.ceil(0.25 * len(patients)))
    assert patient_subset(reversed(patients), fraction=0.5, seed=1) == large  # order-free


def test_shards_round_trip_and_streaming(corpus: TensorCorpus, tmp_path: Path) -> None:
    index = write_shards(corpus, tmp_path / "shards", samples_per_shard=5)
    assert len(index.shards) == 5 and index.num_images == corpus.num_images
    back = read_shards(tmp_path / "shards")
    assert [s.series_uid for s in back] == [s.series_uid for s in corpus]
    assert all(
        torch.equal(a.planes, b.planes) and a.labels == b.labels for a, b in zip(back, corpus)
    )
    with pytest.raises(FileExistsError):
        write_shards(corpus, tmp_path / "shards")

    def take(stream: ShardImageStream, n: int) -> list[tuple[torch.Tensor, int, int]]:
        items = []
        for item in stream:
            items.append(item)
            if len(items) == n:
                return items
        return items

    n = corpus.num_images
    ranks = [
        take(ShardImageStream(tmp_path / "shards", seed=4, rank=r, world_size=2), n) for r in (0, 1)
    ]
    # One epoch over both ranks covers every plane exactly once.
    first_epoch = [plane for items in ranks for plane, epoch, _ in items if epoch == 0]
    assert len(first_epoch) == n
    keys = sorted(plane.flatten()[:256].numpy().tobytes() for plane in first_epoch)
    expected = sorted(corpus.image(i).flatten()[:256].numpy().tobytes() for i in range(n))
    assert keys == expected
    # Resuming at position 7 continues the same sequence.
    full = take(ShardImageStream(tmp_path / "shards", seed=4), 12)
    resumed = take(ShardImageStream(tmp_path / "shards", seed=4, start=7), 5)
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(full[7:], resumed))


def test_sample_validation() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Sample("P", "S", "SE", "DX", "AP", torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="patient_id"):
        Sample("", "S", "SE", "DX", "AP", torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one image size"):
        TensorCorpus(
            [
                Sample("P", "S", "A", "DX", "AP", torch.zeros(1, 8, 8, dtype=torch.uint8)),
                Sample("P", "S", "B", "DX", "AP", torch.zeros(1, 9, 9, dtype=torch.uint8)),
            ]
        )
    assert pydicom  # the DICOM path is exercised through the labels-CSV test above
