"""Clients that shut their sending side (shutdown(SHUT_WR), a TCP half-close) once their
commands are sent: every command completed before the end of input is answered, in order,
the message is relayed once and its 250 reaches the client, then the gateway closes. Input
cut off by the end (a partial command line, a DATA without its final ".") is not taken.

aiosmtpd ended the session at the end of input: a message still being handled was
relayed without its 250, so the client kept it and a retry delivered it twice.

No assertion is on time: waits only bound a test that would otherwise hang."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gw_support import (
    Pki,
    RunningGateway,
    Sink,
    plain_message,
    running_gateway,
    serving_gateway,
    unread_client,
)

ALICE = "alice@example.com"
SENDER = "s@outside.test"
ENVELOPE = (b"EHLO client.test\r\nMAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<"
            + ALICE.encode() + b">\r\nDATA\r\n")
# the gateway's replies to ENVELOPE: EHLO (last line), MAIL, RCPT, DATA
ENVELOPE_CODES = ["250", "250", "250", "354"]


def message_data(subject: str) -> bytes:
    """A message as sent after DATA: dot-stuffed, ended by the lone "."."""
    text = plain_message(sender=SENDER, to=ALICE, subject=subject).replace(b"\r\n.", b"\r\n..")
    return text + b".\r\n"


def reply_codes(replies: bytes) -> list[str]:
    """The code of each reply (of a multi-line one, its last line), greeting first."""
    lines = replies.split(b"\r\n")
    assert lines[-1] == b"", replies  # nothing cut off
    return [line[:3].decode() for line in lines[:-1] if line[3:4] != b"-"]


def read_to_end(s: socket.socket) -> bytes:
    """Everything the gateway sends until it closes (the socket's timeout bounds a hang)."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def half_closed_session(port: int, data: bytes) -> bytes:
    """Send `data` in one write, shut the sending side, read every reply until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_to_end(s)


def subjects(sink: Sink) -> list[str]:
    return [line.split(b": ", 1)[1].decode() for m in sink.handler.messages
            for line in m.data.split(b"\r\n") if line.startswith(b"Subject: ")]


def wait_sessions_closed(gw: RunningGateway) -> tuple[int, int]:
    """The sessions still counted once the gateway's connections ended (bounded wait)."""
    sessions = gw.gateway.sessions
    deadline = time.monotonic() + 30
    while (sessions.admitted or sessions.refused) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sessions.admitted, sessions.refused


def test_pipelined_transactions_then_half_close_are_all_answered(pki: Pki, sink: Sink,
                                                                  tmp_path: Path) -> None:
    """Two whole transactions, a RSET, a STARTTLS and a QUIT in one write, then SHUT_WR:
    every reply in order, each message relayed once; the gateway closes after the 221.
    (The gateway offers no TLS: STARTTLS gets 454, so no session is ever over TLS, where
    asyncio could not keep a half-closed connection open for the replies.)"""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        replies = half_closed_session(gw.port, ENVELOPE + message_data("one")
                                      + b"MAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<"
                                      + ALICE.encode() + b">\r\nDATA\r\n" + message_data("two")
                                      + b"RSET\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
        assert reply_codes(replies) == ["220", *ENVELOPE_CODES, "250",
                                        "250", "250", "354", "250", "250", "454", "250", "221"]
        assert subjects(sink) == ["one", "two"]
        assert wait_sessions_closed(gw) == (0, 0)


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_half_close_without_quit_is_answered_then_closed(pki: Pki, sink: Sink,
                                                          tmp_path: Path, protocol: str) -> None:
    """No QUIT: the end of input after the final "." ends the session once the 250 is
    sent (LMTP: one per recipient, of two)."""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"),
                     extra=f'protocol = "{protocol}"')
    envelope = ENVELOPE.replace(b"DATA\r\n", b"RCPT TO:<bob@example.com>\r\nDATA\r\n")
    if protocol == "lmtp":
        envelope = envelope.replace(b"EHLO ", b"LHLO ")
    with running_gateway(cfg) as gw:
        replies = half_closed_session(gw.port, envelope + message_data("no quit"))
        assert reply_codes(replies) == ["220", "250", "250", "250", "250", "354",
                                        *(["250", "250"] if protocol == "lmtp" else ["250"])]
        assert subjects(sink) == ["no quit"]
        assert wait_sessions_closed(gw) == (0, 0)


@pytest.mark.parametrize("cut", [
    pytest.param(b"", id="data-without-dot"),
    pytest.param(b"\r\n.", id="dot-without-crlf"),
    pytest.param(b"\r\n.\r\nNOOP", id="partial-command-after-data"),
])
def test_input_cut_off_by_the_end_is_not_taken(pki: Pki, sink: Sink, tmp_path: Path,
                                               cut: bytes) -> None:
    """A DATA the end of input cuts off is not relayed (its client has no 250, and would
    send it again); a partial command line after a complete DATA gets no reply, the DATA
    before it its 250. Either way the session closes."""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        body = plain_message(sender=SENDER, to=ALICE, subject="cut")
        replies = half_closed_session(gw.port, ENVELOPE + body.rstrip(b"\r\n") + cut)
        complete = cut.startswith(b"\r\n.\r\n")
        assert reply_codes(replies) == ["220", *ENVELOPE_CODES, *(["250"] if complete else [])]
        assert subjects(sink) == (["cut"] if complete else [])
        assert wait_sessions_closed(gw) == (0, 0)


@pytest.mark.parametrize(("data", "codes"), [(b"NOOP\r\nQUIT\r\n", ["554", "503", "221"]),
                                           (b"", ["554"]), (b"QUI", ["554"])])
def test_refused_peer_that_half_closes_is_answered_then_closed(
        pki: Pki, sink: Sink, tmp_path: Path, data: bytes, codes: list[str]) -> None:
    """A peer outside allowed_clients: its 554, a reply to each command it completed, then
    the close, also when its input ends before a QUIT (the gateway waits for no more)."""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"),
                     extra='allowed_clients = ["127.0.0.2"]')
    with running_gateway(cfg) as gw:
        assert reply_codes(half_closed_session(gw.port, data)) == codes
        assert wait_sessions_closed(gw) == (0, 0)


