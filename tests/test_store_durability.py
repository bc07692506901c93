"""The store's durability order, the rule every acknowledgement rests on: the instance's bytes
are fsynced before the file is linked into place, and the directory entry after the link."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.uid import generate_uid

from ortho_node.store import InstanceStore


def test_put_fsyncs_the_file_before_linking_it_and_the_directory_after(tmp_path, monkeypatch):
    store = InstanceStore(tmp_path / "store", quarantine=tmp_path / "quarantine")
    calls: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(source, target) -> None:
        calls.append(("link", str(target)))
        real_link(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    put = store.put([b"DICM-bytes"], study_uid=study, series_uid=series, sop_instance_uid=sop)
    final = (tmp_path / "store" / put.relative_path).resolve()
    linked = calls.index(("link", str(tmp_path / "store" / put.relative_path)))
    before, after = calls[:linked], calls[linked + 1:]
    assert any(kind == "fsync" and Path(path).parent.name == ".tmp" for kind, path in before), calls
    assert ("fsync", str(final.parent)) in after, calls
    assert final.read_bytes() == b"DICM-bytes"
