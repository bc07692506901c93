"""TID 1500 SR of the AI findings: validity (dciodvfy -new) and coded content read back with srread."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ortho_node.model.findings import Heatmap, ImageRef, Laterality, OutcomeStatus, StudyFindings, TaskOutcome
from ortho_node.results.library import descriptor_key, image_library
from ortho_node.results.sr import _library_view
from ortho_node.results import FindingsReport, ResultBuilder, ResultObjects, ResultUIDs, build_result_objects
from tests.results_support import (
    KL_VALUES,
    acl_finding,
    algorithm_of,
    all_groups,
    dcentvfy,
    dciodvfy,
    failed,
    group_by_text,
    heat_values,
    items_named,
    kl_finding,
    make_dx,
    make_mr_series,
    model,
    ref,
    replace,
    roi_image_uid,
    root_evaluations,
    study,
    unexpected_warnings,
)


@dataclass
class Case:
    findings: StudyFindings
    sources: list[Dataset]
    results: ResultObjects
    sr: hd.sr.Comprehensive3DSR  # read back from file
    outputs: dict[str, str]  # dciodvfy output per written file


def _build(tmp: Path, findings: StudyFindings, sources: list[Dataset], **kw) -> Case:
    results = build_result_objects(findings, sources=sources, include_key_objects=True, **kw)
    outputs = {}
    for i, obj in enumerate(results):
        path = tmp / f"{i:02d}_{obj.kind.value}.dcm"
        errors, out = dciodvfy(obj.dataset, path)
        outputs[path.name] = out
    sr = hd.sr.srread(tmp / "00_sr.dcm")
    return Case(findings, sources, results, sr, outputs)


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Case:
    su = generate_uid()
    dx = make_dx(su, laterality="L")
    f = study(su, findings=(kl_finding(dx, grade=3),), evaluated_images=(ref(dx),))
    return _build(tmp_path_factory.mktemp("xray"), f, [dx])


@pytest.fixture(scope="module")
def mri(tmp_path_factory) -> Case:
    su = generate_uid()
    series = make_mr_series(su, n_slices=4)
    f = study(
        su,
        findings=(acl_finding(series[2], series),),
        not_evaluated=(failed("meniscus_tear", "Meniscus tear", laterality=Laterality.RIGHT),),
        evaluated_images=tuple(ref(d) for d in series),
    )
    return _build(tmp_path_factory.mktemp("mri"), f, series)


@pytest.fixture(scope="module")
def bilateral(tmp_path_factory) -> Case:
    """Both knees on one radiograph (Image Laterality B): a left and a right KL finding."""
    su = generate_uid()
    dx = make_dx(su, laterality="B", cols=240)
    left = kl_finding(dx, grade=2, laterality=Laterality.LEFT, region=(130.0, 60.0, 230.0, 180.0))
    right = kl_finding(dx, grade=4, laterality=Laterality.RIGHT, region=(10.0, 60.0, 110.0, 180.0))
    f = study(su, findings=(right, left), evaluated_images=(ref(dx),))
    return _build(tmp_path_factory.mktemp("bilateral"), f, [dx])


@pytest.fixture(scope="module")
def out_of_scope(tmp_path_factory) -> Case:
    su = generate_uid()
    dx = make_dx(su)
    dx.BodyPartExamined = "CHEST"
    outcome = TaskOutcome("kl_grade", "KL grade", OutcomeStatus.OUT_OF_SCOPE, "Body part is not a knee")
    f = study(su, out_of_scope_reason="Not a knee study (Body Part Examined CHEST)", not_evaluated=(outcome,),
              evaluated_images=(ref(dx),))
    return _build(tmp_path_factory.mktemp("oos"), f, [dx])


CASES = ["xray", "mri", "bilateral", "out_of_scope"]


@pytest.mark.parametrize("case_name", CASES)
def test_every_object_passes_dciodvfy(case_name, request):
    case: Case = request.getfixturevalue(case_name)
    assert case.outputs, "nothing was written"
    for name, out in case.outputs.items():
        errors = [line for line in out.splitlines() if line.startswith("Error")]
        assert not errors, f"{name}:\n{out}"
        assert not unexpected_warnings(out), f"{name} has new warnings:\n{out}"


def test_xray_sr_states_finding_site_laterality_value_and_probability(xray: Case):
    sr, finding = xray.sr, xray.findings.findings[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    group = group_by_text(sr, "KL grade (left knee)")
    assert isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
    assert hd.UID(group.tracking_uid).is_valid
    assert (group.finding_type.value, group.finding_type.scheme_designator) == ("239873007", "SCT")
    (site,) = group.finding_sites
    assert (site.value.value, site.value.scheme_designator) == ("49076000", "SCT")
    assert site.laterality.value == "7771000"  # SCT Left
    (kl,) = group.get_qualitative_evaluations(name=hd.sr.CodedConcept("KL-GRADE", "99ORTHO", "Kellgren-Lawrence grade"))
    assert (kl.value.value, kl.value.scheme_designator) == (KL_VALUES[3].value, "99ORTHO")
    (num,) = group.get_measurements(name=hd.sr.CodedConcept("P-KL", "99ORTHO", "Probability of predicted KL grade"))
    assert num.value == pytest.approx(finding.probability)
    assert (num.unit.value, num.unit.scheme_designator) == ("1", "UCUM")
    assert [r.referenced_sop_instance_uid for r in num.referenced_images] == [xray.sources[0].SOPInstanceUID]


def test_algorithm_identification_on_every_group_and_probability(xray: Case, mri: Case, out_of_scope: Case):
    for case in (xray, mri, out_of_scope):
        for group in all_groups(case.sr):
            assert algorithm_of(group[0]) == {"name": "OrthoFoundation-KL", "version": "1.2.0", "family": "123110^DCM"}
            for num in group.get_measurements():
                assert algorithm_of(num[0])["family"] == "123110^DCM"


def test_roi_polyline_over_heatmap_region_on_key_image(xray: Case):
    group = group_by_text(xray.sr, "KL grade (left knee)")
    roi = group.roi
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    c0, r0, c1, r1 = xray.findings.findings[0].heatmap.region
    expected = [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]
    np.testing.assert_allclose(roi.value, expected)
    assert roi_image_uid(roi) == xray.sources[0].SOPInstanceUID


def test_observer_library_schemes_equipment_and_disclaimer(xray: Case):
    sr = xray.sr
    device_uids = [i.UID for i in items_named(sr, "121012", "DCM")]
    assert device_uids == [model().device_uid]
    library = items_named(sr, "111028", "DCM")[0]
    images = [i for grp in library.ContentSequence for i in grp.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [xray.sources[0].SOPInstanceUID]
    assert "99ORTHO" in [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence]
    processing = [e for e in sr.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"]
    assert processing[0].ManufacturerModelName == "OrthoFoundation-KL"
    assert processing[0].SoftwareVersions == "1.2.0"
    assert processing[0].DeviceUID == model().device_uid
    acquisition = [e for e in sr.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"]
    assert acquisition and acquisition[0].Manufacturer == "Phantom Imaging"
    texts = [i.TextValue for i in root_evaluations(sr) if i.ValueType == "TEXT"]
    assert model().disclaimer in texts
    assert "synthetic model" in sr.SeriesDescription
    assert sr.DeviceUID == model().device_uid


def _statement(item) -> tuple:
    """A descriptor as what it states: concept name and value (for comparing, independent of place)."""
    name = item.ConceptNameCodeSequence[0].CodeValue
    if item.ValueType == "NUM":
        return name, float(item.MeasuredValueSequence[0].NumericValue)
    if item.ValueType == "CODE":
        return name, item.ConceptCodeSequence[0].CodeValue
    if item.ValueType == "UIDREF":
        return name, item.UID
    return name, item.get("TextValue")


def _exact(item) -> tuple:
    """A descriptor with all it states: value type, relationship, name, value; a NUM's unit and exact value."""
    base = (item.ValueType, item.RelationshipType, item.ConceptNameCodeSequence[0].CodeValue)
    if item.ValueType == "NUM":
        measured = item.MeasuredValueSequence[0]
        exact = measured.get("FloatingPointValue")
        return (*base, str(measured.NumericValue), None if exact is None else float(exact),
                measured.MeasurementUnitsCodeSequence[0].CodeValue)
    if item.ValueType == "CODE":
        return (*base, item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator)
    return (*base, item.get("UID"), item.get("TextValue"))


