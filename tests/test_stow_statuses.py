"""STOW-RS per-instance refusals and the Store Instances Response Module (PS3.18 Annex I), in
process: the router on a real ingest service and SQLite index, no node process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRBigEndian, MRImageStorage, generate_uid
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.migrate import upgrade
from ortho_node.dimse.scp import build_ae
from ortho_node.dimse.status import StoreStatus, StowFailureReason, failure_status, stow_failure_reason
from ortho_node.ingest.header import UnsupportedTransferSyntaxError, parse_header
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.part10 import part10_header
from ortho_node.ingest.service import IngestService
from ortho_node.store import InstanceStore
from ortho_node.web.stow import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, stow_router
from tests.support.datasets import encode, small_image

EXPLICIT_LE = "1.2.840.10008.1.2.1"
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.1"
RETRIEVE_URL, FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081190", "00081198", "00081199"
FAILURE_REASON, REFERENCED_SOP_CLASS_UID = "00081197", "00081150"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    settings.var_dir.mkdir(parents=True)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    ingest = IngestService(InstanceStore(settings.store_dir, quarantine=settings.quarantine_dir), Indexer(db))
    app = FastAPI()
    app.include_router(stow_router(ingest, max_bytes=10_000_000, authorise=lambda: None))
    with TestClient(app) as test_client:
        yield test_client
    db.dispose()


def part10(
    *, sop_class: str = MRImageStorage, transfer_syntax: str = EXPLICIT_LE, study_uid: str | None = None,
    meta_sop_class: str | None = None,
) -> bytes:
    """A Part 10 file; the data set is Explicit VR Little Endian whatever the File Meta says."""
    ds = small_image(study_uid=study_uid or generate_uid(), sop_class_uid=sop_class)
    meta_class = sop_class if meta_sop_class is None else meta_sop_class
    return part10_header(
        sop_class_uid=meta_class, sop_instance_uid=ds.SOPInstanceUID, transfer_syntax_uid=transfer_syntax
    ) + encode(ds)


def post(client: TestClient, *parts: bytes, study_uid: str | None = None):
    body = b"".join(b"--bnd\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts) + b"--bnd--\r\n"
    url = "/dicomweb/studies" + (f"/{study_uid}" if study_uid else "")
    return client.post(url, content=body, headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=bnd'})


def stored_files(settings: Settings) -> list[Path]:
    return list(settings.store_dir.rglob("*.dcm"))


@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.3.4", "1.2.840.10008.1.2.4.999", str(ExplicitVRBigEndian)],  # private, unknown, known but not accepted
)
def test_a_transfer_syntax_the_scp_does_not_accept_is_refused_with_0xC122(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture, transfer_syntax: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="ortho_node.web.stow"):
        answer = post(client, part10(transfer_syntax=transfer_syntax))
    assert answer.status_code == 409
    (failed,) = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0xC122]
    assert not stored_files(settings)
    assert f"refused (0xC122): transfer syntax not supported: '{transfer_syntax}'" in caplog.text


@pytest.mark.parametrize("sop_class", [Verification, PRIVATE_SOP_CLASS])
def test_a_sop_class_outside_the_scps_storage_classes_is_refused_with_0x0122(
    client: TestClient, settings: Settings, sop_class: str
) -> None:
    answer = post(client, part10(sop_class=sop_class))
    assert answer.status_code == 409
    (failed,) = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0x0122]
    assert failed[REFERENCED_SOP_CLASS_UID]["Value"] == [sop_class]
    assert not stored_files(settings)


def test_the_sop_class_is_checked_from_the_data_set_when_the_file_meta_lacks_it(
    client: TestClient, settings: Settings
) -> None:
    data = part10(sop_class=Verification, meta_sop_class="")  # (0002,0002) present, empty
    answer = post(client, data)
    assert answer.status_code == 409
    (failed,) = answer.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [0x0122]
    assert not stored_files(settings)
    # and a storage class read from the data set is stored: the class did come from there
    stored = post(client, part10(meta_sop_class=""))
    assert stored.status_code == 200, stored.json()
    assert len(stored_files(settings)) == 1


def test_a_partly_refused_request_stores_the_rest_with_202(client: TestClient, settings: Settings) -> None:
    answer = post(client, part10(), part10(sop_class=PRIVATE_SOP_CLASS), part10(transfer_syntax="1.2.3.4"))
    assert answer.status_code == 202
    result = answer.json()
    assert len(result[REFERENCED_SOP_SEQUENCE]["Value"]) == 1
    assert sorted(f[FAILURE_REASON]["Value"][0] for f in result[FAILED_SOP_SEQUENCE]["Value"]) == [0x0122, 0xC122]
    assert len(stored_files(settings)) == 1


def test_all_stored_response_has_an_empty_retrieve_url_and_no_failed_sop_sequence(client: TestClient) -> None:
    answer = post(client, part10(), part10())
    assert answer.status_code == 200
    result = answer.json()
    assert result[RETRIEVE_URL] == {"vr": "UR"}  # Type 2: present, empty (no WADO-RS yet)
    assert FAILED_SOP_SEQUENCE not in result  # Type 1C: absent when nothing failed
    items = result[REFERENCED_SOP_SEQUENCE]["Value"]
    assert len(items) == 2 and all(item[RETRIEVE_URL] == {"vr": "UR"} for item in items)


def test_nothing_stored_response_has_no_referenced_sop_sequence(client: TestClient) -> None:
    answer = post(client, part10(), study_uid=generate_uid())  # another study than the one addressed
    assert answer.status_code == 409
    result = answer.json()
    assert result[RETRIEVE_URL] == {"vr": "UR"}
    assert REFERENCED_SOP_SEQUENCE not in result  # Type 1C: absent when nothing was stored
    (failed,) = result[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert RETRIEVE_URL not in failed


def test_an_unknown_transfer_syntax_is_a_typed_error_mapped_to_0xC122_for_stow_only() -> None:
    data = encode(small_image(study_uid=generate_uid()))
    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        parse_header(data, "1.2.840.10008.1.2.4.999")
    assert stow_failure_reason(caught.value) is StowFailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    # C-STORE keeps its documented statuses: negotiation refuses the syntax before ingest.
    assert failure_status(caught.value) is StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_stow_accepts_exactly_what_the_scp_negotiates(settings: Settings) -> None:
    not_storage = {Verification, StorageCommitmentPushModel}
    contexts = [c for c in build_ae(settings.dimse).supported_contexts if c.abstract_syntax not in not_storage]
    assert {str(c.abstract_syntax) for c in contexts} == STORAGE_SOP_CLASSES
    assert all(set(map(str, c.transfer_syntax)) == TRANSFER_SYNTAXES for c in contexts)
