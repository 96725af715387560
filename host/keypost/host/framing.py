"""Native messaging framing, sans-IO: 4-byte native-endian length + UTF-8 JSON, with chunking.

The decoder takes bytes and returns events; the encoder returns the bytes to write. No
I/O happens here, so tests and fuzzers drive it directly (see PROTOCOL.md, "Framing").
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, NoReturn

HEADER = struct.Struct("=I")  # native byte order, as Thunderbird writes and expects
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # add-on -> host; Thunderbird itself allows 4 GiB
# Host -> add-on: Thunderbird refuses messages over 1 MiB; staying below 768 KiB (as
# well-known hosts do) leaves room for Thunderbird's own bookkeeping.
MAX_REPLY_FRAME = 768 * 1024 - 1
MAX_INT_DIGITS = 400  # in a request: far beyond any id; Python's int() stops at 4,300


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
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                           parse_int=_sane_int)
    except json.JSONDecodeError as exc:
        return Malformed(f"frame is not valid JSON: {exc.msg} at position {exc.pos}")
    except ValueError as exc:  # a number the add-on could not read back, see below
        return Malformed(f"frame is not valid JSON: {exc}")
    except RecursionError:
        return Malformed("frame nests JSON too deeply")
    if not isinstance(value, dict):
        return Malformed("frame is not a JSON object")
    return Message(value)


# Python's json also reads NaN and Infinity (no JSON: the add-on's JSON.parse refuses a
# reply echoing them as its id) and numbers beyond a float (1e400 -> inf); an integer of
# more than 4,300 digits raised ValueError out of the decoder and ended the host. All of
# them are malformed frames.
def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _sane_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _dumps(value: object) -> str:
    # ASCII output: the C encoder's fastest path, and chunks then never split a character.
    return json.dumps(value, separators=(",", ":"))


def encode_frame(value: object) -> bytes:
    """One frame: header + UTF-8 JSON. No size check (see encode_reply for replies)."""
    body = _dumps(value).encode("utf-8")
    return HEADER.pack(len(body)) + body


def encode_reply(reply: dict[str, Any], max_frame: int = MAX_REPLY_FRAME) -> list[bytes]:
    """The frames for one reply: itself when it fits in `max_frame` bytes (header included),
    else chunk frames `{id, chunk: {index, count, data}}` whose `data` joined in order is the
    reply's JSON text. A reply carrying a 10 MB attachment (both the encrypted message and
    the clear Sent copy, ~27 MB of JSON) costs ~0.3 s of CPU, nearly all in json.dumps."""
    text = _dumps(reply)
    whole = text.encode("utf-8")
    if HEADER.size + len(whole) <= max_frame:
        return [HEADER.pack(len(whole)) + whole]
    rid = _dumps(reply.get("id")).encode("utf-8")
    # `data` holds the reply's JSON text as a JSON string: escape it once, then cut the
    # escaped bytes where no escape sequence or UTF-8 character is split, so each piece
    # is itself a valid string literal body (no re-encoding per chunk).
    escaped = _dumps(text).encode("utf-8")[1:-1]
    # Room for `data` after the envelope; index/count reserved as 10 digits each.
    overhead = len(b'{"id":,"chunk":{"index":,"count":,"data":""}}') + len(rid) + 20
    budget = max_frame - HEADER.size - overhead
    if budget < 16:
        raise ValueError("max_frame too small for a chunk envelope")
    pieces: list[bytes] = []
    pos = 0
    while pos < len(escaped):
        end = min(pos + budget, len(escaped))
        if end < len(escaped):
            end = _safe_cut(escaped, pos, end)
        pieces.append(escaped[pos:end])
        pos = end
    count = len(pieces)
    frames = []
    for i, piece in enumerate(pieces):
        body = b'{"id":%s,"chunk":{"index":%d,"count":%d,"data":"%s"}}' % (rid, i, count, piece)
        frames.append(HEADER.pack(len(body)) + body)
    return frames


def _safe_cut(escaped: bytes, start: int, end: int) -> int:
    """The largest cut <= end that splits neither a UTF-8 character nor a JSON escape
    (`\\X` or `\\uXXXX`)."""
    while end > start + 1 and 0x80 <= escaped[end] < 0xC0:  # UTF-8 continuation byte
        end -= 1
    # A backslash that starts an escape is preceded by an even number of backslashes.
    for back in range(1, 7):
        q = end - back
        if q <= start:
            break
        if escaped[q] != 0x5C:  # not a backslash
            continue
        run = 0
        while q - run - 1 >= start and escaped[q - run - 1] == 0x5C:
            run += 1
        if run % 2:
            continue  # this backslash is itself escaped: it ends an escape, starts none
        length = 6 if escaped[q + 1 : q + 2] == b"u" else 2
        if q + length > end:
            return q
        break
    return end


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
