"""Ingest in process: parse → durable store → index, and study assembly, on a real SQLite index."""

from __future__ import annotations

import datetime as dt
import io
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from ortho_node.config import RoutingMatch, RoutingRule, Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Instance, Job, JobState, Study, StudyState, utcnow
from ortho_node.ingest.assembler import Assembler
from ortho_node.ingest.header import InvalidDatasetError
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.service import IngestOutcome, IngestService, ReceivedInstance
from ortho_node.store import InstanceStore
from tests.support.datasets import encode, small_image
from tests.support.dicomfiles import dataset_bytes

EXPLICIT = str(ExplicitVRLittleEndian)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var", stable_age={"default_s": 5, "per_modality": {"MR": 20, "DX": 5}})




@pytest.fixture
def ingest(settings: Settings, db: Database) -> IngestService:
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    return IngestService(store, Indexer(db))


def receive(ingest: IngestService, ds: pydicom.Dataset, **kwargs) -> object:
    item = ReceivedInstance(
        dataset=io.BytesIO(encode(ds)),
        transfer_syntax_uid=EXPLICIT,
        declared_sop_class_uid=kwargs.pop("declared_class", ds.SOPClassUID),
        declared_sop_instance_uid=kwargs.pop("declared_uid", ds.SOPInstanceUID),
        calling_ae="TESTSCU",
    )
    return ingest.receive(item)


def test_received_instance_is_a_part10_file_with_the_exact_bytes_and_an_index_row(ingest, db, settings):
    ds = small_image(study_uid=generate_uid())
    result = receive(ingest, ds)
    assert result.outcome is IngestOutcome.STORED
    path = settings.store_dir / result.relative_path
    assert dataset_bytes(path) == encode(ds)
    reread = pydicom.dcmread(path)
    assert reread.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert reread.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert reread.PixelData == ds.PixelData
    with db.session() as s:
        row = s.scalars(select(Instance)).one()
        assert row.sop_instance_uid == ds.SOPInstanceUID and row.calling_ae == "TESTSCU"
        assert row.size_bytes == path.stat().st_size
    assert not any((settings.store_dir / ".tmp").iterdir()), "no temporary file may be left behind"


def test_identical_resend_is_idempotent(ingest, db, settings):
    ds = small_image(study_uid=generate_uid())
    assert receive(ingest, ds).outcome is IngestOutcome.STORED
    assert receive(ingest, ds).outcome is IngestOutcome.DUPLICATE
    with db.session() as s:
        assert len(s.scalars(select(Instance)).all()) == 1
    assert len(list(settings.store_dir.rglob("*.dcm"))) == 1