def _library_groups(sr) -> list:
    (library,) = items_named(sr, "111028", "DCM")
    return list(library.ContentSequence)


def test_mri_library_states_shared_descriptors_once_per_series(mri: Case):
    """One group for the series: what all slices share on the group, each entry only its own position."""
    root = mri.sr.ContentSequence
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in root]
    assert names.index("111028") < names.index("126010")  # TID 1500 row 5 before row 6
    assert names.index("121058") < names.index("111028")  # after the procedure reported (row 4)
    (group,) = _library_groups(mri.sr)
    kinds = [i.ValueType == "IMAGE" for i in group.ContentSequence]
    assert kinds == sorted(kinds)  # the shared descriptors (row 3) before the entries (row 4)
    shared = [_statement(i) for i in group.ContentSequence if i.ValueType != "IMAGE"]
    entries = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == [
        d.SOPInstanceUID for d in mri.sources
    ]
    shared_names = {name for name, _ in shared}
    dcm = codes.DCM
    assert {
        c.value for c in (
            dcm.Modality, dcm.FrameOfReferenceUID, dcm.PixelDataRows, dcm.PixelDataColumns, dcm.HorizontalPixelSpacing,
            dcm.VerticalPixelSpacing, dcm.SliceThickness, dcm.ImageOrientationPatientRowX, dcm.ImagePositionPatientY,
        )
    } <= shared_names
    for entry, source in zip(entries, mri.sources, strict=True):
        own = [_statement(i) for i in entry.ContentSequence]
        assert [name for name, _ in own] == [codes.DCM.ImagePositionPatientX.value]  # the only one that varies
        exact = [_exact(i) for i in group.ContentSequence if i.ValueType != "IMAGE"] + [_exact(i) for i in entry.ContentSequence]
        full = [_exact(i) for i in hd.sr.ImageLibraryEntryDescriptors(source)]
        assert sorted(exact) == sorted(full)  # nothing lost, nothing stated twice


