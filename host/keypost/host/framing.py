"""Native messaging framing, sans-IO: 4-byte native-endian length + UTF-8 JSON, with chunking.

The decoder takes bytes and returns events; the encoder returns the bytes to write. No
I/O happens here, so tests and fuzzers drive it directly (see PROTOCOL.md, "Framing").
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("=I")  # native byte order, as Thunderbird writes and expects
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # add-on -> host; Thunderbird itself allows 4 GiB
# Host -> add-on: Thunderbird refuses messages over 1 MiB; staying below 768 KiB (as
# well-known hosts do) leaves room for Thunderbird's own bookkeeping.
MAX_REPLY_FRAME = 768 * 1024 - 1


@dataclass(frozen=True)
class Message:
    """A complete, well-formed frame: one JSON object."""

    value: dict[str, Any]


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the limit; its payload was skipped without being buffered."""

    length: int
    limit: int


@dataclass(frozen=True)
class Malformed:
    """A complete frame whose payload is not UTF-8 JSON or not a JSON object."""

    reason: str


@dataclass(frozen=True)
class Truncated:
    """The input ended inside a frame (header or payload)."""

    received: int
    expected: int | None  # None when the input ended inside the 4-byte header


Event = Message | Oversized | Malformed | Truncated


class FrameDecoder:
    """Splits a byte stream into frames. Feed bytes with `feed`, call `close` at EOF."""

    def __init__(self, max_size: int = MAX_REQUEST_BYTES) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._skip = 0  # payload bytes of an oversized frame still to discard
        self._closed = False

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes; return every event they complete (possibly none)."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        events: list[Event] = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data
        while not self._skip and len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > self._max:
                events.append(Oversized(length, self._max))
                available = len(self._buf) - HEADER.size
                dropped = min(length, available)
                del self._buf[: HEADER.size + dropped]
                self._skip = length - dropped
                continue
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size : HEADER.size + length])
            del self._buf[: HEADER.size + length]
            events.append(_parse(payload))
        return events

    def close(self) -> list[Event]:
        """End of input: a partial frame left over is reported as Truncated."""
        self._closed = True
        if self._skip:
            return [Truncated(0, self._skip)]
        if not self._buf:
            return []
        if len(self._buf) < HEADER.size:
            return [Truncated(len(self._buf), None)]
        (length,) = HEADER.unpack_from(self._buf)
        return [Truncated(len(self._buf) - HEADER.size, length)]


def _parse(payload: bytes) -> Message | Malformed:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed("frame is not valid UTF-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Malformed(f"frame is not valid JSON: {exc.msg} at position {exc.pos}")
    except RecursionError:
        return Malformed("frame nests JSON too deeply")
    if not isinstance(value, dict):
        return Malformed("frame is not a JSON object")
    return Message(value)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_frame(value: object) -> bytes:
    """One frame: header + UTF-8 JSON. No size check (see encode_reply for replies)."""
    body = _dumps(value).encode("utf-8")
    return HEADER.pack(len(body)) + body


def encode_reply(reply: dict[str, Any], max_frame: int = MAX_REPLY_FRAME) -> list[bytes]:
    """The frames for one reply: itself when it fits in `max_frame` bytes (header included),
    else chunk frames `{id, chunk: {index, count, data}}` whose `data` joined in order is the
    reply's JSON text."""
    text = _dumps(reply)
    whole = text.encode("utf-8")
    if HEADER.size + len(whole) <= max_frame:
        return [HEADER.pack(len(whole)) + whole]
    rid = reply.get("id")
    # Room left for `data` after the envelope; index/count written as 9 digits to be safe.
    envelope = _dumps({"id": rid, "chunk": {"index": 10**9, "count": 10**9, "data": ""}})
    budget = max_frame - HEADER.size - len(envelope.encode("utf-8"))
    if budget < 64:
        raise ValueError("max_frame too small for a chunk envelope")
    pieces: list[str] = []
    pos = 0
    while pos < len(text):
        size = budget
        while True:
            piece = text[pos : pos + size]
            # The piece is escaped again inside `data`: measure, and shrink until it fits.
            cost = len(_dumps(piece).encode("utf-8")) - 2
            if cost <= budget:
                break
            size = max(1, min(size - 1, size * budget // cost - 16))
        pieces.append(piece)
        pos += len(piece)
    count = len(pieces)
    return [
        encode_frame({"id": rid, "chunk": {"index": i, "count": count, "data": piece}})
        for i, piece in enumerate(pieces)
    ]


class ChunkAssembler:
    """The add-on's side of chunking, in Python: used by tests and tools that talk to the host."""

    def __init__(self) -> None:
        self._parts: dict[object, list[str]] = {}

    def add(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Give one frame; returns a complete reply when one is ready, else None."""
        chunk = frame.get("chunk")
        if chunk is None:
            return frame
        key = json.dumps(frame.get("id"))
        parts = self._parts.setdefault(key, [])
        if chunk["index"] != len(parts):
            raise ValueError("chunk out of order")
        parts.append(chunk["data"])
        if len(parts) < chunk["count"]:
            return None
        del self._parts[key]
        value = json.loads("".join(parts))
        if not isinstance(value, dict):
            raise ValueError("chunked reply is not a JSON object")
        return value
