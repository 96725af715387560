"""allowed_clients at work: a real `keypost gateway serve`, real SMTP/LMTP clients whose
source address (127.0.0.1 or 127.0.0.2: all of 127/8 is the loopback interface) decides."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest
from gw_support import (
    Pki,
    Sink,
    plain_message,
    running_gateway,
    send,
    serving_gateway,
)

from keypost.gateway.clients import LOOPBACK_CLIENTS, admits, parse_allowed_clients

MARKER = "body-marker-4c1e0b"
REFUSED_SENDER = "refused.sender.9d2f@outside.test"
ALLOWED = ("127.0.0.2", 0)
OTHER = ("127.0.0.1", 0)


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_a_peer_outside_allowed_clients_gets_554_and_the_gateway_serves_the_others(
    pki: Pki, sink: Sink, tmp_path: Path, protocol: str
) -> None:
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"),
                     extra=f'protocol = "{protocol}"\nallowed_clients = ["127.0.0.2"]')
    client = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
    log = tmp_path / "gateway.log"
    with serving_gateway(cfg, log) as gw:
        port = gw.port
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client("127.0.0.1", port, source_address=OTHER, timeout=30)
        assert refused.value.smtp_code == 554
        assert refused.value.smtp_error.startswith(b"5.7.1 gw.example.com takes no mail from "
                                                   b"127.0.0.1")
        # Postfix says QUIT after a 554 greeting (RFC 5321 3.1); anything before it gets 503
        # and no transaction happens
        with socket.create_connection(("127.0.0.1", port), 30, source_address=OTHER) as s:
            replies = s.makefile("rb")
            assert replies.readline().startswith(b"554 5.7.1 ")
            s.sendall(b"EHLO mta.test\r\nMAIL FROM:<" + REFUSED_SENDER.encode() + b">\r\n"
                      b"QUIT\r\n")
            assert [replies.readline()[:4] for _ in range(3)] == [b"503 ", b"503 ", b"221 "]
            assert replies.readline() == b""  # closed
        with client("127.0.0.1", port, source_address=ALLOWED, timeout=60) as s:
            s.ehlo()
            s.sendmail("s@outside.test", ["alice@example.com"], plain_message(body=MARKER))
    [got] = sink.handler.messages
    assert MARKER.encode() in got.data
    text = log.read_text(errors="replace")
    refusals = [line for line in text.splitlines() if "allowed_clients" in line]
    assert len(refusals) == 2, text
    assert all("refused a connection from 127.0.0.1" in line for line in refusals)
    assert REFUSED_SENDER not in text and MARKER not in text


def test_without_allowed_clients_every_loopback_peer_is_served(pki: Pki, sink: Sink) -> None:
    with running_gateway(pki.config(sink.port)) as gw:  # smtp_factory, as serve builds it
        with smtplib.SMTP("127.0.0.1", gw.port, source_address=ALLOWED, timeout=60) as s:
            assert s.noop()[0] == 250
        assert send(gw.port, "s@outside.test", ["alice@example.com"], plain_message())[0] == 250


def test_peers_are_matched_as_a_dual_stack_socket_names_them() -> None:
    listed = parse_allowed_clients(["192.0.2.10", "2001:db8::/64", "fe80::/10"])
    assert admits(listed, "::ffff:192.0.2.10")  # an IPv4 client of a [::] listener
    assert admits(listed, "2001:db8::25") and admits(listed, "fe80::1%eth0")
    assert not admits(listed, "192.0.2.11") and not admits(listed, "::ffff:127.0.0.1")
    assert not admits(listed, None) and not admits(listed, "")
    assert admits(LOOPBACK_CLIENTS, "127.0.0.2") and admits(LOOPBACK_CLIENTS, "::1")
    assert not admits(LOOPBACK_CLIENTS, "192.0.2.10")