def test_resend_with_different_bytes_keeps_the_original_and_quarantines_the_new_copy(ingest, db, settings):
    ds = small_image(study_uid=generate_uid())
    first = receive(ingest, ds)
    original = (settings.store_dir / first.relative_path).read_bytes()
    changed = small_image(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    changed.PixelData = bytes(len(ds.PixelData))
    assert receive(ingest, changed).outcome is IngestOutcome.CONFLICT
    assert (settings.store_dir / first.relative_path).read_bytes() == original
    quarantined = list(settings.quarantine_dir.rglob("*.dcm"))
    assert len(quarantined) == 1 and dataset_bytes(quarantined[0]) == encode(changed)
    with db.session() as s:
        assert len(s.scalars(select(Instance)).all()) == 1


def test_retry_with_other_bytes_after_an_index_failure_indexes_the_stored_original(ingest, db, settings, monkeypatch):
    """The first C-STORE was made durable but its index write failed (0xA702); the sender
    retries with other bytes (e.g. another transfer syntax). The retry is a conflict (the new
    copy quarantined), and it must not be acknowledged before the original is in the index:
    else the instance is acknowledged and never processed."""
    from ortho_node.ingest.indexer import IndexUnavailableError

    ds = small_image(study_uid=generate_uid())
    real = ingest.indexer.record_instance

    def unavailable(*args, **kwargs):
        raise IndexUnavailableError("index database error: OperationalError")

    monkeypatch.setattr(ingest.indexer, "record_instance", unavailable)
    with pytest.raises(IndexUnavailableError):
        receive(ingest, ds)
    monkeypatch.setattr(ingest.indexer, "record_instance", real)
    assert len(list(settings.store_dir.rglob("*.dcm"))) == 1  # durable, but not indexed
    changed = small_image(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    changed.PixelData = bytes(len(ds.PixelData))
    assert receive(ingest, changed).outcome is IngestOutcome.CONFLICT
    with db.session() as s:
        (row,) = s.scalars(select(Instance)).all()
        assert row.sop_instance_uid == ds.SOPInstanceUID and row.calling_ae == "TESTSCU"
        assert s.scalars(select(Study)).one().state == StudyState.RECEIVING.value
    # and while the index is down, the conflict is refused like any instance it cannot record
    monkeypatch.setattr(ingest.indexer, "record_instance", unavailable)
    with pytest.raises(IndexUnavailableError):
        receive(ingest, changed)


@pytest.mark.parametrize("moved", ["study", "series"])
def test_a_stored_sop_instance_uid_under_another_study_or_series_is_refused(ingest, db, settings, moved):
    """UIDs are unique: the same SOP Instance UID arriving in another study (or series) means
    one of the two copies is wrong. It is refused (0xA900), not stored beside the original
    and acknowledged as a duplicate as before (an unindexed file, a study never processed)."""
    from ortho_node.ingest.indexer import HierarchyConflictError

    ds = small_image(study_uid=generate_uid())
    first = receive(ingest, ds)
    other = small_image(
        study_uid=generate_uid() if moved == "study" else ds.StudyInstanceUID,
        series_uid=generate_uid(),
        sop_uid=ds.SOPInstanceUID,
    )
    with pytest.raises(HierarchyConflictError, match="already stored in another study or series"):
        receive(ingest, other)
    assert [p.relative_to(settings.store_dir).as_posix() for p in settings.store_dir.rglob("*.dcm")] == [first.relative_path]
    with db.session() as s:
        assert len(s.scalars(select(Instance)).all()) == 1 and len(s.scalars(select(Study)).all()) == 1


def test_a_series_uid_of_another_study_is_refused(ingest, db, settings):
    from ortho_node.ingest.indexer import HierarchyConflictError

    ds = small_image(study_uid=generate_uid())
    receive(ingest, ds)
    intruder = small_image(study_uid=generate_uid(), series_uid=ds.SeriesInstanceUID)
    with pytest.raises(HierarchyConflictError, match="belongs to another study"):
        receive(ingest, intruder)
    assert len(list(settings.store_dir.rglob("*.dcm"))) == 1
    with db.session() as s:
        assert s.scalars(select(Study.study_instance_uid)).all() == [ds.StudyInstanceUID]
    assert receive(ingest, small_image(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)).outcome is IngestOutcome.STORED


@pytest.mark.parametrize(
    ("mutate", "unparseable"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), False),
        (lambda ds: setattr(ds, "SeriesInstanceUID", "../../etc"), False),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3.4"), False),  # differs from the declared UID
    ],
    ids=["missing-study-uid", "path-traversal-uid", "uid-differs-from-request"],
)
def test_invalid_datasets_are_refused_and_nothing_is_stored(ingest, settings, mutate, unparseable):
    ds = small_image(study_uid=generate_uid())
    declared = ds.SOPInstanceUID
    mutate(ds)
    with pytest.raises(InvalidDatasetError) as caught:
        receive(ingest, ds, declared_uid=declared)
    assert caught.value.unparseable is unparseable
    assert not list(settings.store_dir.rglob("*.dcm"))


def test_garbage_bytes_are_unparseable(ingest, settings):
    item = ReceivedInstance(dataset=io.BytesIO(b"\xff\xfe" * 40), transfer_syntax_uid=EXPLICIT)
    with pytest.raises(InvalidDatasetError) as caught:
        ingest.receive(item)
    assert caught.value.unparseable
    assert not list(settings.store_dir.rglob("*.dcm"))


def test_deflated_dataset_is_parsed_and_stored_as_received(ingest, settings):
    ds = small_image(study_uid=generate_uid())
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(encode(ds)) + compressor.flush()
    result = ingest.receive(ReceivedInstance(dataset=io.BytesIO(deflated), transfer_syntax_uid=DeflatedExplicitVRLittleEndian))
    assert dataset_bytes(settings.store_dir / result.relative_path) == deflated
    assert pydicom.dcmread(settings.store_dir / result.relative_path).SOPInstanceUID == ds.SOPInstanceUID


# ------------------------------------------------------------------------------------- assembly


