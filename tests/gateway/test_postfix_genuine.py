"""policy.inbound_genuine behind a real Postfix (the README's after-queue set-up, as in
test_postfix): mail from outside enters Postfix's smtpd, Postfix hands it to `keypost
gateway serve` (its content filter), the gateway re-injects into Postfix, and Postfix
delivers to the mailbox (an aiosmtpd sink, its relayhost). Every peer real: Postfix,
`keypost directory serve` holding gina@example.com's genuine certificate, the gateway with
a `[scan] command`, `openssl cms -encrypt` for the sender and `openssl cms -decrypt` with
gina's own key. One Postfix for the module, in front of five gateways (keep and reencrypt,
each once with the session's directory and once with a directory of this module's that
the tests stop and start again, and keep over LMTP with the latter), each behind an smtpd
of its own."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from gw_directory import DirectoryWorld, start_directory
from gw_postfix import Postfix, available
from gw_support import Pki, Sink, body_of, running_sink, send
from port_util import held
from test_inbound_genuine import (
    DAVE,
    GINA,
    SENDER,
    certificates,
    encrypt,
    gateway_config,
    gina_opens,
    mail,
    text,
)
from test_inbound_reencrypt import entity, gina_certificate
from test_postfix import postfix_in_front

from keypost.core import cms, mime, smime
from keypost.gateway.pipeline import DECRYPTED_HEADER, KEPT_HEADER

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="postfix is not installed"),
]


@dataclass
class Behind:
    """One gateway behind the module's Postfix: where mail for it enters Postfix, the
    folder its scanner writes what it was shown to, the directory it asks."""

    port: int
    folder: Path
    world: DirectoryWorld

    def scanned(self) -> bytes:
        return (self.folder / "scanned").read_bytes()


@dataclass
class Mta:
    postfix: Postfix
    sink: Sink
    gateways: dict[str, Behind]
    stoppable: DirectoryWorld  # the directory the "-down" gateways ask


# name -> (policy, whether it asks the stoppable directory, protocol)
GATEWAYS = {"keep": ("keep", False, "smtp"), "reencrypt": ("reencrypt", False, "smtp"),
            "keep-down": ("keep", True, "smtp"), "reencrypt-down": ("reencrypt", True, "smtp"),
            "keep-lmtp-down": ("keep", True, "lmtp")}


@pytest.fixture(scope="module")
def mta(pki: Pki, world: DirectoryWorld, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[Mta]:
    stoppable = start_directory(tmp_path_factory.mktemp("stoppable"), pki)
    try:
        worlds = {name: stoppable if down else world for name, (_, down, _) in GATEWAYS.items()}
        folders = {name: tmp_path_factory.mktemp(name) for name in GATEWAYS}

        def configs(reinject: int) -> list[Path]:
            return [gateway_config(pki, worlds[name], reinject, folders[name], policy,
                                   protocol=protocol)
                    for name, (policy, _, protocol) in GATEWAYS.items()]

        with running_sink() as sink, postfix_in_front(sink, configs) as (postfix, _):
            yield Mta(postfix, sink, {
                name: Behind(port, folders[name], worlds[name])
                for name, port in zip(GATEWAYS, postfix.ports, strict=True)}, stoppable)
    finally:
        stoppable.stop()


def submit(behind: Behind, message: bytes) -> str:
    """`message` from SENDER to gina and dave into Postfix's smtpd for `behind`'s gateway.
    -> Postfix's queue id."""
    code, reply = send(behind.port, SENDER, [GINA, DAVE], message)
    assert code == 250, reply
    found = re.search(r"queued as ([0-9A-Za-z]+)", reply)
    assert found, reply
    return found.group(1)


def delivered(mta: Mta, message_id: str, timeout: float = 60) -> dict[str, bytes]:
    """What each recipient's mailbox got of the message `message_id` (its header, or the
    headers a bounce returns, name it), once two recipients got it: each recipient once."""
    mark = f"<{message_id}>".encode()
    handler = mta.sink.handler
    with handler.arrived:
        handler.arrived.wait_for(
            lambda: sum(len(m.rcpt_tos) for m in handler.messages if mark in m.data) >= 2,
            timeout)
        got = [(r, m.data) for m in handler.messages if mark in m.data for r in m.rcpt_tos]
    assert sorted(r for r, _ in got) == [DAVE, GINA], (got, mta.postfix.log())
    return dict(got)


