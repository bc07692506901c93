"""Deterministic UIDs, revisions with Predecessor Documents, and the Key Object Selection."""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom.uid import generate_uid

from ortho_node.model.findings import Laterality
from ortho_node.results import (
    KeyObjectTitle,
    PredecessorRef,
    ResultKind,
    ResultUIDs,
    SeriesNumbers,
    build_result_objects,
)
from ortho_node.results.uids import derive_uid, is_valid_uid
from tests.results_support import (
    acl_finding,
    dciodvfy,
    failed,
    kl_finding,
    make_dx,
    make_mr_series,
    model,
    ref,
    replace,
    study,
    unexpected_warnings,
)


def _uids(results) -> dict[str, object]:
    """Every result UID: series and instance UIDs per object, and the SR's tracking UIDs."""
    out: dict[str, object] = {}
    for i, obj in enumerate(results):
        out[f"{i}:{obj.kind.value}:series"] = obj.dataset.SeriesInstanceUID
        out[f"{i}:{obj.kind.value}:instance"] = obj.dataset.SOPInstanceUID
    sr = hd.sr.Comprehensive3DSR.from_dataset(results.sr)
    groups = list(sr.content.get_planar_roi_measurement_groups()) + list(sr.content.get_image_measurement_groups())
    out["tracking"] = sorted(str(g.tracking_uid) for g in groups)
    return out


@pytest.fixture(scope="module")
def bilateral_study():
    su = generate_uid()
    left, right = make_dx(su, laterality="L"), make_dx(su, laterality="R", instance_number=2)
    f = study(
        su,
        findings=(kl_finding(left), kl_finding(right, grade=2, laterality=Laterality.RIGHT)),
        not_evaluated=(failed(),),
        evaluated_images=(ref(left), ref(right)),
    )
    return f, [left, right]


def test_same_inputs_give_the_same_uids(bilateral_study):
    f, sources = bilateral_study
    first = build_result_objects(f, sources=sources, include_key_objects=True)
    again = build_result_objects(f, sources=list(reversed(sources)), include_key_objects=True)
    assert _uids(first) == _uids(again)
    assert [o.kind for o in first] == [ResultKind.SR, ResultKind.SC, ResultKind.SC, ResultKind.KO]
    assert [sc.InstanceNumber for sc in first.secondary_captures] == [1, 2]
    everything = [u for k, u in _uids(first).items() if k != "tracking"] + _uids(first)["tracking"]
    assert all(is_valid_uid(str(u)) for u in everything)
    instance_uids = [o.dataset.SOPInstanceUID for o in first]
    assert len(set(instance_uids)) == len(instance_uids)
    sc_series = {sc.SeriesInstanceUID for sc in first.secondary_captures}
    assert len(sc_series) == 1 and sc_series.isdisjoint({first.sr.SeriesInstanceUID, first.key_objects.SeriesInstanceUID})


def test_revision_gets_new_uids_and_names_its_predecessor(bilateral_study, tmp_path):
    f, sources = bilateral_study
    rev0 = build_result_objects(f, sources=sources, include_key_objects=True)
    rev1 = build_result_objects(f, sources=sources, revision=1, predecessor=rev0.sr_reference(), include_key_objects=True)
    old, new = _uids(rev0), _uids(rev1)
    for key in old:
        if key != "tracking":
            assert old[key] != new[key], key
    assert old["tracking"] == new["tracking"]  # the same findings, tracked across versions
    (study_item,) = rev1.sr.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == f.study_instance_uid
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == rev0.sr.SeriesInstanceUID
    (sop_item,) = series_item.ReferencedSOPSequence
    assert sop_item.ReferencedSOPInstanceUID == rev0.sr.SOPInstanceUID
    assert sop_item.ReferencedSOPClassUID == rev0.sr.SOPClassUID
    assert "PredecessorDocumentsSequence" not in rev0.sr
    errors, out = dciodvfy(rev1.sr, tmp_path / "rev1.dcm")
    assert not errors, out
    assert hd.sr.srread(tmp_path / "rev1.dcm").PredecessorDocumentsSequence[0].StudyInstanceUID == f.study_instance_uid
    # a second build of revision 1 is again the same
    assert _uids(build_result_objects(f, sources=sources, revision=1, predecessor=rev0.sr_reference(),
                                      include_key_objects=True)) == new


