"""The SCU's TCP options (ortho_node.dimse.tcp), checked on a real association with DCMTK storescp:
Nagle off from the start, and a quick ACK after every PDU header and body read, so a peer that
writes a response in pieces with Nagle on (DCMTK's default, Debian's Orthanc) is not held 40 ms
per message by our delayed ACK. (Whether quick-ACK mode is on at a given instant is the kernel's
business, it leaves it by itself: the tests check that the handler sets it after each read.)"""

from __future__ import annotations

import socket

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ortho_node.dimse import tcp
from tests.support.peers import ReferenceStoreScp

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")

ECHOES = 3


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    scp = ReferenceStoreScp(tmp_path_factory.mktemp("storescp")).start()
    yield scp
    scp.stop()


def _echo_and_record(port: int, handlers: list, monkeypatch) -> tuple[int, list[int]]:
    """Nagle's setting after ``ECHOES`` C-ECHOs, and the TCP options the handlers set."""
    options: list[int] = []
    set_option = tcp._set

    def recording(sock, option):
        options.append(option)
        set_option(sock, option)

    monkeypatch.setattr(tcp, "_set", recording)
    ae = AE(ae_title="ORTHO_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, evt_handlers=handlers)
    assert assoc.is_established
    try:
        for _ in range(ECHOES):
            assert assoc.send_c_echo().Status == 0x0000
        nodelay = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()
    return nodelay, options


def test_low_latency_association_sends_at_once_and_acknowledges_every_read(storescp, monkeypatch):
    nodelay, options = _echo_and_record(storescp.port, tcp.LOW_LATENCY_HANDLERS, monkeypatch)
    assert nodelay != 0, "Nagle's algorithm still on"
    assert options[0] == socket.TCP_NODELAY
    # The A-ASSOCIATE-AC and each C-ECHO-RSP: a header read and a body read each, then a quick ACK.
    assert options[1:].count(socket.TCP_QUICKACK) >= 2 * (1 + ECHOES)


def test_a_plain_pynetdicom_association_keeps_nagle_on(storescp, monkeypatch):
    # The control: what the handler changes is not already the default.
    nodelay, options = _echo_and_record(storescp.port, [], monkeypatch)
    assert nodelay == 0 and options == []