def enveloped_for_gina(behind: Behind, tmp: Path, secret: str, message_id: str,
                       ) -> tuple[bytes, bytes]:
    """(the entity, the message SENDER mails): the entity encrypted for gina's gateway
    container and her genuine certificate, as keypost's client (and anyone using the
    directory) does."""
    ours, genuine = certificates(behind.world, GINA)
    inner = text(secret)
    return inner, mail(encrypt(tmp, inner, [ours, genuine]), forged=False,
                       message_id=message_id)


def ciphertext(message: bytes) -> bytes:
    """The encrypted content of a base64 enveloped message."""
    return bytes(cms.parse_enveloped(mime.b64_decode(body_of(message))).ciphertext)


def fields(message: bytes, prefix: bytes) -> list[bytes]:
    return [line for line in message.split(b"\r\n\r\n")[0].split(b"\r\n")
            if line.startswith(prefix)]


def check_kept(behind: Behind, tmp: Path, got: dict[str, bytes], sent: bytes, inner: bytes,
               secret: str) -> None:
    """gina: the sender's ciphertext as it came, naming her genuine certificate alone (the
    gateway's container taken out), marked kept after the scan, and her own key opens it
    to the sender's entity; dave: the decrypted message, as under clear."""
    kept, clear = got[GINA], got[DAVE]
    assert ciphertext(kept) == ciphertext(sent)
    cert = gina_certificate(behind.world)
    assert smime.recipient_identifiers(kept) == (
        [smime.RecipientId(cert.issuer, cert.serial_number)], [])
    assert secret.encode() not in kept
    assert gina_opens(behind.world, tmp, kept) == inner
    [mark] = fields(kept, KEPT_HEADER.encode())
    assert mark.startswith(f"{KEPT_HEADER}: key=current ".encode()), mark
    assert mark.endswith(b"; scanned"), mark
    assert not fields(kept, DECRYPTED_HEADER.encode())
    check_clear(behind, clear, secret)


def check_reencrypted(behind: Behind, tmp: Path, got: dict[str, bytes], sent: bytes,
                      secret: str) -> None:
    """gina: a new envelope to her genuine certificate alone, which her key opens to the
    entity the scanner saw, nothing of the sender's ciphertext in it; dave: the decrypted
    message, as under clear."""
    hers, clear = got[GINA], got[DAVE]
    assert secret.encode() not in hers and b"smime-type=enveloped-data" in hers
    cert = gina_certificate(behind.world)
    assert smime.recipient_identifiers(hers) == (
        [smime.RecipientId(cert.issuer, cert.serial_number)], [])
    assert gina_opens(behind.world, tmp, hers) == entity(behind.scanned())
    assert secret.encode() in behind.scanned()
    sender_lines = set(body_of(sent).split(b"\r\n")) - {b""}
    assert sender_lines.isdisjoint(body_of(hers).split(b"\r\n"))
    assert len(fields(hers, DECRYPTED_HEADER.encode())) == 1
    assert not fields(hers, KEPT_HEADER.encode())
    check_clear(behind, clear, secret)


def check_clear(behind: Behind, clear: bytes, secret: str) -> None:
    """The recipient without a genuine certificate: the message the scanner saw, decrypted."""
    scanned = behind.scanned()
    assert secret.encode() in scanned and b"pkcs7" not in scanned.lower()
    assert secret.encode() in clear and b"pkcs7" not in clear.lower()
    assert clear.endswith(scanned.split(b"\r\n\r\n", 1)[1])
    [mark] = fields(clear, DECRYPTED_HEADER.encode())
    assert mark.startswith(f"{DECRYPTED_HEADER}: key=current".encode()), mark
    assert not fields(clear, KEPT_HEADER.encode())


