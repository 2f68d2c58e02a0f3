"""RFC 6455 framing of server-to-client messages, as pure functions.

Frames a server sends are not masked, so a group message's frame is the same bytes for
every recipient: it is built once here and written to each transport by the fast path.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["FAST_PATH_EXTENSION", "OPCODE_BINARY", "OPCODE_TEXT", "encode_frame", "payload_size"]

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2
_FIN: Final = 0x80

FAST_PATH_EXTENSION: Final = "fastapi_channels.frames"
"""Key of the frame writer in the ASGI scope's extensions (see `fastapi_channels.fastpath`)."""


def encode_frame(message: str | bytes) -> bytes:
    """One final, unmasked frame: text for a str, binary for bytes."""
    if isinstance(message, str):
        payload = message.encode()
        first = _FIN | OPCODE_TEXT
    else:
        payload = bytes(message)
        first = _FIN | OPCODE_BINARY
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def payload_size(frame_size: int) -> int:
    """The payload's size in a frame of `frame_size` bytes built by `encode_frame`.

    An unmasked header is 2 bytes up to a 125-byte payload, 4 up to 65,535 and 10 beyond, so
    a frame's size says its header's: the fast path counts and bounds payloads as the ASGI
    path does, without keeping a second size per queued frame.
    """
    if frame_size <= 127:
        return frame_size - 2
    if frame_size <= 65539:
        return frame_size - 4
    return frame_size - 10
