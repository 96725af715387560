"""Native messaging framing: frames, split input, truncated, oversized, malformed, chunking."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from keypost.host import framing
from keypost.host.framing import (
    ChunkAssembler,
    FrameDecoder,
    Malformed,
    Message,
    Oversized,
    Truncated,
    encode_frame,
    encode_reply,
)


def frame(payload: bytes) -> bytes:
    return struct.pack("=I", len(payload)) + payload


def test_header_is_native_endian_length() -> None:
    data = encode_frame({"a": 1})
    body = b'{"a":1}'
    assert data == struct.pack("=I", len(body)) + body


def test_two_frames_in_one_read_and_one_frame_byte_by_byte() -> None:
    dec = FrameDecoder()
    data = encode_frame({"id": 1}) + encode_frame({"id": 2})
    assert dec.feed(data) == [Message({"id": 1}), Message({"id": 2})]
    dec2 = FrameDecoder()
    events = [ev for byte in data for ev in dec2.feed(bytes([byte]))]
    assert events == [Message({"id": 1}), Message({"id": 2})]
    assert dec2.close() == []


def test_unicode_payload_round_trips() -> None:
    dec = FrameDecoder()
    value = {"subject": "Grüße \u2603 \U0001f600"}
    assert dec.feed(encode_frame(value)) == [Message(value)]


def test_truncated_inside_header_and_inside_payload() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x05\x00") == []
    assert dec.close() == [Truncated(2, None)]
    dec = FrameDecoder()
    whole = frame(b'{"id": 1}')
    assert dec.feed(whole[:-3]) == []
    assert dec.close() == [Truncated(len(whole) - 4 - 3, len(whole) - 4)]


def test_oversized_frame_is_skipped_and_stream_stays_in_step() -> None:
    dec = FrameDecoder(max_size=100)
    big = frame(b"x" * 1000)
    after = encode_frame({"id": "next"})
    events = dec.feed(big[:50])
    assert events == [Oversized(1000, 100)]
    # The rest of the big payload arrives in pieces and is discarded, not buffered.
    assert dec.feed(big[50:600]) == []
    assert dec.feed(big[600:] + after) == [Message({"id": "next"})]
    assert dec.close() == []


def test_oversized_frame_cut_short_is_truncated() -> None:
    dec = FrameDecoder(max_size=10)
    assert dec.feed(frame(b"y" * 50)[:20]) == [Oversized(50, 10)]
    assert dec.close() == [Truncated(0, 34)]


def test_default_limit_is_64_mib() -> None:
    dec = FrameDecoder()
    assert dec.feed(struct.pack("=I", 64 * 1024 * 1024 + 1)) == [
        Oversized(64 * 1024 * 1024 + 1, 64 * 1024 * 1024)
    ]


def test_malformed_frames() -> None:
    dec = FrameDecoder()
    events = dec.feed(
        frame(b"\xff\xfe") + frame(b"{not json") + frame(b"[1, 2]") + frame(b"[" * 100000)
    )
    assert [type(e) for e in events] == [Malformed] * 4
    assert isinstance(events[0], Malformed) and "UTF-8" in events[0].reason
    assert isinstance(events[1], Malformed) and "JSON" in events[1].reason
    assert isinstance(events[2], Malformed) and "object" in events[2].reason


def test_small_reply_is_one_frame() -> None:
    reply = {"id": 3, "ok": True, "result": {"x": "y"}}
    frames = encode_reply(reply)
    assert len(frames) == 1
    assert json.loads(frames[0][4:]) == reply


def _check_chunks(reply: dict[str, object], max_frame: int) -> list[bytes]:
    frames = encode_reply(reply, max_frame=max_frame)
    dec = FrameDecoder()
    asm = ChunkAssembler()
    done = []
    for i, data in enumerate(frames):
        assert len(data) <= max_frame
        [ev] = dec.feed(data)
        assert isinstance(ev, Message)
        if len(frames) > 1:
            assert "ok" not in ev.value and ev.value["id"] == reply["id"]
            assert ev.value["chunk"]["index"] == i and ev.value["chunk"]["count"] == len(frames)
        out = asm.add(ev.value)
        if out is not None:
            done.append(out)
    assert done == [reply]
    return frames


def test_large_reply_is_chunked_below_768_kib() -> None:
    # A 3 MB encrypted message: base64 lines with CRLF (escaped twice inside `data`).
    line = "QUJD" * 19 + "\r\n"
    reply = {"id": "enc-1", "ok": True, "result": {"message": line * 40000}}
    frames = _check_chunks(reply, framing.MAX_REPLY_FRAME)
    assert len(frames) >= 4
    assert all(len(f) < 768 * 1024 for f in frames)
    # Chunks are well filled (no needless halving).
    assert sum(len(f) for f in frames) / len(frames) > 0.7 * framing.MAX_REPLY_FRAME


def test_chunking_worst_case_escaping() -> None:
    # Quotes, backslashes and non-ASCII expand when escaped: chunks must still fit.
    text = ('"\\' * 3000) + ("ä€😀" * 3000) + ("\x01" * 2000)
    _check_chunks({"id": 9, "ok": True, "result": {"t": text}}, max_frame=4096)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=3000), st.integers(min_value=300, max_value=2000))
def test_chunking_round_trips_any_text(text: str, max_frame: int) -> None:
    _check_chunks({"id": 1, "ok": True, "result": {"t": text}}, max_frame=max_frame)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=10))
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_size=64)
    pos = 0
    for n in cuts:
        for ev in dec.feed(data[pos : pos + n]):
            assert isinstance(ev, Message | Oversized | Malformed)
        pos += n
    dec.feed(data[pos:])
    for ev in dec.close():
        assert isinstance(ev, Truncated)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='\\"a\u00e4\x01\U0001f600\r\n', min_size=200, max_size=2000),
       st.integers(min_value=200, max_value=400))
def test_chunk_cuts_never_split_an_escape(text: str, max_frame: int) -> None:
    # Escape-dense text and tiny frames: many cuts land next to backslashes.
    _check_chunks({"id": "x", "ok": True, "result": {"t": text}}, max_frame=max_frame)


def test_json_the_add_on_cannot_read_back_is_malformed() -> None:
    """Python's json reads what RFC 8259 and the add-on's JSON.parse do not: NaN and
    Infinity (echoed in a reply id they made the reply unreadable), and a number past the
    int conversion limit raised ValueError out of the decoder, which ended the host."""
    dec = FrameDecoder()
    bad = [b'{"id": NaN}', b'{"id": -Infinity}', b'{"id": 1e400}',
           b'{"id": ' + b"7" * 5000 + b"}", b'{"id": 1, "params": {"n": [Infinity]}}']
    events = dec.feed(b"".join(frame(payload) for payload in bad) + encode_frame({"id": 2}))
    assert [type(e) for e in events] == [Malformed] * len(bad) + [Message]
    assert all("JSON" in e.reason for e in events if isinstance(e, Malformed))
    assert events[-1] == Message({"id": 2})
    # Ordinary numbers are read as before.
    assert dec.feed(frame(b'{"id": 1.5e3, "n": -0.25, "big": 123456789012345678901}')) == [
        Message({"id": 1500.0, "n": -0.25, "big": 123456789012345678901})]
