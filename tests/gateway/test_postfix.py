"""A real Postfix with the gateway as its content filter (after-queue)."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from cryptography import x509
from gw_directory import DirectoryWorld
from gw_postfix import Postfix, available
from gw_support import Pki, Sink, free_port, wait_port
from proc_util import start_gateway_serve, stop

from keypost.core import smime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="postfix is not installed"),
]

PLAIN = (
    b"From: sender@outside.test\r\nTo: alice@example.com\r\nSubject: via postfix\r\n"
    b"Message-ID: <pf-1@outside.test>\r\n\r\nplain body through postfix\r\n"
)


class GatewayProcess:
    """`keypost gateway serve` as a child process (so it can be stopped and restarted). It
    first listens on a port the kernel picks; a restart takes that port again (Postfix's
    content_filter names it: there a fixed port is the point)."""

    def __init__(self, config: Path) -> None:
        self.config, self.port = config, 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def transport(self) -> str:
        """Postfix's transport to the gateway, as the README sets it up: the dedicated smtp
        client (`keypost` in master.cf) for `protocol = "smtp"`, else `lmtp`."""
        protocol = tomllib.loads(self.config.read_text()).get("protocol", "smtp")
        return "keypost" if protocol == "smtp" else str(protocol)

    def start(self) -> None:
        if self.port:
            text = self.config.read_text()
            self.config.write_text(text.replace('listen = "127.0.0.1:0"',
                                                f'listen = "127.0.0.1:{self.port}"'))
        self.proc, self.port = start_gateway_serve(self.config, self.config.with_suffix(".log"))

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=30)
            self.proc = None


Mta = tuple[Postfix, GatewayProcess, Sink]


@contextmanager
def postfix_in_front(sink: Sink, configs: Callable[[int], Sequence[Path]],
                     reinject_options: tuple[str, ...] = (),
                     main_extra: str = "") -> Iterator[tuple[Postfix, list[GatewayProcess]]]:
    """A real Postfix with a `keypost serve` for each of `configs(reinject port)` (their
    next_hop) as content filter, over the SMTP or LMTP their `protocol` says: the first
    behind `postfix.port`, each other behind an smtpd of its own, `postfix.ports[i]`. All
    stopped at the end."""
    reinject = free_port()  # Postfix's ports: it cannot say which one it got for port 0
    gateways = [GatewayProcess(cfg) for cfg in configs(reinject)]
    # Postfix opens its data directory as the postfix user, who cannot enter pytest's
    # private (0700) tmp_path: use a traversable temporary directory of its own.
    root = Path(tempfile.mkdtemp(prefix="keypost-postfix-"))
    root.chmod(0o755)
    try:
        # first: Postfix's content_filter names the port each got (at once: each start
        # is mostly Python importing, and the machine has more than one core)
        with ThreadPoolExecutor(len(gateways)) as starting:
            list(starting.map(GatewayProcess.start, gateways))
        entries = {free_port(): (gateway.transport, gateway.port) for gateway in gateways[1:]}
        postfix = Postfix(root, free_port(), reinject, gateways[0].port, sink.port,
                          transport=gateways[0].transport, reinject_options=reinject_options,
                          main_extra=main_extra, entries=entries)
        postfix.start()
        try:
            for port in postfix.ports:
                wait_port(port)
            yield postfix, gateways
        finally:
            postfix.stop()
    finally:
        for gateway in gateways:
            gateway.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_mta(pki: Pki, sink: Sink, protocol: str = "smtp",
                reinject_options: tuple[str, ...] = (), main_extra: str = "",
                gateway_extra: str = "", directory: str = "") -> Iterator[Mta]:
    def config(reinject: int) -> list[Path]:
        return [pki.config(next_hop=reinject, directory=directory,
                           extra=f'protocol = "{protocol}"\n{gateway_extra}')]

    with postfix_in_front(sink, config, reinject_options, main_extra) as (pf, [gw]):
        yield pf, gw, sink


@pytest.fixture
def mta(pki: Pki, sink: Sink) -> Iterator[Mta]:
    with running_mta(pki, sink) as m:
        yield m


def submit(postfix: Postfix, message: bytes, rcpt: str = "alice@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
        s.sendmail("sender@outside.test", [rcpt], message)


def encrypted(pki: Pki) -> bytes:
    return smime.encrypt_message(PLAIN, [pki.container(pki.current)])


def test_encrypted_mail_comes_out_of_postfix_decrypted(
    mta: tuple[Postfix, GatewayProcess, Sink], pki: Pki,
) -> None:
    postfix, _, sink = mta
    submit(postfix, encrypted(pki))
    submit(postfix, PLAIN.replace(b"plain body", b"second, plain body"))
    got = sink.handler.wait(2)
    assert len(got) == 2, postfix.log()
    by_body = {b"second" in m.data: m for m in got}
    clear = by_body[False]
    assert clear.rcpt_tos == ["alice@example.com"]
    assert b"plain body through postfix" in clear.data
    assert b"X-Keypost-Decrypted: key=current" in clear.data
    assert not smime.is_encrypted(clear.data)
    assert b"X-Keypost-Decrypted" not in by_body[True].data  # plain mail passes unchanged


def test_postfix_keeps_mail_while_the_gateway_is_down(
    mta: tuple[Postfix, GatewayProcess, Sink], pki: Pki,
) -> None:
    postfix, gateway, sink = mta
    gateway.stop()
    submit(postfix, encrypted(pki))
    time.sleep(3)
    assert sink.handler.messages == []
    assert "alice@example.com" in postfix.queue()
    gateway.start()
    postfix.flush()
    got = sink.handler.wait(1, timeout=60)
    assert len(got) == 1, postfix.log()
    assert b"plain body through postfix" in got[0].data
    assert b"X-Keypost-Decrypted: key=current" in got[0].data


def test_lmtp_content_filter_bounces_only_the_refused_recipient(pki: Pki, sink: Sink) -> None:
    """With `content_filter = lmtp:...` Postfix gets one reply per recipient: the colleague
    gets the decrypted copy, and Postfix itself bounces the outsider (no certificate)."""
    alice = "alice@example.com"
    msg = smime.encrypt_message(
        PLAIN.replace(b"From: sender@outside.test", b"From: " + alice.encode()),
        [pki.container(pki.current, "bob@example.com")],
    )
    with running_mta(pki, sink, "lmtp") as (postfix, _, _):
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
            s.sendmail(alice, ["bob@example.com", "x@outside.test"], msg)
        got = sink.handler.wait(2, timeout=60)
        assert len(got) == 2, postfix.log()
    by_rcpt = {tuple(m.rcpt_tos): m for m in got}
    assert b"X-Keypost-Decrypted: key=current" in by_rcpt[("bob@example.com",)].data
    bounce = by_rcpt[(alice,)]
    assert bounce.mail_from in ("", "<>")
    assert b"x@outside.test" in bounce.data and b"554 5.7.1" in bounce.data
    assert ("x@outside.test",) not in by_rcpt


def test_next_hop_enhanced_status_code_reaches_postfix(pki: Pki, sink: Sink) -> None:
    """The re-injection smtpd refuses the size (552 5.3.4): the gateway answers Postfix with
    that code, not 5.0.0, so the bounce says why."""
    big = PLAIN.replace(b"plain body", b"x" * 20000 + b"\r\nplain body")
    with running_mta(pki, sink, reinject_options=("message_size_limit=8000",)) as (pf, _, _):
        submit(pf, big)
        deadline = time.monotonic() + 60
        while "status=bounced" not in pf.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = pf.log()
    [line] = [x for x in log.splitlines() if "status=bounced" in x and "alice@example.com" in x]
    assert "dsn=5.3.4" in line, log
    assert "552 5.3.4 next hop refused: Message size exceeds fixed limit" in line, log


@pytest.mark.parametrize("mappings_before_filter", [True, False])
def test_recipient_binding_needs_the_alias_unexpanded_at_the_gateway(
    pki: Pki, world: DirectoryWorld, sink: Sink, mappings_before_filter: bool,
) -> None:
    """The sender encrypts for team@example.com, a virtual alias of bob. By default Postfix
    expands it before the content filter: under recipient_binding = "enforce" the gateway
    sees bob, whom no container of the message names, and refuses (Postfix bounces). With
    `receive_override_options = no_address_mappings` (the README's advice) it sees team@,
    delivers, and the re-injection smtpd expands the alias after it."""
    team = "team@example.com"
    found = requests.get(f"http://127.0.0.1:{world.http_port}/v1/containers",
                         params={"address": team}, timeout=30).json()
    [pem] = [c["pem"] for c in found["results"][0]["containers"]]
    msg = smime.encrypt_message(PLAIN.replace(b"alice@example.com", team.encode()),
                                [x509.load_pem_x509_certificate(pem.encode())])
    main_extra = f"virtual_alias_maps = inline:{{ {team}=bob@example.com }}\n" + (
        "" if mappings_before_filter else "receive_override_options = no_address_mappings\n")
    directory = world.gateway_directory_lines(f"http://127.0.0.1:{world.http_port}")
    with running_mta(pki, sink, main_extra=main_extra, directory=directory,
                     gateway_extra='[policy]\nrecipient_binding = "enforce"\n') as (pf, _, _):
        submit(pf, msg, rcpt=team)
        [got] = sink.handler.wait(1, timeout=60) or [None]
        assert got is not None, pf.log()
    if mappings_before_filter:
        assert got.mail_from in ("", "<>") and got.rcpt_tos == ["sender@outside.test"]
        assert b"5.7.1" in got.data and b"encrypted for another mailbox" in got.data
        assert b"plain body through postfix" not in got.data
    else:
        assert got.rcpt_tos == ["bob@example.com"]
        assert b"plain body through postfix" in got.data
        assert b"X-Keypost-Decrypted: key=current" in got.data
