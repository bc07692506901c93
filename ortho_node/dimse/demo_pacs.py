"""A minimal Storage SCP that files what it receives: the stand-in PACS of ``ortho-node demo``.

Real DIMSE on loopback, so the demo shows the node delivering results the way it does to a
hospital PACS. Not meant for anything else (no index, no query).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from ortho_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES


@dataclass
class ReceivedObject:
    path: Path
    sop_class_uid: str
    modality: str
    series_description: str
    study_instance_uid: str


@dataclass
class DemoPacs:
    """Start with :meth:`start`; received objects are listed in :attr:`received`."""

    folder: Path
    ae_title: str = "DEMOPACS"
    received: list[ReceivedObject] = field(default_factory=list)

    def start(self, port: int = 0) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        self._server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()

    def _on_store(self, event: Event) -> int:
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.get('Modality', 'OT')}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(
                ReceivedObject(
                    path=path,
                    sop_class_uid=str(ds.SOPClassUID),
                    modality=str(ds.get("Modality", "")),
                    series_description=str(ds.get("SeriesDescription", "")),
                    study_instance_uid=str(ds.StudyInstanceUID),
                )
            )
        return 0x0000
