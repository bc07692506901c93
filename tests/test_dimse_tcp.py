"""The SCU's TCP options (ortho_node.dimse.tcp), checked on a real association with DCMTK storescp:
Nagle off from the start, and quick-ACK mode restored after every read, so a peer that writes a
response in pieces with Nagle on (DCMTK's default, Debian's Orthanc) is not held 40 ms per
message by our delayed ACK."""

from __future__ import annotations

import socket

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ortho_node.dimse.tcp import LOW_LATENCY_HANDLERS
from tests.support.peers import ReferenceStoreScp

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    scp = ReferenceStoreScp(tmp_path_factory.mktemp("storescp")).start()
    yield scp
    scp.stop()


def _options_after_echoes(port: int, handlers: list) -> tuple[int, int]:
    ae = AE(ae_title="ORTHO_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, evt_handlers=handlers)
    assert assoc.is_established
    try:
        for _ in range(3):
            assert assoc.send_c_echo().Status == 0x0000
        sock = assoc.dul.socket.socket
        return (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK),
        )
    finally:
        assoc.release()


def test_low_latency_association_sends_at_once_and_acknowledges_at_once(storescp):
    nodelay, quickack = _options_after_echoes(storescp.port, LOW_LATENCY_HANDLERS)
    assert nodelay != 0, "Nagle's algorithm still on"
    assert quickack != 0, "back in delayed-ACK mode after reading the responses"


def test_a_plain_pynetdicom_association_has_neither(storescp):
    # The control: what the handlers change is not already the default.
    assert _options_after_echoes(storescp.port, []) == (0, 0)