def test_library_groups_per_series_and_keeps_a_lone_image_whole():
    su = generate_uid()
    first, second = make_mr_series(su, n_slices=2), make_mr_series(su, n_slices=2)
    second[1].SliceThickness = 4.0
    dx = make_dx(su, laterality="L")
    library = image_library([first[0], dx, second[0], first[1], second[1]])
    groups = list(library.ContentSequence)
    assert len(groups) == 3
    entry_uids = [[i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in g.ContentSequence if i.ValueType == "IMAGE"]
                  for g in groups]
    assert entry_uids == [[first[0].SOPInstanceUID, first[1].SOPInstanceUID], [dx.SOPInstanceUID],
                          [second[0].SOPInstanceUID, second[1].SOPInstanceUID]]
    lone = groups[1].ContentSequence
    assert [i.ValueType for i in lone] == ["IMAGE"]  # one image: its descriptors stay on its entry
    assert sorted(_exact(i) for i in lone[0].ContentSequence) == sorted(
        _exact(i) for i in hd.sr.ImageLibraryEntryDescriptors(dx)
    )
    differing = [i for i in groups[2].ContentSequence if i.ValueType == "IMAGE"]
    for entry, thickness in zip(differing, (3.0, 4.0), strict=True):
        assert (codes.DCM.SliceThickness.value, thickness) in [_statement(i) for i in entry.ContentSequence]  # not shared: per entry


def test_slices_that_differ_only_in_position_are_described_as_highdicom_describes_them(monkeypatch):
    """The report's minimal slice headers: positions built per slice, the rest from the first
    slice unless a slice differs in more (here one slice's thickness), no item in two places."""
    series = make_mr_series(generate_uid(), n_slices=5)
    series[3].SliceThickness = 5.0
    views = [_library_view(d) for d in series]
    described = []
    real = hd.sr.ImageLibraryEntryDescriptors
    monkeypatch.setattr(hd.sr, "ImageLibraryEntryDescriptors", lambda image: described.append(image) or real(image))
    (group,) = image_library(views).ContentSequence
    monkeypatch.undo()
    assert described == [views[0], views[3]]  # the others only differ in position: three items each
    shared = [_exact(i) for i in group.ContentSequence if i.ValueType != "IMAGE"]
    entries = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert codes.DCM.SliceThickness.value not in {name for _, _, name, *_ in shared}
    for entry, view in zip(entries, views, strict=True):
        own = [_exact(i) for i in entry.ContentSequence]
        assert sorted(shared + own) == sorted(_exact(i) for i in hd.sr.ImageLibraryEntryDescriptors(view))
    placed = [id(item) for entry in entries for item in entry.ContentSequence]
    assert len(placed) == len(set(placed))  # a descriptor reused from the first slice is copied, not shared