def test_half_closed_client_that_never_reads_is_dropped(pki: Pki, sink: Sink,
                                                        tmp_path: Path) -> None:
    """Pipelined commands, SHUT_WR, and no reply ever read: the replies the gateway owes
    (26 MB for 300,000 EHLOs) cannot all be sent, and the session timeout drops the
    connection instead of holding it for ever to send them; its slot in max_connections
    is given back. (Whether the gateway has read up to the end of input by then depends
    on the kernel's buffers: either way it must let go.)"""
    cfg = pki.config(sink.port, extra="[timeouts]\nsmtp_session = 0.5",
                     quarantine=str(tmp_path / "q"))
    with unread_client(cfg) as (gw, s):
        s.settimeout(30)
        try:
            s.sendall(b"EHLO client.test\r\n" * 300_000)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already dropped (reset, broken pipe, or the gateway reads no more)
        assert wait_sessions_closed(gw) == (0, 0)


@contextmanager
def held_serve(pki: Pki, sink: Sink, tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A real `keypost gateway serve` whose scanner holds each message until the file
    `release` exists, after touching `started`: the end of input surely reaches the
    gateway while it is still handling the message. -> (port, started, release)."""
    started, release = tmp_path / "started", tmp_path / "release"
    script = tmp_path / "hold.py"
    script.write_text(
        "import os, sys, time\n"
        "sys.stdin.buffer.read()\n"
        "open(sys.argv[1], 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n")
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"), extra=(
        f'[scan]\ncommand = ["{sys.executable}", "{script}", "{started}", "{release}"]\n'
        "scan_plain = true\n"))
    with serving_gateway(cfg, tmp_path / "gateway.log") as gw:
        yield gw.port, started, release


def wait_file(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists()


def test_half_close_after_the_final_dot_gets_the_250(pki: Pki, sink: Sink,
                                                     tmp_path: Path) -> None:
    """The known case, against a real `serve`: replies read up to the 354, the message and
    its "." sent, SHUT_WR while the gateway handles the message. The 250 arrives after it
    was relayed, once; then the gateway closes."""
    with held_serve(pki, sink, tmp_path) as (port, started, release), \
            socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        replies = s.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        s.sendall(ENVELOPE)
        codes: list[str] = []
        while len(codes) < len(ENVELOPE_CODES):
            line = replies.readline()
            if line[3:4] != b"-":
                codes.append(line[:3].decode())
        assert codes == ENVELOPE_CODES
        s.sendall(message_data("after the dot"))
        s.shutdown(socket.SHUT_WR)
        wait_file(started)
        assert sink.handler.messages == []  # still held: the end of input came first
        release.touch()
        assert replies.readline().startswith(b"250 ")
        assert replies.read() == b""  # then the gateway closes
    assert subjects(sink) == ["after the dot"]


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat-openbsd is not installed")
def test_netcat_half_close_gets_every_reply(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    """A real peer: OpenBSD netcat's `nc -N` sends a whole pipelined session from its stdin,
    shuts the socket's sending side at the end of it and prints what comes back until the
    gateway closes."""
    with held_serve(pki, sink, tmp_path) as (port, started, release):
        # -w: an idle connection (a gateway that neither answers nor closes) ends nc
        nc = subprocess.Popen(["nc", "-N", "-w", "60", "127.0.0.1", str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert nc.stdin is not None and nc.stdout is not None
            nc.stdin.write(ENVELOPE + message_data("netcat") + b"QUIT\r\n")
            nc.stdin.close()
            wait_file(started)
            assert sink.handler.messages == []
            release.touch()
            out = nc.stdout.read()
            assert nc.wait(timeout=60) == 0
        finally:
            if nc.poll() is None:
                nc.kill()
                nc.wait()
        assert reply_codes(out) == ["220", *ENVELOPE_CODES, "250", "221"]
    assert subjects(sink) == ["netcat"]
