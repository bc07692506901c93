"""``ortho-node demo``: the README's main job, end to end on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery
from tests.infer_support import fixture_bundle_dir

pytestmark = pytest.mark.timeout(600)


def test_demo_processes_generated_studies_and_delivers_sr_and_sc(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
    env["ORTHO_WORKER__BUNDLE"] = str(fixture_bundle_dir())  # fast; the shipped demo bundle is tested elsewhere
    done = subprocess.run(
        [sys.executable, "-m", "ortho_node.cli", "demo", "--var-dir", str(tmp_path / "var"), "--seed", "11"],
        env=env, capture_output=True, text=True, timeout=580, cwd=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for title in ("Bilateral knee radiographs", "Knee MRI", "Chest radiograph (not a knee)"):
        assert title in out
    assert "Kellgren-Lawrence grade" in out and "ACL injury" in out
    assert "out of scope" in out
    assert "not for clinical use" in out
    pacs = list((tmp_path / "var" / "demo" / "run-11" / "pacs").glob("*.dcm"))
    kinds = sorted(p.name.split("_", 1)[0] for p in pacs)
    assert kinds.count("SR") == 3 and kinds.count("OT") >= 2, kinds
    # The stand-in PACS committed to every object it holds, on its own association to the node.
    db = Database(Settings(var_dir=tmp_path / "var").effective_database_url)
    try:
        with db.session() as session:
            rows = session.execute(select(Delivery.state, Delivery.committed_at)).all()
    finally:
        db.dispose()
    assert len(rows) == len(pacs) and all(state == "sent" and at is not None for state, at in rows), rows


def test_demo_that_does_not_finish_in_time_exits_non_zero(tmp_path):
    """A timed-out demo printed 'timed out' and exited 0 when anything had been delivered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_")}
    env["ORTHO_WORKER__BUNDLE"] = str(fixture_bundle_dir())
    done = subprocess.run(
        [sys.executable, "-m", "ortho_node.cli", "demo", "--var-dir", str(tmp_path / "var"), "--seed", "12", "--timeout", "1"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "timed out waiting for the node" in done.stdout