def test_predecessor_from_uids_only(bilateral_study):
    f, sources = bilateral_study
    earlier = PredecessorRef(f.study_instance_uid, generate_uid(), generate_uid())
    sr = build_result_objects(f, sources=sources, revision=3, predecessor=earlier).sr
    item = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID == earlier.series_instance_uid
    assert item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == earlier.sop_instance_uid
    assert item.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    with pytest.raises(ValueError, match="predecessor belongs to study"):
        build_result_objects(f, sources=sources, revision=1,
                             predecessor=PredecessorRef(generate_uid(), generate_uid(), generate_uid()))
    with pytest.raises(ValueError, match="predecessor must be None at revision 0"):
        build_result_objects(f, sources=sources, predecessor=earlier)
    rev1 = build_result_objects(f, sources=sources, revision=1, predecessor=earlier)
    with pytest.raises(ValueError, match="predecessor is this very SR"):
        build_result_objects(f, sources=sources, revision=1, predecessor=rev1.sr_reference())
    with pytest.raises(ValueError, match="sop_instance_uid must be a valid DICOM UID"):
        PredecessorRef(f.study_instance_uid, generate_uid(), "1.02.x")


def test_uids_depend_on_model_version_and_prefix(bilateral_study):
    f, sources = bilateral_study
    base = ResultUIDs.for_findings(f)
    newer = ResultUIDs.for_findings(replace(f, model=replace(f.model, version="1.3.0")))
    assert base.instance(ResultKind.SR) != newer.instance(ResultKind.SR)
    assert base.tracking("finding", "kl_grade", "L") != newer.tracking("finding", "kl_grade", "L")
    assert base.series(ResultKind.SC) != base.series(ResultKind.SR)
    assert base.instance(ResultKind.SC, "a") != base.instance(ResultKind.SC, "b")
    rooted = ResultUIDs.for_findings(f, prefix="1.2.826.0.1.3680043.10.999.")
    uid = rooted.instance(ResultKind.SR)
    assert uid.startswith("1.2.826.0.1.3680043.10.999.") and is_valid_uid(uid)
    assert uid == ResultUIDs.for_findings(f, prefix="1.2.826.0.1.3680043.10.999.").instance(ResultKind.SR)
    sr = build_result_objects(f, sources=sources, uid_prefix="1.2.826.0.1.3680043.10.999.").sr
    assert sr.SOPInstanceUID == uid
    assert derive_uid("a", "bc") != derive_uid("ab", "c")
    with pytest.raises(ValueError, match="prefix must be a UID root"):
        ResultUIDs.for_findings(f, prefix="1.2.3")


def test_key_object_selection_of_key_images_sr_and_scs(tmp_path):
    su = generate_uid()
    series = make_mr_series(su, n_slices=3)
    f = study(su, findings=(acl_finding(series[1], series),))
    results = build_result_objects(f, sources=series, include_key_objects=True,
                                   series_numbers=SeriesNumbers(sr=700, sc=701, ko=702))
    ko = results.key_objects
    assert (results.sr.SeriesNumber, results.secondary_captures[0].SeriesNumber, ko.SeriesNumber) == (700, 701, 702)
    errors, out = dciodvfy(ko, tmp_path / "ko.dcm")
    assert not errors and not unexpected_warnings(out), out
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113000"
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in ko.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    assert referenced == {series[1].SOPInstanceUID, results.sr.SOPInstanceUID, results.secondary_captures[0].SOPInstanceUID}
    assert ko.StudyInstanceUID == su
    observer = [i for i in ko.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121012"]
    assert observer[0].UID == model().device_uid
    manifest = build_result_objects(f, sources=series, include_key_objects=True, key_object_title="manifest").key_objects
    assert manifest.ConceptNameCodeSequence[0].CodeValue == "113030"
    assert build_result_objects(f, sources=series, key_object_title=KeyObjectTitle.MANIFEST).key_objects is None
    with pytest.raises(ValueError, match="title must be one of"):
        build_result_objects(f, sources=series, include_key_objects=True, key_object_title="favourites")
