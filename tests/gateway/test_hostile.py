"""Hostile and broken SMTP clients against the gateway's real listener: floods of
recipients, clients that never read their replies. What each may cost is bounded and
the next client is served.

No assertion is on time: waits only bound a test that would otherwise hang."""

from __future__ import annotations

import base64
import resource
import smtplib
import socket
import time
from pathlib import Path

import pytest
from gw_directory import GATEWAY_ACCOUNT, GATEWAY_PW, DirectoryWorld
from gw_support import (
    Pki,
    Sink,
    plain_message,
    running_gateway,
    send,
    serving_gateway,
    unread_client,
)

from keypost.gateway.cli import describe
from keypost.gateway.config import GatewayConfig, parse_config
from keypost.gateway.errors import ConfigError
from keypost.gateway.serve import REFUSED_AT_ONCE

ALICE = "alice@example.com"


def test_recipients_beyond_max_recipients_get_452(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    """RFC 5321 4.5.3.1.10: 452 for a recipient beyond the limit; the sender sends the
    others later. aiosmtpd takes any number: 5,000 RCPT were one transaction, each one a
    lookup for the gateway (and its directory)."""
    cfg = pki.config(sink.port, extra="max_recipients = 100", quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw, smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.ehlo()
        s.mail("s@outside.test")
        codes = [s.rcpt(f"u{i}@example.com") for i in range(102)]
        assert [c for c, _ in codes[:100]] == [250] * 100
        assert [c for c, _ in codes[100:]] == [452, 452]
        assert codes[100][1].startswith(b"4.5.3 ")
        assert s.data(plain_message())[0] == 250
        s.rset()
        # the limit is per transaction
        s.mail("s@outside.test")
        assert s.rcpt(ALICE)[0] == 250
    [got] = sink.handler.messages
    assert got.rcpt_tos == [f"u{i}@example.com" for i in range(100)]


@pytest.mark.parametrize(("value", "ok"), [(100, True), (99, False), (True, False),
                                           (1.5, False), (1 << 20, True)])
def test_max_recipients_is_checked(tmp_path: Path, value: object, ok: bool) -> None:
    """At least 100 (RFC 5321 4.5.3.1.8: fewer is a violation)."""
    data = {"max_recipients": value}
    if ok:
        cfg = parse_config(data, tmp_path)
        assert cfg.max_recipients == value
        assert f"at most {value} recipients per message (452 beyond)" in " ".join(describe(cfg))
    else:
        with pytest.raises(ConfigError, match="max_recipients"):
            parse_config(data, tmp_path)
    assert GatewayConfig().max_recipients == 1000  # Postfix's smtpd_recipient_limit


def test_client_that_never_reads_is_dropped(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    """Commands pipelined by a client that reads none of the replies: aiosmtpd stops
    reading when its replies do not drain, and its session timeout closed the
    connection, but a close waits for the replies to be sent: the connection was held
    for ever. It is now dropped."""
    cfg = pki.config(sink.port, extra="[timeouts]\nsmtp_session = 0.5",
                     quarantine=str(tmp_path / "q"))
    with unread_client(cfg) as (gw, s):
        s.settimeout(1.0)
        dropped = False
        try:
            for _ in range(10_000):  # 60 MB at most; the kernel takes a few
                s.sendall(b"NOOP\r\n" * 1000)
        except TimeoutError:
            pass  # the gateway reads no more
        except (ConnectionResetError, BrokenPipeError):
            dropped = True  # already
        s.setblocking(False)
        deadline = time.monotonic() + 15
        while not dropped and time.monotonic() < deadline:
            try:
                s.send(b"NOOP\r\n")
            except BlockingIOError:
                time.sleep(0.05)  # still open, still not reading
            except (ConnectionResetError, BrokenPipeError):
                dropped = True
        s.close()
        assert dropped
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as other:
            assert other.noop()[0] == 250


@pytest.mark.parametrize("scheme", ["ldap", "http"])
def test_debug_log_holds_no_directory_password(pki: Pki, world: DirectoryWorld, sink: Sink,
                                               tmp_path: Path, scheme: str) -> None:
    """`keypost gateway serve` at log level debug logs in to the directory with its
    password (LDAP simple bind, HTTP Basic) for a sender's signing container; neither the
    password nor its base64 (what HTTP Basic sends) is in any log line, also with a client
    sending it in an AUTH the gateway refuses. (test_outbound checks the in-process
    loggers over LDAP; this is the real process and its log handler.)"""
    url = world.ldap_url if scheme == "ldap" else f"http://127.0.0.1:{world.http_port}"
    cfg = pki.config(sink.port, extra='log_level = "debug"', quarantine=str(tmp_path / "q"),
                     directory=world.gateway_directory_lines(url))
    log = tmp_path / "gateway.log"
    with serving_gateway(cfg, log) as gw:
        listen = gw.port
        message = plain_message(sender=ALICE, to="bob@partner.org", subject="[sign] hi")
        assert send(listen, ALICE, ["bob@partner.org"], message)[0] == 250
        with socket.create_connection(("127.0.0.1", listen), timeout=30) as s:
            s.sendall(b"EHLO x\r\nAUTH PLAIN " + base64.b64encode(
                b"\0gw\0" + GATEWAY_PW.encode()) + b"\r\nMAIL FROM:<" + b"x" * 2000
                + b">\r\n\0\xff\r\nQUIT\r\n")
            s.recv(65536)
    [signed] = sink.handler.messages  # with the signing container from the directory
    assert b"multipart/signed" in signed.data
    text = log.read_text(errors="replace")
    assert " level=DEBUG " in text
    basic = base64.b64encode(f"{GATEWAY_ACCOUNT}:{GATEWAY_PW}".encode()).decode()
    for secret in (GATEWAY_PW, basic, GATEWAY_PW.encode().hex()):
        assert secret not in text, secret


def _greeting(source: str, port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return s, s.makefile("rb").readline()


def test_connections_beyond_max_connections_get_421(pki: Pki, sink: Sink,
                                                     tmp_path: Path) -> None:
    """The gateway took every connection until the process ran out of file descriptors;
    then a client got no greeting at all (and the log a traceback per accept). Beyond
    max_connections a client is greeted with 421 (RFC 5321 3.8) and hung up on; peers
    outside allowed_clients have slots of their own (REFUSED_AT_ONCE), so they cannot
    crowd out the MTA, and beyond those they are hung up on after the 554 greeting
    instead of being waited for."""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"),
                     extra='max_connections = 2\nallowed_clients = ["127.0.0.2"]')
    with running_gateway(cfg) as gw:
        held = [_greeting("127.0.0.2", gw.port) for _ in range(2)]
        assert [g[:4] for _, g in held] == [b"220 "] * 2
        extra, greeting = _greeting("127.0.0.2", gw.port)
        assert greeting.startswith(b"421 4.3.2 ")
        assert extra.recv(100) == b""
        refused = [_greeting("127.0.0.1", gw.port) for _ in range(REFUSED_AT_ONCE)]
        assert {g[:10] for _, g in refused} == {b"554 5.7.1 "}
        one_more, greeting = _greeting("127.0.0.1", gw.port)
        assert greeting.startswith(b"554 5.7.1 ")
        with pytest.raises(OSError):  # hung up on at once: not waiting for a QUIT
            one_more.sendall(b"NOOP\r\n")
            assert one_more.recv(100) == b""
            one_more.sendall(b"NOOP\r\n")
        # the refused peers' slots did not take the MTA's
        held[0][0].close()
        deadline = time.monotonic() + 15
        while True:
            s, greeting = _greeting("127.0.0.2", gw.port)
            s.close()
            if greeting.startswith(b"220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert greeting.startswith(b"220 ")
        for s, _ in [*held, *refused, (extra, b""), (one_more, b"")]:
            s.close()
        # every slot is given back as its connection ends
        sessions = gw.gateway.sessions
        deadline = time.monotonic() + 15
        while (sessions.admitted or sessions.refused) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (sessions.admitted, sessions.refused) == (0, 0)


@pytest.mark.parametrize("slow", [b"NOOP", b"DATA"])
def test_slow_commands_and_data_are_cut_off(pki: Pki, sink: Sink, tmp_path: Path,
                                            slow: bytes) -> None:
    """A command line sent a byte at a time, or a DATA sent a line at a time, does not
    restart the session timeout (aiosmtpd restarts it on each complete command only):
    the connection closes and nothing is relayed. Held; kept as no other test dribbles."""
    cfg = pki.config(sink.port, extra="[timeouts]\nsmtp_session = 0.5",
                     quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw, socket.create_connection(("127.0.0.1", gw.port),
                                                                 timeout=30) as s:
        replies = s.makefile("rb")
        replies.readline()
        if slow == b"DATA":
            s.sendall(b"HELO x\r\nMAIL FROM:<s@outside.test>\r\nRCPT TO:<" + ALICE.encode()
                      + b">\r\nDATA\r\n")
            assert [replies.readline()[:4] for _ in range(4)] == [b"250 ", b"250 ", b"250 ",
                                                                 b"354 "]
            pieces = [b"X-Slow: %d\r\n" % i for i in range(300)]  # 30 s
        else:
            pieces = [bytes([b]) for b in b"NOOP " + b"x" * 300]
        with pytest.raises(OSError):  # reset, or broken pipe, once the gateway hung up
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.1)
    assert sink.handler.messages == []


def _few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


def test_max_connections_is_lowered_to_fit_the_open_files_limit(
        pki: Pki, sink: Sink, tmp_path: Path) -> None:
    """Under an open files limit of 512 (soft and hard: it cannot be raised) the default
    100 sessions do not fit (6 descriptors each at most): `serve` says so and takes 37,
    greeting the next client with 421 rather than running out of descriptors."""
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    log = tmp_path / "gateway.log"
    held: list[socket.socket] = []
    try:
        with serving_gateway(cfg, log, preexec_fn=_few_files) as gw:
            port = gw.port
            for _ in range(37):
                s, greeting = _greeting("127.0.0.1", port)
                held.append(s)
                assert greeting.startswith(b"220 ")
            extra, greeting = _greeting("127.0.0.1", port)
            held.append(extra)
            assert greeting.startswith(b"421 4.3.2 ")
    finally:
        for s in held:
            s.close()
    assert ("max_connections 100 does not fit the open files limit (512): at most 37 "
            "sessions at once") in log.read_text()


def test_a_message_of_the_advertised_size_is_taken_whatever_its_lines_begin_with(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    """RFC 1870 4: SIZE counts the message, not the dots that quote its lines in DATA.
    aiosmtpd counted them: a message of exactly max_message_size bytes whose lines began
    with a dot got 552 after MAIL FROM SIZE= had been accepted. One byte more is refused."""
    cfg = pki.config(sink.port, extra="max_message_size = 2000", quarantine=str(tmp_path / "q"))
    head = b"From: s@outside.test\r\nTo: alice@example.com\r\nSubject: dots\r\n\r\n"
    dotted = head + b".\r\n" * ((2000 - len(head)) // 3 - 1)
    exact = dotted + b"x" * (2000 - len(dotted) - 2) + b"\r\n"
    assert len(exact) == 2000
    with running_gateway(cfg) as gw, smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "2000"
        for msg, code in ((exact, 250), (exact[:-2] + b"x\r\n", None)):
            assert s.mail("s@outside.test", [f"SIZE={min(len(msg), 2000)}"])[0] == 250
            assert s.rcpt(ALICE)[0] == 250
            got, text = s.data(msg)
            if code is None:
                assert got in (552, 554), text
                s.rset()
            else:
                assert got == code, text
    [delivered] = sink.handler.messages
    assert delivered.data == exact


def test_the_gateways_own_work_on_a_message_is_not_the_clients_silence(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    """smtp_session bounds a client's silence, but aiosmtpd's timer ran on while the
    gateway handled the DATA it had received (scan, next hop): a slow scan or next hop
    closed the connection before the reply. Cut during the scan, nothing was relayed and
    each retry fared the same; cut during the relay, the copy went on and the sender,
    left without a 250, sent it again. Here the scan outlasts the session timeout."""
    scan = tmp_path / "slow-scan"
    scan.write_text("#!/bin/sh\ncat >/dev/null\nsleep 2\nexit 0\n")
    scan.chmod(0o755)
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"), extra=(
        "[timeouts]\nsmtp_session = 0.5\n"
        f'[scan]\ncommand = "{scan}"\nscan_plain = true'))
    with running_gateway(cfg) as gw, smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.ehlo()
        s.mail("s@outside.test")
        s.rcpt(ALICE)
        code, text = s.data(plain_message(body="scanned slowly"))
        assert code == 250, text
        assert s.noop()[0] == 250  # the session goes on: its timer started again
    [got] = sink.handler.messages
    assert b"scanned slowly" in got.data
