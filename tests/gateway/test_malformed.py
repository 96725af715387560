"""The malformed corpus: nothing crashes the gateway, nothing is lost, no garbage is delivered.

Static files in tests/data/malformed (see gw_corpus.py) plus cases that need real keys.
Each message gets a 5xx, a quarantine, a 451, or (when it is not for us) passes unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import Pki, RunningGateway, Sink, body_of, plain_message, running_gateway, send

from keypost.core import smime

CORPUS = Path(__file__).resolve().parents[1] / "data" / "malformed"
FILES = sorted(CORPUS.glob("*.eml"))
ALICE = "alice@example.com"


@pytest.fixture
def gw(pki: Pki, sink: Sink, tmp_path: Path) -> Iterator[RunningGateway]:
    cfg = pki.config(sink.port, extra="max_message_size = 300000",
                     quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as g:
        yield g


def _alive(gw: RunningGateway, sink: Sink) -> None:
    before = len(sink.handler.messages)
    code, _ = send(gw.port, "s@outside.test", [ALICE], plain_message(body="still alive"))
    assert code == 250
    assert b"still alive" in sink.handler.messages[before].data


def test_corpus_is_present() -> None:
    assert len(FILES) >= 10
    assert any(f.name.startswith("reject-") for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_message(path: Path, gw: RunningGateway, sink: Sink) -> None:
    data = path.read_bytes()
    code, text = send(gw.port, "mallory@outside.test", [ALICE], data)
    if path.name.startswith("reject-"):
        assert 500 <= code < 600, text
        assert sink.handler.messages == []
    else:
        assert code == 250, text
        [got] = sink.handler.messages
        assert got.data.replace(b"\r\n", b"\n").rstrip(b"\n") == (
            data.replace(b"\r\n", b"\n").rstrip(b"\n")
        )
    _alive(gw, sink)


def _p7m_body(message: bytes) -> bytes:
    return base64.b64decode(b"".join(body_of(message).split()))


def _with_body(message: bytes, der: bytes) -> bytes:
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].replace(b"\n", b"\r\n")
    text = base64.b64encode(der)
    lines = b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    return head + b"\r\n\r\n" + lines + b"\r\n"


def _keyed_cases(pki: Pki) -> dict[str, bytes]:
    good = smime.encrypt_message(plain_message(), [pki.container(pki.current)])
    der = _p7m_body(good)
    corrupt = bytearray(der)
    # Last byte of the next-to-last cipher block: CBC turns the padding byte into a value
    # above 16, so the padding check always fails. (CBC has no integrity: garbling other
    # blocks cannot be detected at all; see the README.)
    corrupt[-17] ^= 0xFF
    garbage_inside = smime.encrypt_message(
        b"Content-Type: multipart/mixed; boundary=q\r\n\r\nno delimiter at all\r\n",
        [pki.container(pki.current)],
    )
    return {
        "truncated-cms": _with_body(good, der[: len(der) // 2]),
        "truncated-base64": good[: len(good) - 200],
        "corrupted-ciphertext": _with_body(good, bytes(corrupt)),
        "wrong-key": smime.encrypt_message(plain_message(), [pki.container(pki.stranger)]),
        "decrypts-to-broken-mime": garbage_inside,
    }


@pytest.mark.parametrize(
    "case",
    ["truncated-cms", "truncated-base64", "corrupted-ciphertext", "wrong-key",
     "decrypts-to-broken-mime"],
)
def test_undecryptable_is_refused_with_554(
    case: str, pki: Pki, gw: RunningGateway, sink: Sink
) -> None:
    code, text = send(gw.port, "mallory@outside.test", [ALICE], _keyed_cases(pki)[case])
    assert code == 554, text
    assert text.startswith("5.")
    assert sink.handler.messages == []
    _alive(gw, sink)


def test_oversized_is_refused(gw: RunningGateway, sink: Sink) -> None:
    big = plain_message(body="x" * 76 + ("\r\n" + "x" * 76) * 5000)
    code, _ = send(gw.port, "s@outside.test", [ALICE], big)
    assert code in (552, 554)
    assert sink.handler.messages == []
    _alive(gw, sink)


def test_malformed_goes_to_quarantine_when_policy_says_so(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    cfg = pki.config(sink.port, extra='[policy]\nmalformed = "quarantine"',
                     quarantine=str(tmp_path / "q"))
    bad = _keyed_cases(pki)["truncated-cms"]
    with running_gateway(cfg) as g:
        code, _ = send(g.port, "mallory@outside.test", [ALICE], bad)
    assert code == 250
    held = list((tmp_path / "q" / "new").iterdir())
    assert len(held) == 1 and body_of(held[0].read_bytes()) == body_of(bad)
    [notice] = sink.handler.messages
    assert notice.rcpt_tos == [ALICE] and b"not a readable S/MIME message" in notice.data


@pytest.mark.parametrize("line", [b"Subject", b"Subject \t", b"subject"])
def test_a_header_line_named_subject_without_a_colon_is_no_subject(
    line: bytes, gw: RunningGateway, sink: Sink
) -> None:
    """Outbound mail (the subject tag is looked for) whose header block holds a line that
    is only a field name: it is no field (RFC 5322 2.2), and Postfix's cleanup lets it
    through. The tag search took it for the Subject field and looked for its colon: a
    ValueError, so a 451 on every retry until the sender's MTA gave up days later."""
    msg = (b"From: alice@example.com\r\nTo: carol@elsewhere.net\r\n" + line + b"\r\n"
           b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n")
    code, text = send(gw.port, ALICE, ["carol@elsewhere.net"], msg)
    assert code == 250, text  # plain outbound mail: it leaves as it came
    [got] = sink.handler.messages
    assert got.data.rstrip(b"\r\n") == msg.rstrip(b"\r\n")
    _alive(gw, sink)
