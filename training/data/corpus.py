"""Preprocessed images in memory: :class:`Sample` (one radiograph or one MR series) and
:class:`TensorCorpus` (many of them, all at one input size).

Planes are stored as ``uint8`` ``[K, S, S]`` display values (the node pipeline's ``[0, 1]``
plane times 255): a quarter of the memory of float32, and the 1/255 step is below anything the
model input resolves. :func:`to_model_input` turns planes into the encoder's normalised
3-channel input, exactly as the node's preprocessing does (grey repeated, then mean/std).

Synthetic data: a sample is a phantom when its patient ID has the form ``ortho_node.phantoms``
gives every synthetic patient (``PHANTOM-`` and 8 digits). Every route a phantom takes into a
corpus keeps that ID (``phantoms:N`` specs, the DICOM + labels CSV and the shards
``ortho-train phantoms`` writes, DICOM folders), so :func:`has_phantoms` tells phantom-trained
weights apart without any other record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ortho_node.model.manifest import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Sample", "TensorCorpus", "has_phantoms", "is_phantom_patient", "to_model_input"]

_PHANTOM_PATIENT_ID = re.compile(r"PHANTOM-\d{8}")


@dataclass(frozen=True)
class Sample:
    """One model input unit with its identity and task labels.

    Attributes
    ----------
    patient_id, study_uid, series_uid : str
        Where it comes from (splits are made on ``patient_id``).
    modality : str
        DICOM modality (``DX``, ``CR``, ``MR``; ``OT`` for plain image files).
    view : str
        Radiograph view (``AP``, ``LAT``) or MR plane (``SAGITTAL``...); may be empty.
    planes : torch.Tensor
        ``uint8`` ``[K, S, S]``: one plane for a radiograph, the sampled slices of an MR series.
    labels : Mapping[str, int]
        Head name to class index, for the tasks this sample is labelled for.
    """

    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    view: str
    planes: torch.Tensor
    labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.planes, torch.Tensor):
            raise TypeError(f"planes must be a torch.Tensor, got {type(self.planes).__name__}")
        if self.planes.dtype != torch.uint8 or self.planes.ndim != 3:
            raise ValueError(
                f"planes must be uint8 [K, S, S], got {self.planes.dtype} {tuple(self.planes.shape)}"
            )
        if self.planes.shape[1] != self.planes.shape[2] or self.planes.shape[0] < 1:
            raise ValueError(f"planes must be square and non-empty, got {tuple(self.planes.shape)}")
        if not self.patient_id:
            raise ValueError("patient_id must be a non-empty string")
        # A plain dict copy (mappingproxy cannot be pickled to and from worker processes).
        object.__setattr__(self, "labels", dict(self.labels))

    @property
    def is_mri(self) -> bool:
        """True for MR series (slice sets pooled by MR heads)."""
        return self.modality == "MR"

    @property
    def num_slices(self) -> int:
        """Number of planes ``K``."""
        return int(self.planes.shape[0])

    @property
    def image_size(self) -> int:
        """Side ``S`` of the planes."""
        return int(self.planes.shape[-1])


class TensorCorpus(Sequence[Sample]):
    """An immutable list of samples at one image size, with patient-level helpers.

    Parameters
    ----------
    samples : iterable of Sample
        All with the same plane size.

    Raises
    ------
    ValueError
        If the samples have different sizes or the corpus is empty.
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        self._samples = tuple(samples)
        if not self._samples:
            raise ValueError("a corpus needs at least one sample")
        sizes = {sample.image_size for sample in self._samples}
        if len(sizes) != 1:
            raise ValueError(f"all samples must share one image size, got {sorted(sizes)}")
        self.image_size: int = sizes.pop()
        # Flat (sample, slice) index of every plane: the unit of self-supervised pretraining,
        # where radiographs and MR slices are mixed as in the paper.
        self._image_index = tuple(
            (i, k) for i, sample in enumerate(self._samples) for k in range(sample.num_slices)
        )

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self._samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    @property
    def num_images(self) -> int:
        """Number of planes over all samples (radiographs plus MR slices)."""
        return len(self._image_index)

    def image(self, index: int) -> torch.Tensor:
        """The ``index``-th plane of the flat image list, ``uint8`` ``[S, S]``."""
        sample, plane = self._image_index[index]
        return self._samples[sample].planes[plane]

    def patients(self) -> tuple[str, ...]:
        """Patient ids in order of first appearance."""
        return tuple(dict.fromkeys(sample.patient_id for sample in self._samples))

    def select(self, keep: Iterable[int]) -> "TensorCorpus":
        """The samples at the given positions."""
        return TensorCorpus(self._samples[i] for i in keep)

    def for_patients(self, patient_ids: Iterable[str]) -> "TensorCorpus":
        """The samples of the given patients."""
        wanted = set(patient_ids)
        return TensorCorpus(s for s in self._samples if s.patient_id in wanted)

    def labelled_for(self, task: str) -> "TensorCorpus | None":
        """The samples labelled for ``task``; None when there are none."""
        chosen = [s for s in self._samples if task in s.labels]
        return TensorCorpus(chosen) if chosen else None

    def tasks(self) -> tuple[str, ...]:
        """Every task some sample is labelled for, sorted."""
        return tuple(sorted({task for s in self._samples for task in s.labels}))

    @staticmethod
    def concat(corpora: Iterable["TensorCorpus"]) -> "TensorCorpus":
        """One corpus holding the samples of several."""
        return TensorCorpus(s for corpus in corpora for s in corpus)


def is_phantom_patient(patient_id: str) -> bool:
    """True for the patient IDs of ``ortho_node.phantoms`` (``PHANTOM-00000042``)."""
    return _PHANTOM_PATIENT_ID.fullmatch(patient_id) is not None


def has_phantoms(corpus: Iterable[Sample]) -> bool:
    """True when any sample is a phantom: a model trained on it is synthetic (even if mixed)."""
    return any(is_phantom_patient(sample.patient_id) for sample in corpus)


def to_model_input(
    planes: torch.Tensor,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``uint8`` or ``[0, 1]`` float planes ``[..., S, S]`` -> normalised ``float32`` ``[..., 3, S, S]``.

    The same grey-to-RGB repetition and normalisation as the node's preprocessing.
    """
    if not isinstance(planes, torch.Tensor):
        raise TypeError(f"planes must be a torch.Tensor, got {type(planes).__name__}")
    values = planes.float() / 255.0 if planes.dtype == torch.uint8 else planes.float()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=values.device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=values.device)[:, None, None]
    return (values.unsqueeze(-3) - mean_t) / std_t
