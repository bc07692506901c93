"""``ortho-node store check``: files without index rows are found and (with --repair) indexed,
rows without files and changed files are reported, nothing is deleted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Instance, Study, StudyState
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.part10 import part10_header
from ortho_node.ingest.reconcile import RECOVERED_SOURCE, check_store
from ortho_node.ingest.service import IngestService, ReceivedInstance
from ortho_node.store import InstanceStore
from tests.support.datasets import encode, small_image

EXPLICIT = str(ExplicitVRLittleEndian)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")




def receive(service: IngestService, ds) -> str:
    item = ReceivedInstance(
        dataset=encode(ds),
        transfer_syntax_uid=EXPLICIT,
        declared_sop_class_uid=ds.SOPClassUID,
        declared_sop_instance_uid=ds.SOPInstanceUID,
        calling_ae="TESTSCU",
    )
    return service.receive(item).relative_path


def stored_but_never_indexed(store: InstanceStore, ds) -> str:
    """What a crash between the file's rename and the index commit leaves behind."""
    chunks = (part10_header(sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID,
                            transfer_syntax_uid=EXPLICIT), encode(ds))
    return store.put(chunks, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                     sop_instance_uid=ds.SOPInstanceUID).relative_path


def test_check_finds_every_kind_of_mismatch_and_repair_indexes_orphans(settings: Settings, db: Database) -> None:
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    service = IngestService(store, Indexer(db))
    study_uid, series_uid = generate_uid(), generate_uid()
    received = [receive(service, small_image(study_uid=study_uid, series_uid=series_uid)) for _ in range(3)]
    gone, grown, flipped = received
    orphan_ds = small_image(study_uid=study_uid, series_uid=series_uid)
    orphan = stored_but_never_indexed(store, orphan_ds)
    junk = f"{generate_uid()}/{generate_uid()}/{generate_uid()}.dcm"
    store.absolute(junk).parent.mkdir(parents=True)
    store.absolute(junk).write_bytes(b"not DICOM at all")
    store.absolute(gone).unlink()
    with store.absolute(grown).open("ab") as f:
        f.write(b"\0")
    data = bytearray(store.absolute(flipped).read_bytes())
    data[-1] ^= 0xFF
    store.absolute(flipped).write_bytes(bytes(data))

    report = check_store(store, db)
    assert (report.files, report.indexed_rows) == (4, 3)
    assert sorted(report.unindexed) == sorted([orphan, junk])
    assert report.missing == [gone]
    assert report.damaged == [grown]  # same size: only the hash shows the flipped byte
    assert not report.ok and report.recovered == []
    with db.connection() as conn:
        assert conn.scalar(select(Instance.id).where(Instance.sop_instance_uid == orphan_ds.SOPInstanceUID)) is None

    assert sorted(check_store(store, db, verify_hashes=True).damaged) == sorted([grown, flipped])

    repaired = check_store(store, db, repair=True)
    assert repaired.recovered == [orphan] and repaired.unreadable == [junk]
    with db.connection() as conn:
        row = conn.execute(
            select(Instance.path, Instance.source, Instance.sha256, Study.state)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_instance_uid == orphan_ds.SOPInstanceUID)
        ).one()
    assert row.path == orphan and row.source == RECOVERED_SOURCE
    assert row.state == StudyState.RECEIVING.value  # the study is assembled again, with it
    again = check_store(store, db)
    assert again.unindexed == [junk] and again.indexed_rows == 4
    assert store.absolute(junk).exists() and store.absolute(grown).exists()  # nothing deleted


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
    return subprocess.run([sys.executable, "-m", "ortho_node.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_store_check_command_exit_status_and_repair(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {"ORTHO_VAR_DIR": str(var)}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    settings = Settings(var_dir=var)
    store = InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir)
    assert run_cli("store", "check", "--json", env=env).returncode == 0
    orphan = stored_but_never_indexed(store, small_image(study_uid=generate_uid()))

    found = run_cli("store", "check", "--json", env=env)
    assert found.returncode == 1, found.stderr
    assert json.loads(found.stdout)["unindexed"] == 1

    repaired = run_cli("store", "check", "--repair", "--json", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["recovered"] == 1
    assert "stored but never indexed" in repaired.stderr  # the recovery is logged ...
    assert not any(uid in repaired.stderr for uid in orphan.removesuffix(".dcm").split("/"))  # ... without UIDs
    clean = run_cli("store", "check", "--verify-hashes", env=env)
    assert clean.returncode == 0 and "unindexed" in clean.stdout