def test_descriptors_with_children_of_their_own_are_never_shared(monkeypatch):
    """A modifier would not take part in the comparison, so such a descriptor stays on each entry."""
    real = hd.sr.ImageLibraryEntryDescriptors

    def with_modifier(image):
        items = real(image)
        items[0].ContentSequence = hd.sr.ContentSequence([
            hd.sr.CodeContentItem(name=codes.DCM.Modality, value=codes.cid29.MagneticResonance,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
        ])
        return items

    monkeypatch.setattr(hd.sr, "ImageLibraryEntryDescriptors", with_modifier)
    views = [_library_view(d) for d in make_mr_series(generate_uid(), n_slices=3)]
    (group,) = image_library(views).ContentSequence
    on_group = [i.ConceptNameCodeSequence[0].CodeValue for i in group.ContentSequence if i.ValueType != "IMAGE"]
    assert codes.DCM.Modality.value not in on_group
    assert codes.DCM.PixelDataRows.value in on_group  # the rest is still shared
    entries = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    modality = [[i for i in e.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Modality.value]
                for e in entries]
    assert all(len(found) == 1 and "ContentSequence" in found[0] for found in modality)
    assert len({id(found[0]) for found in modality}) == len(entries)  # copies, not one item in three places


def test_descriptor_key_tells_apart_units_relationships_and_exact_values():
    def num(value, unit=codes.UCUM.Millimeter, relationship=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT):
        return hd.sr.NumContentItem(name=codes.DCM.ImageOrientationPatientRowZ, value=value, unit=unit,
                                    relationship_type=relationship)

    assert descriptor_key(num(1.5)) == descriptor_key(num(1.5))
    assert descriptor_key(num(1.5)) != descriptor_key(num(1.5, unit=codes.UCUM.Centimeter))
    assert descriptor_key(num(1.5)) != descriptor_key(num(1.5, relationship=hd.sr.RelationshipTypeValues.HAS_PROPERTIES))
    close, closer = num(6.123233995736766e-17), num(6.123233995736767e-17)
    assert str(close.MeasuredValueSequence[0].NumericValue) == str(closer.MeasuredValueSequence[0].NumericValue)  # as written
    assert descriptor_key(close) != descriptor_key(closer)  # the exact value tells them apart


def test_mri_roi_on_key_slice_num_from_all_slices_and_failed_task(mri: Case):
    sr, series = mri.sr, mri.sources
    group = group_by_text(sr, "ACL tear (right knee)")
    assert roi_image_uid(group.roi) == series[2].SOPInstanceUID
    (present,) = group.get_qualitative_evaluations(name=hd.sr.CodedConcept("ACL-TEAR", "99ORTHO", "x"))
    assert present.value.value == "52101004"
    (num,) = group.get_measurements(name=hd.sr.CodedConcept("P-acl_tear", "99ORTHO", "x"))
    assert num.value == pytest.approx(0.81)
    assert {r.referenced_sop_instance_uid for r in num.referenced_images} == {d.SOPInstanceUID for d in series}
    (positive,) = group.get_measurements(name=hd.sr.CodedConcept("PP-acl_tear", "99ORTHO", "x"))
    assert positive.value == pytest.approx(0.81)
    procedures = [i.ConceptCodeSequence[0].CodeValue for i in items_named(sr, "121058", "DCM")]
    assert procedures == ["25056-3"]

    failed_group = group_by_text(sr, "Meniscus tear (right) - not evaluated")
    assert failed_group.finding_type.value == "NOT-EVALUATED"
    (status,) = failed_group.get_qualitative_evaluations(name=hd.sr.CodedConcept("AI-STATUS", "99ORTHO", "x"))
    assert status.value.value == "EVAL-FAILED"
    (reason,) = items_named(failed_group[0], "AI-REASON", "99ORTHO")
    assert reason.TextValue == "Inference error: series has too few slices"
    (task,) = items_named(failed_group[0], "AI-TASK", "99ORTHO")
    assert task.TextValue == "Meniscus tear"


def test_bilateral_one_group_per_side_with_own_tracking_uid(bilateral: Case):
    left = group_by_text(bilateral.sr, "KL grade (left knee)")
    right = group_by_text(bilateral.sr, "KL grade (right knee)")
    assert left.finding_sites[0].laterality.value == "7771000"
    assert right.finding_sites[0].laterality.value == "24028007"
    assert left.tracking_uid != right.tracking_uid
    kl = hd.sr.CodedConcept("KL-GRADE", "99ORTHO", "x")
    assert left.get_qualitative_evaluations(name=kl)[0].value.value == "KL-2"
    assert right.get_qualitative_evaluations(name=kl)[0].value.value == "KL-4"
    assert np.asarray(left.roi.value)[0, 0] == pytest.approx(130.0)
    assert np.asarray(right.roi.value)[0, 0] == pytest.approx(10.0)
    assert len(bilateral.results.secondary_captures) == 1  # both knees on one image -> one SC


def test_bilateral_on_two_images(tmp_path):
    su = generate_uid()
    left_dx, right_dx = make_dx(su, laterality="L"), make_dx(su, laterality="R", instance_number=2)
    f = study(
        su,
        findings=(kl_finding(left_dx, laterality=Laterality.LEFT), kl_finding(right_dx, grade=1, laterality=Laterality.RIGHT)),
        evaluated_images=(ref(left_dx), ref(right_dx)),
    )
    case = _build(tmp_path, f, [left_dx, right_dx])
    for name, out in case.outputs.items():
        assert not [line for line in out.splitlines() if line.startswith("Error")], f"{name}:\n{out}"
    left = group_by_text(case.sr, "KL grade (left knee)")
    right = group_by_text(case.sr, "KL grade (right knee)")
    assert roi_image_uid(left.roi) == left_dx.SOPInstanceUID
    assert roi_image_uid(right.roi) == right_dx.SOPInstanceUID
    captures = case.results.secondary_captures
    # Laterality is a series attribute and the captures share a series: each states its own side
    assert [sc.ImageLaterality for sc in captures] == ["L", "R"]
    assert not any("Laterality" in sc for sc in captures)
    errors, output = dcentvfy([left_dx, right_dx, *(o.dataset for o in case.results)], tmp_path / "entities")
    assert not errors, output


def test_out_of_scope_is_stated_not_omitted(out_of_scope: Case):
    sr = out_of_scope.sr
    assert not sr.content.get_planar_roi_measurement_groups()
    study_group = group_by_text(sr, "Study (not evaluated: out of scope)")
    (status,) = study_group.get_qualitative_evaluations(name=hd.sr.CodedConcept("AI-STATUS", "99ORTHO", "x"))
    assert status.value.value == "OUT-OF-SCOPE"
    assert items_named(study_group[0], "AI-REASON")[0].TextValue == "Not a knee study (Body Part Examined CHEST)"
    task_group = group_by_text(sr, "KL grade - not evaluated")
    assert items_named(task_group[0], "AI-REASON")[0].TextValue == "Body part is not a knee"
    root = {i.ConceptNameCodeSequence[0].CodeValue: i for i in root_evaluations(sr)}
    assert root["AI-STATUS"].ConceptCodeSequence[0].CodeValue == "OUT-OF-SCOPE"
    assert root["AI-REASON"].TextValue == "Not a knee study (Body Part Examined CHEST)"
    kinds = [o.kind.value for o in out_of_scope.results]
    assert kinds == ["sr", "ko"]  # no finding, no image to burn in


def test_image_level_group_when_finding_has_no_heatmap(tmp_path):
    su = generate_uid()
    dx = make_dx(su)
    f = study(su, findings=(kl_finding(dx, region=None),))
    case = _build(tmp_path, f, [dx])
    (group,) = case.sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "KL grade (left knee)"
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [dx.SOPInstanceUID]
    assert not [line for line in case.outputs["00_sr.dcm"].splitlines() if line.startswith("Error")]


def test_missing_type2_attributes_do_not_crash_and_sources_stay_untouched(tmp_path):
    su = generate_uid()
    dropped = ("StudyID", "AccessionNumber", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
               "StudyDate", "StudyTime", "PatientName", "ImagerPixelSpacing")
    dx = make_dx(su, drop=dropped)
    before = copy.deepcopy(dx)
    case = _build(tmp_path, study(su, findings=(kl_finding(dx),)), [dx])
    assert dx == before
    assert not [k for k in dropped if k in dx]
    for name, out in case.outputs.items():
        assert not [line for line in out.splitlines() if line.startswith("Error")], f"{name}:\n{out}"
    sr = case.results.sr
    assert (sr.StudyID, sr.AccessionNumber, sr.PatientBirthDate) == ("", "", "")


def test_non_latin1_text_switches_to_utf8(tmp_path):
    su = generate_uid()
    dx = make_dx(su)
    finding = replace(kl_finding(dx), title="Gonarthrose \u2014 Kellgren\u2013Lawrence")
    case = _build(tmp_path, study(su, findings=(finding,)), [dx])
    assert case.results.sr.SpecificCharacterSet == "ISO_IR 192"
    assert group_by_text(case.sr, "Gonarthrose \u2014 Kellgren\u2013Lawrence (left knee)")
    for name, out in case.outputs.items():
        assert not [line for line in out.splitlines() if line.startswith("Error")], f"{name}:\n{out}"


def test_real_model_without_disclaimer_has_no_disclaimer_or_synthetic_label(tmp_path):
    su = generate_uid()
    dx = make_dx(su)
    real = replace(model(synthetic=False), disclaimer="")
    case = _build(tmp_path, study(su, model=real, findings=(kl_finding(dx),)), [dx])
    assert "synthetic" not in case.results.sr.SeriesDescription
    assert not items_named(case.results.sr, "C0034375", "UMLS")


def test_staged_builder_gives_the_objects_of_the_one_call(mri: Case):
    """The pipeline builds the SR, stores and sends it, then the captures: same objects, same UIDs."""
    builder = ResultBuilder(mri.findings, mri.sources, include_key_objects=True)
    report = builder.report()
    staged = (report, *builder.attachments(report))
    assert [o.kind for o in staged] == [o.kind for o in mri.results]
    assert [o.dataset.SOPInstanceUID for o in staged] == [o.dataset.SOPInstanceUID for o in mri.results]
    ko = staged[-1].dataset
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in ko.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert report.dataset.SOPInstanceUID in referenced, "the KO selects the SR that was sent first"


def test_staged_builder_rejects_a_report_of_another_revision(mri: Case):
    first = ResultBuilder(mri.findings, mri.sources).report()
    later = ResultBuilder(mri.findings, mri.sources, revision=1, predecessor=mri.results.sr_reference())
    with pytest.raises(ValueError, match="not the SR of these findings and this revision"):
        later.attachments(first)
    with pytest.raises(ValueError, match="report must be the SR"):
        later.attachments(mri.results.objects[1])
    with pytest.raises(TypeError, match="revision must be an int"):
        ResultBuilder(mri.findings, mri.sources, revision="1")


def test_report_content_is_its_own_and_copies_of_it_are_independent(mri: Case):
    """The SR adopts its content tree without highdicom's defensive copy; what is left behind
    must still behave as a normal dataset: a deep copy is independent of the original."""
    sr = mri.results.sr
    items = len(sr.ContentSequence)
    clone = copy.deepcopy(sr)
    clone.ContentSequence[0].RelationshipType = "CONTAINS"
    clone.ContentSequence.clear()
    assert len(sr.ContentSequence) == items > 0
    assert sr.ContentSequence[0].RelationshipType == "HAS CONCEPT MOD"
    assert clone.content[0] is not sr.content[0], "highdicom's parsed content tree is copied too"
    clone.content[0].ContentSequence.clear()
    assert len(sr.content[0].ContentSequence) == items
    again = build_result_objects(mri.findings, sources=mri.sources).sr
    assert again.ContentSequence == sr.ContentSequence, "building twice gives the same content"


def _timeless(report: FindingsReport) -> bytes:
    """The encoded report without the moments it was made (the only values two builds may not share)."""
    for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
        if keyword in report:
            delattr(report, keyword)
    for equipment in report.ContributingEquipmentSequence:
        equipment.ContributionDateTime = ""
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _referenced_instances(item) -> list[str]:
    found = []
    for child in item.get("ContentSequence", []):
        found.extend(ref.ReferencedSOPInstanceUID for ref in child.get("ReferencedSOPSequence", []))
        found.extend(_referenced_instances(child))
    return found


@pytest.mark.parametrize("case_name", [*CASES, "no_heatmap"])
def test_bulk_items_joined_late_give_the_document_highdicom_builds_whole(case_name, request, monkeypatch):
    """The library and the measurement groups join after highdicom's constructor (it would walk
    them twice), the measurements' source images after the group template; the document must be
    the one highdicom builds with them in place, and every image it references must be in its
    evidence, as highdicom would have checked."""
    if case_name == "no_heatmap":  # TID 1501 groups: source images on the group and its measurements
        su = generate_uid()
        dx = make_dx(su)
        findings, sources = study(su, findings=(kl_finding(dx, region=None),)), [dx]
    else:
        case: Case = request.getfixturevalue(case_name)
        findings, sources = case.findings, case.sources
    late = FindingsReport.from_findings(findings, sources=sources, series_number=9900)
    monkeypatch.setattr(FindingsReport, "_join_bulk_late", False)
    whole = FindingsReport.from_findings(findings, sources=sources, series_number=9900)
    assert _timeless(late) == _timeless(whole)
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study_item in late.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    referenced = set(_referenced_instances(late))
    assert referenced and referenced <= evidence


def test_held_back_items_reach_the_document_when_highdicom_copies_the_content(xray: Case, monkeypatch):
    """highdicom's constructor deep-copies the content it is given unless told it is handed
    over; a highdicom that copied it anyway must still yield the whole document."""
    import ortho_node.results.sr as sr_module

    expected = _timeless(FindingsReport.from_findings(xray.findings, sources=xray.sources, series_number=9900))
    monkeypatch.setattr(sr_module._HandedOverContent, "__deepcopy__", lambda self, memo: copy.deepcopy(Dataset(self), memo))
    copied = FindingsReport.from_findings(xray.findings, sources=xray.sources, series_number=9900)
    assert _timeless(copied) == expected


def test_a_document_holding_another_tree_fails_loudly_instead_of_dropping_the_held_back_items(xray: Case, monkeypatch):
    """Should the document end up holding a tree other than the one built, the held-back
    items (library, measurement groups) would miss it: building must fail, not lose findings."""
    adopt = hd.sr.Comprehensive3DSR.__init__

    def adopt_a_copy(self, *args, **kwargs):
        adopt(self, *args, **kwargs)
        tree = copy.deepcopy(self.ContentSequence)
        del self.ContentSequence  # a new element: the document no longer shares the root item's
        self.ContentSequence = tree

    monkeypatch.setattr(hd.sr.Comprehensive3DSR, "__init__", adopt_a_copy)
    with pytest.raises(RuntimeError, match="did not adopt the content tree in place"):
        FindingsReport.from_findings(xray.findings, sources=xray.sources, series_number=9900)


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture
def dx_and_findings():
    su = generate_uid()
    dx = make_dx(su)
    return dx, study(su, findings=(kl_finding(dx),))


def test_rejects_wrong_types(dx_and_findings):
    dx, f = dx_and_findings
    with pytest.raises(TypeError, match="findings must be a StudyFindings"):
        build_result_objects("not findings", sources=[dx])
    with pytest.raises(TypeError, match="sources must be a sequence"):
        build_result_objects(f, sources=dx)
    with pytest.raises(TypeError, match=r"sources\[0\] must be a pydicom Dataset"):
        build_result_objects(f, sources=["x"])
    with pytest.raises(TypeError, match="revision must be an int"):
        build_result_objects(f, sources=[dx], revision="1")
    with pytest.raises(TypeError, match="predecessor must be a PredecessorRef"):
        build_result_objects(f, sources=[dx], revision=1, predecessor="1.2.3")


def test_rejects_images_not_among_sources(dx_and_findings):
    dx, f = dx_and_findings
    stray = replace(f.findings[0], source_images=(ImageRef(dx.SOPClassUID, generate_uid(), dx.SeriesInstanceUID),))
    with pytest.raises(ValueError, match=r"findings\.findings\[0\]\.source_images\[0\] refers to SOP instance u:[0-9a-f]{12}, which is not in sources"):
        build_result_objects(replace(f, findings=(stray,)), sources=[dx])


def test_rejects_bad_values(dx_and_findings):
    dx, f = dx_and_findings
    outside = replace(f.findings[0], heatmap=replace(f.findings[0].heatmap, region=(0.0, 0.0, 500.0, 10.0)))
    with pytest.raises(ValueError, match=r"heatmap\.region must satisfy"):
        build_result_objects(replace(f, findings=(outside,)), sources=[dx])
    other = make_dx(generate_uid())
    with pytest.raises(ValueError, match=r"sources\[1\] belongs to study"):
        build_result_objects(f, sources=[dx, other])
    with pytest.raises(ValueError, match="repeats task 'kl_grade'"):
        build_result_objects(replace(f, findings=(f.findings[0], f.findings[0])), sources=[dx])
    with pytest.raises(ValueError, match="nothing to report"):
        build_result_objects(replace(f, findings=()), sources=[dx])
    with pytest.raises(ValueError, match="predecessor is required at revision 1"):
        build_result_objects(f, sources=[dx], revision=1)
    with pytest.raises(ValueError, match="revision must be >= 0"):
        build_result_objects(f, sources=[dx], revision=-1)
    with pytest.raises(ValueError, match="device_uid must be a valid DICOM UID"):
        build_result_objects(replace(f, model=replace(f.model, device_uid="not-a-uid")), sources=[dx])
    multiframe = copy.deepcopy(dx)
    multiframe.NumberOfFrames = 2
    with pytest.raises(ValueError, match=r"heatmap\.image must name a frame_number"):
        build_result_objects(f, sources=[multiframe])
    with pytest.raises(ValueError, match="frame_number must lie in 1..1"):
        build_result_objects(replace(f, evaluated_images=(replace(f.findings[0].source_images[0], frame_number=2),)),
                             sources=[dx])
    with pytest.raises(ValueError, match="uids must be derived for the findings' study"):
        FindingsReport(f, sources=[dx], uids=ResultUIDs(generate_uid(), f.model.device_uid, "1"), series_number=1)


@pytest.mark.parametrize(
    "example",
    ["chrGerm.dcm", "chrGreek.dcm", "chrArab.dcm", "chrH31.dcm", "chrH32.dcm", "chrI2.dcm", "chrKoreanMulti.dcm"],
)
def test_source_character_sets_of_ps35_examples(tmp_path, example):
    """Every standard Specific Character Set of PS3.5's examples (pydicom's files), on a knee
    radiograph with the example's patient name: SR, SC and KO build, pass dciodvfy and keep the
    name. The multi-valued sets with an empty first value (PS3.3 C.12.1.1.2) and Korean ISO 2022
    IR 149 had stopped every result of such a study."""
    from pydicom.data import get_charset_files

    source = pydicom.dcmread(get_charset_files(example)[0])
    su = generate_uid()
    dx = make_dx(su)
    dx.SpecificCharacterSet, dx.PatientName = source.SpecificCharacterSet, source.PatientName
    case = _build(tmp_path, study(su, findings=(kl_finding(dx),)), [dx])
    for name, out in case.outputs.items():
        assert not [line for line in out.splitlines() if line.startswith("Error")], f"{name}:\n{out}"
    for path in sorted(tmp_path.glob("*.dcm")):
        assert str(pydicom.dcmread(path).PatientName) == str(source.PatientName), path.name


def test_key_objects_name_the_key_frame_of_a_multi_frame_source(tmp_path):
    """A finding on frame 4 of an Enhanced MR: the KO's IMAGE item names that frame (Referenced
    Frame Number, Type 1C where a reference does not apply to all frames), as the SR and SC do;
    without it a viewer opens the key image at frame 1."""
    from tests.test_preprocess_support import enhanced_mr

    mr = enhanced_mr(frame_laterality="R")
    mr.BodyPartExamined = "KNEE"  # the real file says HEAD, where a Laterality would be an error
    frames = tuple(replace(ref(mr), frame_number=k) for k in range(1, int(mr.NumberOfFrames) + 1))
    finding = replace(
        acl_finding(mr, [mr]), source_images=frames, heatmap=Heatmap(frames[3], heat_values(), (10.0, 10.0, 50.0, 40.0))
    )
    case = _build(tmp_path, study(mr.StudyInstanceUID, findings=(finding,)), [mr])
    ko = case.results.key_objects
    (image,) = [item for item in ko.ContentSequence if item.ValueType == "IMAGE"
                and item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == mr.SOPInstanceUID]
    assert image.ReferencedSOPSequence[0].ReferencedFrameNumber == 4
    (capture,) = case.results.secondary_captures
    assert capture.SourceImageSequence[0].ReferencedFrameNumber == 4
    for name, out in case.outputs.items():
        assert not [line for line in out.splitlines() if line.startswith("Error")], f"{name}:\n{out}"


def test_captures_of_sources_naming_the_body_part_differently_share_none(tmp_path):
    """Body Part Examined is a series attribute: two captures in one SC series whose sources say
    KNEE and EXTREMITY (both knees to the scope gate, by description) carry none, and the study
    passes dcentvfy."""
    su = generate_uid()
    left_dx, right_dx = make_dx(su, laterality="L"), make_dx(su, laterality="R", instance_number=2)
    right_dx.BodyPartExamined = "EXTREMITY"
    f = study(
        su,
        findings=(kl_finding(left_dx, laterality=Laterality.LEFT), kl_finding(right_dx, grade=1, laterality=Laterality.RIGHT)),
        evaluated_images=(ref(left_dx), ref(right_dx)),
    )
    case = _build(tmp_path, f, [left_dx, right_dx])
    assert not any("BodyPartExamined" in sc for sc in case.results.secondary_captures)
    errors, output = dcentvfy([left_dx, right_dx, *(o.dataset for o in case.results)], tmp_path / "entities")
    assert not errors, output
