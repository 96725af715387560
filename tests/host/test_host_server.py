"""The stdio loop in-process: replies per frame, oversized and garbage answered, EOF exits."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from host_support import MemoryKeyring

from keypost.host.actions import Host
from keypost.host.framing import ChunkAssembler, FrameDecoder, Message, encode_frame
from keypost.host.server import serve


def replies(data: bytes) -> list[dict[str, object]]:
    dec, asm = FrameDecoder(), ChunkAssembler()
    out = []
    for ev in dec.feed(data):
        assert isinstance(ev, Message)
        done = asm.add(ev.value)
        if done is not None:
            out.append(done)
    assert dec.close() == []
    return out


def test_serve_answers_each_frame_and_survives_bad_input(
    host_dirs: tuple[Path, Path], memory_keyring: MemoryKeyring
) -> None:
    oversized = struct.pack("=I", 5000) + b"x" * 5000
    stdin = io.BytesIO(
        encode_frame({"id": 1, "action": "ping", "params": {"protocol": 1}})
        + oversized
        + struct.pack("=I", 3) + b"\xff\xfe\xfd"
        + encode_frame({"id": "two", "action": "status"})
        + struct.pack("=I", 100) + b'{"id": 3'  # cut off by the end of input
    )
    stdout = io.BytesIO()
    assert serve(stdin, stdout, Host(*host_dirs), max_request=4096) == 0
    ping, too_large, garbage, status = replies(stdout.getvalue())
    assert ping["id"] == 1 and ping["ok"] is True
    assert too_large == {"id": None, "ok": False, "error": {
        "code": 4, "name": "message_too_large",
        "message": "request of 5000 bytes exceeds the limit of 4096",
        "details": {"limit": 4096}}}
    assert garbage["id"] is None and garbage["error"]["code"] == 1  # type: ignore[index]
    assert status["id"] == "two" and status["ok"] is True
