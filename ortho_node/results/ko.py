"""Key Object Selection of one result: the key images behind the findings plus the SR and SCs.

Built only when the caller asks (the switch lives in the node's configuration). TID 2010 Key
Object Selection with document title from CID 7010, (113000, DCM, "Of Interest") by default,
the model as device observer (TID 1002/1004) and a Key Object Description.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ortho_node.model.findings import ImageRef, StudyFindings
from ortho_node.privacy import uid_ref
from ortho_node.results._common import (
    SourceIndex,
    character_set,
    check_findings,
    check_int,
    header_copy,
    key_images,
    series_description,
    texts_of,
)
from ortho_node.results.codes import KeyObjectTitle
from ortho_node.results.sr import device_observer, model_equipment
from ortho_node.results.uids import ResultKind, ResultUIDs


class FindingsKeyObjects(hd.ko.KeyObjectSelectionDocument):
    """Key Object Selection document (TID 2010) of the key images and the result objects.

    Parameters
    ----------
    findings: ortho_node.model.findings.StudyFindings
        The model's findings; their key images are selected.
    sources: Sequence[pydicom.Dataset]
        Source datasets of the study (not modified).
    results: Sequence[pydicom.Dataset]
        The result objects to select as well (the SR and Secondary Captures), same study.
    uids: ortho_node.results.uids.ResultUIDs
        The UIDs of this result version.
    series_number: int
        Series Number of the KO series.
    title: KeyObjectTitle | str, optional
        Document title, CID 7010: ``KeyObjectTitle.OF_INTEREST`` (default) or ``MANIFEST``
        (also accepted by name, e.g. ``"MANIFEST"``).

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        Nothing to select, a result object belongs to another study, or an unknown title.
    """

    def __init__(
        self,
        findings: StudyFindings,
        *,
        sources: Sequence[Dataset],
        results: Sequence[Dataset],
        uids: ResultUIDs,
        series_number: int,
        title: KeyObjectTitle | str = KeyObjectTitle.OF_INTEREST,
    ) -> None:
        findings = check_findings(findings)
        index = SourceIndex(findings, sources)
        if not isinstance(uids, ResultUIDs):
            raise TypeError(f"uids must be a ResultUIDs, got {type(uids).__name__}")
        check_int("series_number", series_number, minimum=0, maximum=2**31 - 1)
        if isinstance(title, str):
            try:
                title = KeyObjectTitle[title.upper()]
            except KeyError:
                raise ValueError(f"title must be one of {[t.name for t in KeyObjectTitle]}, got {title!r}") from None
        if not isinstance(title, KeyObjectTitle):
            raise TypeError(f"title must be a KeyObjectTitle, got {type(title).__name__}")
        if isinstance(results, (Dataset, str)) or not isinstance(results, Sequence):
            raise TypeError(f"results must be a sequence of result datasets, got {type(results).__name__}")
        result_headers = []
        for i, ds in enumerate(results):
            if not isinstance(ds, Dataset):
                raise TypeError(f"results[{i}] must be a pydicom Dataset, got {type(ds).__name__}")
            if ds.get("StudyInstanceUID") != findings.study_instance_uid:
                raise ValueError(
                    f"results[{i}] belongs to study {uid_ref(ds.get('StudyInstanceUID'))}, "
                    f"expected {uid_ref(findings.study_instance_uid)}"
                )
            result_headers.append(header_copy(ds))
        selected = index.headers(key_images(findings)) + result_headers
        if not selected:
            raise ValueError("nothing to select: findings has no key images and results is empty")

        model = findings.model
        suffix = " (synthetic model)" if model.synthetic else ""
        content = hd.ko.KeyObjectSelection(
            document_title=title.value,
            referenced_objects=selected,
            observer_device_context=device_observer(model),
            description=f"AI key images and results of {model.label}{suffix}",
        )
        super().__init__(
            evidence=selected,
            content=content,
            series_instance_uid=uids.series(ResultKind.KO),
            series_number=series_number,
            sop_instance_uid=uids.instance(ResultKind.KO),
            instance_number=1,
            manufacturer=model.manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=model_equipment(model),
            series_description=series_description("key objects", model),
            manufacturer_model_name=model.name,
            software_versions=model.version,
            specific_character_set=character_set(selected[0], texts_of(findings)),
        )
        self.copy_patient_and_study_information(selected[0])  # as the SR and SCs carry them
        _reference_key_frames(self, key_images(findings))
        self.DeviceUID = model.device_uid


def _reference_key_frames(document: Dataset, images: Sequence[ImageRef]) -> None:
    """Name the key frames of a multi-frame source on its IMAGE item: highdicom selects whole
    instances, and Referenced Frame Number is required where a reference does not apply to all
    frames (PS3.3 Table 10-3, Type 1C); without it a viewer opens the KO's key image at frame 1."""
    frames: dict[str, list[int]] = {}
    for image in images:
        if image.frame_number is not None:
            frames.setdefault(image.sop_instance_uid, []).append(image.frame_number)
    for item in document.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        reference = item.ReferencedSOPSequence[0]
        numbers = frames.get(str(reference.ReferencedSOPInstanceUID))
        if numbers:
            reference.ReferencedFrameNumber = sorted(set(numbers))
