"""Store ↔ index reconciliation: ``ortho-node store check [--repair]``.

The ingest path writes the file durably, then commits the index row, then acknowledges. A crash
between the two leaves a complete file that no row points to (the sender never got 0x0000, so it
may or may not send again); a disk fault or an admin's hand can leave a row whose file is gone or
changed. This module finds both:

- **unindexed**: a file under ``store/<study>/<series>/<sop>.dcm`` with no index row. With
  ``repair`` it is indexed as if it had just arrived (source ``recovered``), so its study is
  assembled and processed like any other.
- **missing**: an index row whose file does not exist. Reported; nothing can bring it back here.
- **damaged**: a file whose size (always) or SHA-256 (with ``verify_hashes``) differs from its row.
  Reported, never rewritten: the PACS holds the original.
- **unreadable**: a file in the store that does not parse as the instance its path names.

Nothing here deletes data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from ortho_node.db.engine import Database
from ortho_node.db.models import Instance
from ortho_node.ingest.header import InvalidDatasetError, parse_header
from ortho_node.ingest.indexer import Indexer
from ortho_node.ingest.part10 import read_part10_meta
from ortho_node.ingest.sop_classes import out_of_scope_reason
from ortho_node.privacy import uid_ref
from ortho_node.store import InstanceStore

log = logging.getLogger(__name__)

RECOVERED_SOURCE = "recovered"


@dataclass
class StoreCheckReport:
    """What :func:`check_store` found (store-relative paths, no patient data)."""

    files: int = 0
    indexed_rows: int = 0
    unindexed: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every file is indexed (or was just recovered) and every row has its file."""
        outstanding = set(self.unindexed) - set(self.recovered)
        return not (outstanding or self.missing or self.damaged or self.unreadable)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "files": self.files,
            "indexed_rows": self.indexed_rows,
            "unindexed": len(self.unindexed),
            "recovered": len(self.recovered),
            "missing": len(self.missing),
            "damaged": len(self.damaged),
            "unreadable": len(self.unreadable),
        }


def _store_files(store: InstanceStore) -> Iterator[str]:
    """Relative paths of the instance files (``study/series/sop.dcm``), temp folder excluded."""
    root = store.root
    for path in sorted(root.glob("*/*/*.dcm")):
        if path.parts[len(root.parts)].startswith("."):
            continue
        yield path.relative_to(root).as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_stored_file(
    store: InstanceStore,
    indexer: Indexer,
    relative: str,
    *,
    calling_ae: str | None = None,
    source: str = RECOVERED_SOURCE,
) -> None:
    """Index one stored file from its own content (idempotent: an indexed one is left as it is).

    Raises
    ------
    InvalidDatasetError
        The file is not the instance its path names.
    ortho_node.ingest.indexer.IndexUnavailableError
        The index could not record it.
    """
    data = store.absolute(relative).read_bytes()
    meta, offset = read_part10_meta(data)
    syntax = str(meta.TransferSyntaxUID)
    header = parse_header(data[offset:], syntax)
    expected = store.relative_path(
        study_uid=header.study_instance_uid,
        series_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
    )
    if expected != relative:
        raise InvalidDatasetError("the data set's UIDs do not match its path in the store")
    indexer.record_instance(
        header,
        relative_path=relative,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        transfer_syntax_uid=syntax,
        calling_ae=calling_ae,
        source=source,
        out_of_scope_reason=out_of_scope_reason(header.sop_class_uid),
    )


def check_store(
    store: InstanceStore,
    db: Database,
    *,
    repair: bool = False,
    verify_hashes: bool = False,
) -> StoreCheckReport:
    """Compare the store with the index; with ``repair``, index the files that have no row.

    Safe while the node runs: a file being received right now may show as unindexed for a
    moment (its row commits just after), and indexing it again is idempotent.
    """
    report = StoreCheckReport()
    with db.connection() as conn:
        rows = {
            path: (size, sha)
            for path, size, sha in conn.execute(select(Instance.path, Instance.size_bytes, Instance.sha256))
        }
    report.indexed_rows = len(rows)
    indexer = Indexer(db) if repair else None
    on_disk: set[str] = set()
    for relative in _store_files(store):
        on_disk.add(relative)
        report.files += 1
        row = rows.get(relative)
        path = store.absolute(relative)
        if row is None:
            report.unindexed.append(relative)
            if indexer is not None:
                try:
                    index_stored_file(store, indexer, relative)
                except InvalidDatasetError as exc:
                    report.unreadable.append(relative)
                    log.warning("store check: %s cannot be indexed: %s", _ref(relative), exc)
                else:
                    report.recovered.append(relative)
                    log.warning("store check: indexed %s, stored but never indexed", _ref(relative))
            continue
        size, sha = row
        if path.stat().st_size != size or (verify_hashes and _sha256(path) != sha):
            report.damaged.append(relative)
            log.error("store check: %s differs from what was received", _ref(relative))
    report.missing = sorted(set(rows) - on_disk)
    for relative in report.missing:
        log.error("store check: %s is indexed but its file is missing", _ref(relative))
    return report


def _ref(relative: str) -> str:
    """A loggable name for a store path (hashed UIDs, no PHI)."""
    parts = relative.removesuffix(".dcm").split("/")
    return "/".join(uid_ref(part) for part in parts)
