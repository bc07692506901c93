"""A minimal Storage SCP that files what it receives: the stand-in PACS of ``ortho-node demo``.

Real DIMSE on loopback, so the demo shows the node delivering results the way it does to a
hospital PACS. It also commits to what it holds (Storage Commitment Push Model SCP): it answers
an N-ACTION, then reports on an association of its own to the node (``report_to``), proposing
the SCP role, as Orthanc does. Not meant for anything else (no index, no query).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from ortho_node.dimse.commitment import EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST, WELL_KNOWN_INSTANCE
from ortho_node.dimse.scp import ACCEPTED_TRANSFER_SYNTAXES

log = logging.getLogger(__name__)


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
    report_to: tuple[str, str, int] | None = None
    """(AE title, host, port) that storage commitment reports go to; None: no commitment."""

    def start(self, port: int = 0) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(StorageCommitmentPushModel, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
        self._server = ae.start_server(
            ("127.0.0.1", port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_commitment_request)],
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

    def _on_commitment_request(self, event: Event) -> tuple[int, None]:
        if self.report_to is None:
            return 0x0110, None  # this stand-in was started without anywhere to report to
        request = event.action_information
        with self._lock:
            held = {obj.path.stem.split("_", 1)[1] for obj in self.received}
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        items = list(request.get("ReferencedSOPSequence", []))
        report.ReferencedSOPSequence = [item for item in items if item.ReferencedSOPInstanceUID in held]
        failed = [item for item in items if item.ReferencedSOPInstanceUID not in held]
        for item in failed:
            item.FailureReason = 0x0112  # no such object instance
        if failed:
            report.FailedSOPSequence = failed
        threading.Thread(target=self._report, args=(self.report_to, report, bool(failed)), daemon=True).start()
        return 0x0000, None

    def _report(self, node: tuple[str, str, int], report: Dataset, failures: bool) -> None:
        """The N-EVENT-REPORT, on an association of its own (after the N-ACTION response)."""
        node_ae, host, port = node
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
        assoc = ae.associate(
            host, port, ae_title=node_ae, ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)]
        )
        if not assoc.is_established:
            log.warning("demo PACS: cannot report storage commitment to %s", node_ae)
            return
        try:
            event_type = EVENT_FAILURES_EXIST if failures else EVENT_ALL_COMMITTED
            assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        finally:
            assoc.release()
