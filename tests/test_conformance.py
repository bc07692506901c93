"""The DICOM Conformance Statement is generated from the code and the committed copy matches it;
what it states is what the SCP negotiates (checked with DCMTK echoscu)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ortho_node.config import Settings
from ortho_node.conformance import conformance_statement
from ortho_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES, build_ae
from ortho_node.dimse.status import StoreStatus
from ortho_node.ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ortho_node.ingest.sop_classes import KNEE_WORKFLOW_SOP_CLASSES
from tests.support.peers import free_port

COMMITTED = Path(__file__).resolve().parents[1] / "conformance" / "CONFORMANCE.md"


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in [n for n in os.environ if n.startswith("ORTHO_")]:
        monkeypatch.delenv(name)
    return Settings()


def test_committed_statement_is_the_generated_one(default_settings: Settings) -> None:
    assert COMMITTED.read_text() == conformance_statement(default_settings) + "\n", (
        "conformance/CONFORMANCE.md is stale: regenerate it with "
        "`ortho-node conformance > conformance/CONFORMANCE.md`"
    )


def test_statement_names_what_the_scp_negotiates_and_returns(default_settings: Settings) -> None:
    text = conformance_statement(default_settings)
    ae = build_ae(default_settings.dimse)
    not_storage = {"1.2.840.10008.1.1", "1.2.840.10008.1.20.1"}  # Verification, Storage Commitment
    storage = [c for c in ae.supported_contexts if c.abstract_syntax not in not_storage]
    assert "| Storage Commitment Push Model SOP Class | 1.2.840.10008.1.20.1 | SCU |" in text
    assert f"{len(KNEE_WORKFLOW_SOP_CLASSES)} are analysed; the other {len(storage) - len(KNEE_WORKFLOW_SOP_CLASSES)}" in text
    for context in storage:
        assert list(context.transfer_syntax) == list(ACCEPTED_TRANSFER_SYNTAXES)
    for uid in (*KNEE_WORKFLOW_SOP_CLASSES, *ACCEPTED_TRANSFER_SYNTAXES):
        assert f"| {uid} |" in text
    for status in StoreStatus:
        assert f"| 0x{status.value:04X} |" in text


def test_tls_and_allow_list_are_described_as_configured(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    for path in (cert, key, ca):
        path.write_text("x")
    settings = Settings(dimse={"allowed_callers": [{"ae_title": "PACS", "hosts": ["10.0.0.0/8"]}],
                               "tls": {"cert": cert, "key": key, "ca": ca, "require_client_cert": True}})
    text = conformance_statement(settings)
    assert "| Calling AE titles accepted | PACS (from 10.0.0.0/8) |" in text
    assert "| DICOM TLS | on, client certificates required |" in text


def test_the_scp_announces_the_implementation_class_uid_of_the_statement(default_settings: Settings) -> None:
    port = free_port()
    ae = build_ae(default_settings.dimse)
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        echo = subprocess.run(["echoscu", "-d", "-aec", "ORTHO", "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert echo.returncode == 0, echo.stdout + echo.stderr
    output = echo.stdout + echo.stderr
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in output
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in output
