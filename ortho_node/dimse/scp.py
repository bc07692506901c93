"""The DIMSE SCP: Verification, Storage, and the reports of Storage Commitment, on pynetdicom.

Every storage SOP class is accepted with the transfer syntaxes listed in
``ACCEPTED_TRANSFER_SYNTAXES``; an unknown SOP class or syntax is refused at presentation
context negotiation (the sender sees "abstract syntax / transfer syntax not supported").
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification
from pynetdicom.transport import ThreadedAssociationServer

from ortho_node.config import DimseSettings, TlsSettings
from ortho_node.dimse import handlers
from ortho_node.dimse.commitment import ReportSink, make_report_handler
from ortho_node.ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ortho_node.ingest.service import IngestService

log = logging.getLogger(__name__)

# Preference order when a sender offers several syntaxes in one presentation context
# (pynetdicom picks the first of ours the sender proposed). Lossless compressed first: the data
# set arrives as the sender holds it (byte-identical, less bandwidth); then uncompressed; lossy
# last, so the node never asks a sender to compress an image lossily.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.RLELossless,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLSNearLossless,
    uid.JPEG2000,
    uid.HTJ2K,
)


@dataclass
class RunningScp:
    """A started SCP; ``stop()`` closes the listening socket and open associations."""

    server: ThreadedAssociationServer
    ae: AE

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def build_ae(settings: DimseSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.require_called_aet = settings.require_called_ae_title
    ae.add_supported_context(Verification, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    # Storage commitment reports: the PACS opens the association and proposes the SCP role for
    # itself (PS3.4 J.3.3); the node takes the SCU role and receives the N-EVENT-REPORT.
    ae.add_supported_context(
        StorageCommitmentPushModel, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian],
        scu_role=False, scp_role=True,
    )
    return ae


def start_scp(
    settings: DimseSettings,
    ingest: IngestService,
    metrics: object | None = None,
    commitment_reports: ReportSink | None = None,
) -> RunningScp:
    """Start listening on ``settings.host:settings.port`` (port 0 picks a free port).

    ``commitment_reports`` records the storage commitment reports PACS send back; without it
    a report is answered with a processing failure (0x0110), so the PACS reports again later."""
    if not settings.allowed_callers:
        log.warning("no allowed_callers configured: any calling AE title may send to this node")
    ae = build_ae(settings)
    evt_handlers = [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [ingest, metrics]),
        (evt.EVT_REQUESTED, handlers.make_requested_handler(settings.allowed_callers)),
        (evt.EVT_CONN_OPEN, handlers.make_conn_open_handler(settings.idle_poll_delay_s)),
        *handlers.NOTIFICATION_LOGGERS,
    ]
    if commitment_reports is not None:
        evt_handlers.append((evt.EVT_N_EVENT_REPORT, make_report_handler(commitment_reports)))
    ssl_context = server_tls_context(settings.tls) if settings.tls else None
    server = ae.start_server(
        (settings.host, settings.port), block=False, evt_handlers=evt_handlers, ssl_context=ssl_context
    )
    running = RunningScp(server=server, ae=ae)
    log.info(
        "DIMSE SCP %s listening on %s:%d%s", settings.ae_title, settings.host, running.port, " (TLS)" if ssl_context else ""
    )
    return running