def test_keep_through_postfix(mta: Mta, tmp_path: Path) -> None:
    behind = mta.gateways["keep"]
    secret = "kept figures through postfix"
    inner, sent = enveloped_for_gina(behind, tmp_path, secret, "keep@outside.test")
    submit(behind, sent)
    check_kept(behind, tmp_path, delivered(mta, "keep@outside.test"), sent, inner, secret)


def test_reencrypt_through_postfix(mta: Mta, tmp_path: Path) -> None:
    behind = mta.gateways["reencrypt"]
    secret = "re-encrypted figures through postfix"
    _, sent = enveloped_for_gina(behind, tmp_path, secret, "reencrypt@outside.test")
    submit(behind, sent)
    check_reencrypted(behind, tmp_path, delivered(mta, "reencrypt@outside.test"), sent, secret)


@contextmanager
def directory_down(world: DirectoryWorld) -> Iterator[None]:
    """The directory stopped, its ports refusing (and handed to no one else), for the
    block; then started again on the same ports."""
    world.stop()
    try:
        with held(*world.ports.values()):
            yield
    finally:
        world.restart()


def logged(postfix: Postfix, done: Callable[[str], bool], timeout: float = 60) -> str:
    """Postfix's log, once `done` holds for it (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while not done(log := postfix.log()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return log


def attempts(postfix: Postfix, queue_id: str, count: int = 1, status: str = "") -> list[str]:
    """Postfix's log lines of its tries to deliver `queue_id` to the gateway (`to=<...>,
    ... status=...`), once there are `count` for each of gina and dave whose status begins
    with `status` (or a minute passed)."""
    def lines(log: str) -> list[str]:
        return [line for line in log.splitlines()
                if f" {queue_id}: to=<" in line and " status=" in line]

    def done(log: str) -> bool:
        return all(sum(f"to=<{r}>" in line and f" status={status}" in line
                       for line in lines(log)) >= count for r in (GINA, DAVE))

    return lines(logged(postfix, done))


@pytest.mark.parametrize("gateway", ["keep-down", "reencrypt-down", "keep-lmtp-down"])
def test_directory_down_postfix_defers_then_delivers(
    mta: Mta, tmp_path: Path, gateway: str,
) -> None:
    """The gateway answers 451 while its directory is stopped (over LMTP once for each
    recipient): Postfix keeps the message in its queue (deferred, a retry deferred again),
    bounces nothing and delivers nothing, clear text least of all; once the directory is
    back, a flush delivers it as when the directory was up. (A gateway of its own for each
    case: it has never asked the directory, whose answers it would cache.)"""
    behind = mta.gateways[gateway]
    policy, _, protocol = GATEWAYS[gateway]
    secret, message_id = f"deferred {gateway} figures", f"{gateway}@outside.test"
    inner, sent = enveloped_for_gina(behind, tmp_path, secret, message_id)
    with directory_down(mta.stoppable):
        queue_id = submit(behind, sent)
        for count in (1, 2):  # the first try, and a retry (flush) while still down
            if count == 2:
                mta.postfix.flush()
            lines = attempts(mta.postfix, queue_id, count)
            assert len(lines) >= 2 * count, mta.postfix.log()
            assert all("status=deferred" in line and "said: 451 4.4.3 directory unreachable"
                       in line for line in lines), lines
            assert all((" postfix/lmtp[" in line) == (protocol == "lmtp") for line in lines)
            queue = mta.postfix.queue()
            assert queue_id in queue and GINA in queue and DAVE in queue, queue
            assert "said: 451 4.4.3 directory unreachable" in queue, queue
        assert not [m for m in mta.sink.handler.messages if f"<{message_id}>".encode() in m.data]
    mta.postfix.flush()
    got = delivered(mta, message_id)
    tries = attempts(mta.postfix, queue_id, 1, "sent")
    assert [line for line in tries if "status=sent" in line] == tries[-2:], tries
    log = logged(mta.postfix, lambda log: f" {queue_id}: removed" in log)
    assert f" {queue_id}: removed" in log and queue_id not in mta.postfix.queue(), log
    assert "status=bounced" not in log
    if policy == "keep":
        check_kept(behind, tmp_path, got, sent, inner, secret)
    else:
        check_reencrypted(behind, tmp_path, got, sent, secret)
