"""Settings and the CLI around them: sources, validation messages, secrets masked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ortho_node.config import Settings, describe_validation_error, load_settings, mask_url
from ortho_node.ingest.rules import RulesFileError, load_rules


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
    return subprocess.run(
        [sys.executable, "-m", "ortho_node.cli", *args], env={**base, **(env or {})},
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_yaml_file_then_environment_then_overrides(tmp_path, monkeypatch):
    config = tmp_path / "ortho.yaml"
    config.write_text(yaml.safe_dump({"dimse": {"port": 10400, "ae_title": "FROMFILE"}, "stable_age": {"default_s": 7}}))
    monkeypatch.setenv("ORTHO_DIMSE__AE_TITLE", "FROMENV")
    settings = load_settings(config)
    assert (settings.dimse.port, settings.dimse.ae_title, settings.stable_age.default_s) == (10400, "FROMENV", 7)
    assert load_settings(config, dimse={"port": 2000}).dimse.port == 2000
    assert load_settings(config, dimse={"port": 2000}).dimse.ae_title == "FROMENV", "overrides merge, not replace"


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"dimse": {"port": 70000}}, "dimse.port", "less than or equal to 65535"),
        ({"dimse": {"ae_title": "A\\B"}}, "dimse.ae_title", "without backslash"),
        ({"dimse": {"allowed_callers": [{"ae_title": "X", "hosts": ["not-an-ip"]}]}}, "hosts", "not an IP"),
        ({"worker": {"device": "gpu"}}, "worker.device", "cuda:N"),
        ({"routing": {"rules": [{"name": "r", "action": "process", "match": {"series_description_pattern": "("}}]}},
         "series_description_pattern", "invalid regular expression"),
        ({"unknown_option": 1}, "unknown_option", "Extra inputs are not permitted"),
        # found by `config show`, not by the first delivery or by `serve` alone
        ({"database_url": "not a url"}, "database_url", "not a database URL"),
        ({"database_url": "mysql://u@db/x"}, "database_url", "not a database URL"),
        ({"broker_url": "localhost"}, "broker_url", "must be a URL"),
        ({"destinations": [{"kind": "dimse", "name": "p", "ae_title": "PACS", "host": "h", "port": 104,
                            "calling_ae_title": "THIS_IS_WAY_TOO_LONG"}]}, "calling_ae_title", "1-16 printable"),
        ({"destinations": [{"kind": "dimse", "name": "p", "ae_title": "PACS", "host": " ", "port": 104}]},
         "host", "must name the PACS"),
        ({"destinations": [{"kind": "stow", "name": "s", "url": "vna/dicomweb"}]}, "url", "http:// or https://"),
        ({"routing": {"rules_file": "/nowhere/routing.yaml"}}, "routing.rules_file", "no such rules file"),
    ],
)
def test_invalid_values_name_the_field(values, field, message):
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    text = describe_validation_error(caught.value)
    assert field in text and message in text


def test_invalid_config_stops_start_up_with_the_field_named(tmp_path):
    done = run_cli("serve", env={"ORTHO_DIMSE__PORT": "99999", "ORTHO_VAR_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "dimse.port" in done.stderr and "65535" in done.stderr
    assert not (tmp_path / "index.sqlite").exists(), "nothing starts with an invalid config"


@pytest.mark.parametrize(
    ("env", "content", "message"),
    [
        # a typo of a top-level variable used to be ignored: the node ran on SQLite / no token
        ({"ORTHO_DATABASE": "postgresql+psycopg://o@db/x"}, None, "ORTHO_DATABASE"),
        ({"ORTHO_HTTP_ADMIN_TOKEN": "abc"}, None, "ORTHO_HTTP_ADMIN_TOKEN"),
        ({}, "dimse: [\n", "not valid YAML (line 2)"),  # was a traceback
        ({}, "- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_bad_environment_or_file_is_an_invalid_configuration(tmp_path, env, content, message):
    args = ["config", "show"]
    if content is not None:
        config = tmp_path / "ortho.yaml"
        config.write_text(content)
        args = ["--config", str(config), *args]
    done = run_cli(*args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    text = " ".join(done.stderr.split())  # rich wraps long lines
    assert "invalid configuration" in text and message in text, done.stderr
    assert "Traceback" not in done.stderr


def test_config_show_masks_every_secret(tmp_path):
    config = tmp_path / "ortho.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": "postgresql+psycopg://ortho:dbpass@db/ortho",
                "broker_url": "redis://:brokerpass@redis:6379/0",
                "destinations": [
                    {"kind": "stow", "name": "vna", "url": "https://user:urlpass@vna/dicomweb", "password": "stowpass"},
                    {"kind": "stow", "name": "cloud", "url": "https://cloud/dicomweb", "bearer_token": "tokenpass"},
                ],
            }
        )
    )
    done = run_cli("--config", str(config), "config", "show", "--json")
    assert done.returncode == 0, done.stderr
    for secret in ("dbpass", "brokerpass", "urlpass", "stowpass", "tokenpass"):
        assert secret not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["database_url"] == "postgresql+psycopg://ortho:***@db/ortho"
    assert shown["destinations"][0]["password"] == "***"


def test_mask_url_leaves_urls_without_password_alone():
    assert mask_url("sqlite:////var/x.sqlite") == "sqlite:////var/x.sqlite"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_mask_url_hides_secrets_in_the_query():
    """psycopg and redis-py take ``?password=``; a DICOMweb URL may carry a token."""
    assert mask_url("postgresql+psycopg://ortho@db/ortho?password=Sup3r&sslmode=require") == (
        "postgresql+psycopg://ortho@db/ortho?password=***&sslmode=require"
    )
    assert mask_url("redis://redis:6379/0?password=R3dis") == "redis://redis:6379/0?password=***"
    assert mask_url("https://vna/dicomweb?access_token=T0K") == "https://vna/dicomweb?access_token=***"


def test_routing_rules_file_is_loaded_after_inline_rules_and_errors_are_precise(tmp_path):
    rules = tmp_path / "routing.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"name": "knee", "action": "process", "match": {"body_part": ["KNEE"]}}]}))
    settings = Settings(routing={"rules": [{"name": "first", "action": "ignore"}], "rules_file": str(rules)})
    assert [r.name for r in load_rules(settings.routing)] == ["first", "knee"]
    rules.write_text("rules: [{name: x, action: maybe}]")
    with pytest.raises(RulesFileError, match="invalid"):
        load_rules(settings.routing)
    rules.unlink()
    with pytest.raises(RulesFileError, match="No such file"):
        load_rules(settings.routing)


def test_db_upgrade_and_status_on_a_fresh_var_dir(tmp_path):
    env = {"ORTHO_VAR_DIR": str(tmp_path / "var")}
    missing = run_cli("status", env=env)
    assert missing.returncode == 1 and "db upgrade" in missing.stderr and "Traceback" not in missing.stderr
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queue_depth"] == 0


@pytest.mark.parametrize("command", [("status",), ("resend",), ("jobs", "list"), ("store", "check"), ("db", "upgrade")])
def test_commands_say_in_one_line_when_the_var_dir_is_unusable(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = run_cli(*command, env={"ORTHO_VAR_DIR": str(blocker / "var")})
    assert broken.returncode == 1
    assert "Traceback" not in broken.stderr and len(broken.stderr.strip().splitlines()) <= 3, broken.stderr
    assert ("cannot open the index database" in broken.stderr) or ("not a folder" in broken.stderr), broken.stderr


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "11997", "--http-port", "18997"]])
def test_a_missing_model_bundle_stops_the_worker_at_once(tmp_path, command):
    """It used to start and fail every job (a serve restarted its embedded worker for ever)."""
    done = run_cli(*command, "--var-dir", str(tmp_path / "var"), env={"ORTHO_WORKER__BUNDLE": str(tmp_path / "nope")})
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-1000:]
    assert "worker.bundle" in done.stderr and "no manifest.json" in " ".join(done.stderr.split())
