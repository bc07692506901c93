"""The example configurations under ``deploy/`` validate as they are shipped, and the example
routing rules send knee studies to the model and everything else nowhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ortho_node.config import load_settings
from ortho_node.ingest.rules import SeriesFacts, load_rules, route_study

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(autouse=True)
def _no_ortho_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("ORTHO_")]:
        monkeypatch.delenv(name)


def installed(tmp_path: Path) -> Path:
    """The production example as installed: /etc/ortho-node mapped to a folder of the test,
    with routing.yaml copied there and TLS files in place (their existence is checked at start)."""
    etc = tmp_path / "etc" / "ortho-node"
    (etc / "tls").mkdir(parents=True)
    for name in ("node.crt", "node.key", "hospital-ca.crt"):
        (etc / "tls" / name).write_text("placeholder\n")
    shutil.copy(DEPLOY / "config" / "routing.yaml", etc / "routing.yaml")
    text = (DEPLOY / "config" / "ortho-node.yaml").read_text().replace("/etc/ortho-node", str(etc))
    (etc / "ortho-node.yaml").write_text(text)
    return etc / "ortho-node.yaml"


def test_production_example_validates_and_keeps_secrets_out_of_the_file(tmp_path: Path) -> None:
    settings = load_settings(installed(tmp_path))
    assert settings.dimse.port == 104 and settings.dimse.tls is not None
    assert [c.ae_title for c in settings.dimse.allowed_callers] == ["MAIN_PACS", "ROUTER_AE"]
    assert {d.kind for d in settings.destinations} == {"dimse", "stow"}
    assert settings.worker.embedded is False and settings.worker.device == "cuda:0"
    assert settings.database_url is None and settings.broker_url is None  # from the environment
    # No secret in the shipped file: only comments may mention them.
    lines = (DEPLOY / "config" / "ortho-node.yaml").read_text().splitlines()
    active = [line.split("#", 1)[0] for line in lines]
    assert not any(key in line for line in active for key in ("password", "token", "://ortho:"))


def test_embedded_example_validates() -> None:
    settings = load_settings(DEPLOY / "config" / "embedded.yaml")
    assert settings.worker.embedded and settings.worker.device == "cpu"
    assert settings.destinations[0].port == 4242


def facts(series_id: int, modality: str, body_part: str | None, description: str = "",
          study_description: str = "") -> SeriesFacts:
    return SeriesFacts(series_id, f"1.2.3.{series_id}", modality, body_part, description,
                       study_description, "MAIN_PACS", 1)


@pytest.mark.parametrize(
    ("series", "processed"),
    [
        ([facts(1, "DX", "KNEE")], [1]),
        ([facts(1, "MR", None, "PD FS SAG", "MRI GENOU DROIT")], [1]),
        ([facts(1, "MR", "KNEE", "3-plane localizer"), facts(2, "MR", "KNEE", "PD SAG")], [2]),
        ([facts(1, "CR", "CHEST")], []),
        ([facts(1, "CT", "KNEE")], []),
        ([facts(1, "MR", "BRAIN", "T1", "MRI HEAD")], []),
    ],
)
def test_example_routing_rules(
    series: list[SeriesFacts], processed: list[int], tmp_path: Path
) -> None:
    routing = load_settings(installed(tmp_path)).routing
    decision = route_study(load_rules(routing), routing.default_action, series)
    assert decision.series_to_process == processed
    assert decision.process is bool(processed), decision.reason
