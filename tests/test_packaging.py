"""The wheel installs everything the node needs at run time, not only what an editable install sees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_install_migrates_an_index_and_finds_the_bundled_weights(tmp_path):
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # A copy of what the build reads: a build in the checkout would leave build/ behind there.
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("ortho_node", "training"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "absent from the `packages` configuration" not in build.stderr, build.stderr[-3000:]
    (wheel,) = wheels.glob("ortho_node-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "ortho_node/db/migrations/env.py",
        "ortho_node/db/migrations/script.py.mako",
        "ortho_node/db/migrations/versions/0001_initial_index_schema.py",
        "ortho_node/assets/demo_bundle/manifest.json",
        "ortho_node/assets/demo_bundle/weights.safetensors",
        "ortho_node/model/manifest.schema.json",
        "training/assets/ssl_encoder/weights.safetensors",
        "training/pretrain/dino.py",
        "training/heads/finetune.py",
        "training/data/corpus.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n]
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # The installed copy, not this checkout (run from elsewhere, the wheel's folder first on the path).
    probe = (
        "import ortho_node, sys; from pathlib import Path\n"
        f"assert Path(ortho_node.__file__).is_relative_to({str(target)!r}), ortho_node.__file__\n"
        "from ortho_node.db import migrate\n"
        f"migrate.upgrade('sqlite:///{tmp_path / 'index.db'}')\n"
        "from ortho_node.model.study import default_bundle_dir\n"
        "assert (default_bundle_dir() / 'weights.safetensors').is_file()\n"
        "print('ok', migrate.head_revision())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