def later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def jobs_of(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def test_study_becomes_one_job_after_the_stable_age_of_its_slowest_modality(ingest, db, settings):
    study = generate_uid()
    receive(ingest, small_image(study_uid=study, modality="DX", body_part="KNEE"))
    receive(ingest, small_image(study_uid=study, modality="MR"))
    assembler = Assembler(db, settings, rules=())
    assert assembler.run_once(later(6)).queued_job_ids == ()  # DX alone would be stable, MR is not
    created = assembler.run_once(later(21)).queued_job_ids
    assert len(created) == 1
    assert assembler.run_once(later(60)).queued_job_ids == ()
    (job,) = jobs_of(db)
    assert job.state == JobState.QUEUED.value and job.instance_count == 2 and job.revision == 0


def test_late_series_creates_a_new_job_that_supersedes_the_old_one(ingest, db, settings):
    study = generate_uid()
    receive(ingest, small_image(study_uid=study))
    assembler = Assembler(db, settings, rules=())
    (first,) = assembler.run_once(later(30)).queued_job_ids
    receive(ingest, small_image(study_uid=study, series_description="SAG T2"))
    with db.session() as s:
        assert s.scalars(select(Study)).one().state == StudyState.RECEIVING.value
    (second,) = assembler.run_once(later(60)).queued_job_ids
    old, new = jobs_of(db)
    assert (old.id, new.id) == (first, second)
    assert new.supersedes_job_id == first and new.revision == 1 and new.instance_count == 2
    assert old.state == JobState.SUPERSEDED.value  # it had not started: the new job covers it


def test_identical_resend_after_the_job_creates_no_new_job(ingest, db, settings):
    study = generate_uid()
    ds = small_image(study_uid=study)
    receive(ingest, ds)
    assembler = Assembler(db, settings, rules=())
    assert len(assembler.run_once(later(30)).queued_job_ids) == 1
    receive(ingest, ds)
    assert assembler.run_once(later(60)).queued_job_ids == ()
    assert len(jobs_of(db)) == 1


def test_routing_rules_ignore_a_study_with_the_reason_recorded(ingest, db, settings):
    study = generate_uid()
    receive(ingest, small_image(study_uid=study, body_part="CHEST", modality="DX"))
    rules = (
        RoutingRule(name="knees-only", action="process", match=RoutingMatch(body_part=("KNEE",))),
        RoutingRule(name="rest", action="ignore", match=RoutingMatch()),
    )
    result = Assembler(db, settings, rules=rules).run_once(later(30))
    assert result.queued_job_ids == () and len(result.ignored_job_ids) == 1
    (job,) = jobs_of(db)
    assert job.state == JobState.IGNORED.value
    assert "rule 'rest' says ignore" in job.reason


def test_study_of_only_unanalysed_sop_classes_is_ignored(ingest, db, settings):
    study = generate_uid()
    receive(ingest, small_image(study_uid=study, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", modality="SR"))
    Assembler(db, settings, rules=()).run_once(later(30))
    (job,) = jobs_of(db)
    assert job.state == JobState.IGNORED.value
    assert "no instance of an analysed SOP class" in job.reason


def test_an_instance_arriving_during_assembly_defers_the_decision(ingest, db, settings):
    study = generate_uid()
    receive(ingest, small_image(study_uid=study))
    assembler = Assembler(db, settings, rules=())
    with db.session() as s:
        study_row = s.scalars(select(Study)).one()
        seen = study_row.last_received_at
    receive(ingest, small_image(study_uid=study))  # moves last_received_at past what was seen
    with db.session() as s:
        assert assembler._assemble(s, study_row.id, seen, later(60)) is None
    assert jobs_of(db) == []
    assert len(assembler.run_once(later(60)).queued_job_ids) == 1


def test_a_data_set_cut_short_after_the_header_is_refused_unparseable(ingest, settings):
    """Ingest parses only the header it needs; a data set cut inside Pixel Data (the element
    declares more bytes than arrive) parsed fine and was acknowledged, to fail in the worker.
    Now the rest of the element headers is walked: refused as cannot-understand (0xC000)."""
    ds = small_image(study_uid=generate_uid())
    whole = encode(ds)
    for cut in (whole[:-12], whole[:-1], whole + b"\x00\x00\x00"):
        item = ReceivedInstance(io.BytesIO(cut), EXPLICIT, declared_sop_class_uid=ds.SOPClassUID,
                                declared_sop_instance_uid=ds.SOPInstanceUID)
        with pytest.raises(InvalidDatasetError, match="truncated or malformed") as refused:
            ingest.receive(item)
        assert refused.value.unparseable
    assert not list(settings.store_dir.rglob("*.dcm"))
    assert receive(ingest, ds).outcome is IngestOutcome.STORED


# pydicom's test files that are broken on purpose (their names say so) or encoded against their
# transfer syntax (SC_rgb_jpeg.dcm: implicit VR under an explicit syntax; DCMTK refuses it too)
BROKEN_TEST_FILES = {"MR_truncated.dcm", "rtplan_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm", "SC_rgb_jpeg.dcm"}


def test_the_completeness_walk_passes_every_whole_pydicom_test_file():
    """No false refusals: every Part 10 file of pydicom's test data (all transfer syntaxes,
    sequences and items of undefined length, encapsulated Pixel Data, private elements) is
    whole to the walk, except the ones broken on purpose, which it finds."""
    import pydicom.data

    from ortho_node.ingest.header import parse_header
    from ortho_node.ingest.part10 import read_part10_meta
    from tests.test_preprocess_support import DATA_STORE

    # the folders themselves: get_testdata_files() also looks for files to download (no network)
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    walked, flagged = 0, set()
    for path in sorted({*shipped.rglob("*.dcm"), *DATA_STORE.glob("*.dcm")}):
        data = Path(path).read_bytes()
        try:
            meta, offset = read_part10_meta(data)
        except InvalidDatasetError:
            continue  # not Part 10 (raw data sets, DICOMDIR fragments)
        try:
            parse_header(data[offset:], str(meta.TransferSyntaxUID))
        except InvalidDatasetError as exc:
            if "truncated or malformed" in str(exc):
                flagged.add(Path(path).name)
            continue  # other refusals (no Study UID, unknown syntax) are not this test's
        walked += 1
    assert flagged == BROKEN_TEST_FILES
    assert walked > 100
