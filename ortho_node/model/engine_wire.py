"""Messages between the shared engine and its clients over a Unix stream socket.

One message is a JSON header and the raw bytes of its tensors, back to back::

    u32 header length | u64 payload length | header (UTF-8 JSON) | payload

The header carries the message's fields and, under ``"tensors"``, each tensor's dtype and shape
(float32 only: images one way, features the other). Tensors travel as their memory, without
pickling: nothing a peer sends is ever executed, and a 30-slice request of 224² images
(18 MB) costs a few memory copies. Both ends are processes of one host and one user (the
socket file is private to the node's user), so there is no authentication on the socket itself.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["WireError", "receive_message", "send_message"]

_PREFIX = struct.Struct("!IQ")
_MAX_HEADER_BYTES = 1 << 16
_MAX_PAYLOAD_BYTES = 1 << 33  # 8 GiB: far above the largest request the engine accepts (4096 images)
_DTYPES = {"float32": torch.float32}
_MAX_DIMENSIONS = 8


class WireError(ConnectionError):
    """The peer closed the connection or sent something that is not a message."""


def send_message(sock: socket.socket, header: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> None:
    """Send ``header`` and ``tensors`` (float32, any device; sent from host memory) as one message."""
    parts = []
    for tensor in tensors:
        if tensor.dtype != torch.float32:
            raise TypeError(f"only float32 tensors travel to and from the engine, got {tensor.dtype}")
        parts.append(tensor.detach().cpu().contiguous())
    specs = [{"dtype": "float32", "shape": list(part.shape)} for part in parts]
    head = json.dumps({**header, "tensors": specs}, separators=(",", ":")).encode()
    payload = sum(part.numel() * part.element_size() for part in parts)
    sock.sendall(_PREFIX.pack(len(head), payload) + head)
    for part in parts:
        if part.numel():
            sock.sendall(memoryview(part.numpy()).cast("B"))


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise WireError("the peer closed the connection")
        received += count
    return buffer


def receive_message(
    sock: socket.socket, *, max_payload_bytes: int = _MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], list[torch.Tensor]] | None:
    """The next message as (header, tensors); None when the peer closed the connection between messages.

    ``max_payload_bytes`` bounds what one message may make this process allocate (the engine
    passes the size of its largest acceptable request).

    Raises
    ------
    WireError
        The connection closed inside a message, or the bytes are not a message.
    """
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except ConnectionResetError:
        return None
    if not first:
        return None
    head_size, payload_size = _PREFIX.unpack(_receive_exactly(sock, _PREFIX.size))
    if head_size > _MAX_HEADER_BYTES or payload_size > min(max_payload_bytes, _MAX_PAYLOAD_BYTES):
        raise WireError(f"message too large (header {head_size} bytes, payload {payload_size} bytes)")
    try:
        header = json.loads(_receive_exactly(sock, head_size))
        specs = header.pop("tensors")
        shapes = [tuple(int(n) for n in spec["shape"]) for spec in specs]
        dtypes = [_DTYPES[spec["dtype"]] for spec in specs]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise WireError(f"malformed message header ({type(exc).__name__})") from None
    if any(len(shape) > _MAX_DIMENSIONS or any(not 0 <= n <= payload_size for n in shape) for shape in shapes):
        raise WireError("the message's tensors do not match its payload")
    sizes = [math.prod(shape) * 4 for shape in shapes]  # Python integers: no overflow
    if sum(sizes) != payload_size:
        raise WireError("the message's tensors do not match its payload")
    payload = _receive_exactly(sock, payload_size) if payload_size else bytearray()
    tensors, offset = [], 0
    for shape, dtype, size in zip(shapes, dtypes, sizes, strict=True):
        if size:
            flat = torch.frombuffer(payload, dtype=dtype, count=size // 4, offset=offset)
        else:
            flat = torch.empty(0, dtype=dtype)
        tensors.append(flat.reshape(shape))
        offset += size
    return header, tensors
