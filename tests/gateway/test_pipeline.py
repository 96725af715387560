"""The pipeline without sockets: envelope + bytes in, per-recipient outcomes out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from gw_support import Pki, Rolling, plain_message
from pki_util import email_cert, make_ca, rsa_key

from keypost.core import smime
from keypost.core.address import Address, parse_address
from keypost.core.bindings import Binding
from keypost.gateway.config import DomainConfig, InboundGenuine, PolicyConfig
from keypost.gateway.directory import CachingDirectory, Certificates
from keypost.gateway.errors import DirectoryUnavailable
from keypost.gateway.keys import load_domain_keys
from keypost.gateway.pipeline import KEPT_HEADER, Action, Pipeline
from keypost.gateway.scan import NullScanner


class FixedDirectory:
    """Answers from a table; `down` makes every lookup fail like an unreachable directory."""

    def __init__(self, table: dict[str, Certificates], down: bool = False) -> None:
        self.table, self.down = table, down
        self.asked: list[str] = []

    def encryption_certificates(self, address: Address) -> Certificates:
        self.asked.append(str(address))
        if self.down:
            raise DirectoryUnavailable("directory unreachable")
        return self.table.get(str(address), Certificates())

    def signing_containers(self, address: Address) -> tuple[x509.Certificate, ...]:
        if self.down:
            raise DirectoryUnavailable("directory unreachable")
        return ()


def pipeline(pki: Pki, directory: FixedDirectory) -> Pipeline:
    keys = load_domain_keys(DomainConfig(
        "example.com", (pki.path("enc-current.key"), pki.path("enc-retired.key"))))
    return Pipeline({"example.com": keys}, PolicyConfig(), NullScanner(), directory,
                    [pki.ca.certificate.subject])


def test_direction_comes_from_the_envelope(pki: Pki) -> None:
    d = FixedDirectory({})
    p = pipeline(pki, d)
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current)])
    # outside -> served: inbound, decrypted
    [o] = p.process("x@outside.test", ["alice@example.com"], enc)
    assert o.action is Action.RELAY and b"X-Keypost-Decrypted" in o.message
    # served -> served (a colleague): inbound too, no directory lookup
    [o] = p.process("bob@example.com", ["alice@example.com"], enc)
    assert o.action is Action.RELAY and b"X-Keypost-Decrypted" in o.message
    assert d.asked == []
    # outside -> outside: not ours to open
    [o] = p.process("x@outside.test", ["y@else.test"], enc)
    assert o.message == enc
    # served -> outside: outbound; the directory is asked for the recipient
    [o] = p.process("bob@example.com", ["y@else.test"], enc)
    assert o.action is Action.REJECT and d.asked == ["y@else.test"]


def test_outbound_groups_recipients_and_forwards_whole_path_originals(pki: Pki) -> None:
    theirs = pki.container(pki.stranger, "y@else.test")
    d = FixedDirectory({"y@else.test": Certificates(genuine=(theirs,)),
                        "z@else.test": Certificates(genuine=(theirs,))})
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current), theirs])
    outs = pipeline(pki, d).process("bob@example.com", ["y@else.test", "z@else.test"], enc)
    assert len(outs) == 1  # the same original for both: one relay
    assert outs[0].recipients == ("y@else.test", "z@else.test")
    # less our own RecipientInfo: it names their certificate alone
    assert [(r.issuer, r.serial) for r in smime.recipient_ids(outs[0].message)] == [
        (theirs.issuer, theirs.serial_number)]
    assert smime.Decryptor([pki.stranger]).decrypt_message(outs[0].message).message == (
        smime.Decryptor([pki.current]).decrypt_message(enc).message)


def test_directory_down_is_a_temporary_failure_for_outbound_only(pki: Pki) -> None:
    p = pipeline(pki, FixedDirectory({}, down=True))
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current)])
    with pytest.raises(DirectoryUnavailable):
        p.process("bob@example.com", ["y@else.test"], enc)
    [o] = p.process("x@outside.test", ["alice@example.com"], enc)
    assert o.action is Action.RELAY


def test_oversized_is_refused_before_any_work(pki: Pki) -> None:
    p = pipeline(pki, FixedDirectory({}))
    p.max_size = 100
    [o] = p.process("x@outside.test", ["alice@example.com"], b"x" * 101)
    assert o.action is Action.REJECT and o.reply.startswith("554 5.3.4")


def test_a_forged_decryption_claim_is_removed(pki: Pki) -> None:
    forged = b"X-Keypost-Decrypted: key=current, alg=aes256-cbc\r\n" + plain_message()
    p = pipeline(pki, FixedDirectory({}))
    [o] = p.process("x@outside.test", ["alice@example.com"], forged)
    assert b"X-Keypost-Decrypted" not in o.message and b"secret quarterly" in o.message
    enc = smime.encrypt_message(forged, [pki.container(pki.current)])
    [o] = p.process("x@outside.test", ["alice@example.com"], enc)
    assert o.message.count(b"X-Keypost-Decrypted") == 1
    # a claim inside the encrypted entity ends up in the decrypted header block too
    inner = smime.encrypt_entity(b"X-Keypost-Decrypted: key=retired-1, alg=aes256-cbc\r\n"
                                 b"Content-Type: text/plain\r\n\r\nhi\r\n",
                                 [pki.container(pki.current)])
    [o] = p.process("x@outside.test", ["alice@example.com"],
                    b"From: x@outside.test\r\nMIME-Version: 1.0\r\n" + inner)
    assert o.message.count(b"X-Keypost-Decrypted") == 1 and b"retired-1" not in o.message


def _dated(when: dt.datetime) -> bytes:
    return plain_message("alice@example.com", "bob@else.test", date=when)


def test_mail_dated_before_a_new_signing_container_is_signed_with_the_previous(
    pki: Pki,
) -> None:
    """Across a signing-container change (half-life), mail whose Date lies between the two
    containers' notBefore (queued meanwhile, or a client clock a few minutes slow) is signed
    with the previous container, which covers it; mail no container covers is refused."""
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    d = CachingDirectory(Rolling(lambda: [pki.signing_container(clock[0])]),
                         [pki.ca.certificate], clock=lambda: clock[0])
    keys = load_domain_keys(DomainConfig(
        "example.com", (pki.path("enc-current.key"),), signing_key=pki.path("sign.key")))
    p = Pipeline({"example.com": keys}, PolicyConfig(sign_all_outbound=True), NullScanner(), d,
                 [pki.ca.certificate.subject])
    [o] = p.process("alice@example.com", ["bob@else.test"], _dated(t0))
    assert o.action is Action.RELAY
    [first] = d.signing_containers(parse_address("alice@example.com"))
    clock[0] = t0 + dt.timedelta(days=15, minutes=1)  # half-life passed: a new container
    queued = clock[0] - dt.timedelta(hours=2)  # written before the change, sent after it
    [o] = p.process("alice@example.com", ["bob@else.test"], _dated(queued))
    newest, previous = d.signing_containers(parse_address("alice@example.com"))
    assert previous == first and newest.not_valid_before_utc > queued
    assert o.action is Action.RELAY, o.reply
    result = smime.verify_signed(o.message, [pki.ca.certificate], now=clock[0])
    assert result.ok, result.reasons
    assert result.signer == first and result.signing_time == queued
    # a Date both cover: the newest signs
    [o] = p.process("alice@example.com", ["bob@else.test"], _dated(clock[0]))
    assert smime.verify_signed(o.message, [pki.ca.certificate], now=clock[0]).signer == newest
    # a Date none covers is refused as before
    [o] = p.process("alice@example.com", ["bob@else.test"],
                    _dated(first.not_valid_before_utc - dt.timedelta(minutes=1)))
    assert o.action is Action.REJECT
    assert o.reply.startswith("554 5.6.0 message cannot be signed: the signing container is valid")


def test_reencrypt_treats_a_certificate_it_cannot_encrypt_to_as_none(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """inbound_genuine = "reencrypt": a genuine certificate the engine refuses (RSA-1024)
    counts as no certificate, as one that fails verification does: the recipient gets the
    decrypted message, and the log says why. The other recipient's copy is encrypted to
    theirs, its Bcc field dropped (it must never travel, as outbound)."""
    ca = make_ca("Genuine CA")
    _, weak = email_cert(ca, "alice@example.com", rsa_key(1024))
    _, good = email_cert(ca, "bob@example.com")
    # bob's answer holds a gateway container too (as for a gateway account that does not
    # stand for his domain): his copy is encrypted to his genuine certificate alone
    d = FixedDirectory({"alice@example.com": Certificates(genuine=(weak,)),
                        "bob@example.com": Certificates(
                            gateways=(pki.container(pki.current),), genuine=(good,))})
    p = pipeline(pki, d)
    p.policy = PolicyConfig(inbound_genuine=InboundGenuine.REENCRYPT)
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current)])
    # encrypt_message drops Bcc: put one back outside, as a sender's MTA may leave it
    enc = b"Bcc: carol@example.com\r\n" + enc
    with caplog.at_level("WARNING", logger="keypost.gateway.pipeline"):
        outs = p.process("x@outside.test", ["alice@example.com", "bob@example.com"], enc)
    by = {o.recipients: o for o in outs}
    assert b"secret quarterly" in by[("alice@example.com",)].message
    assert "genuine certificate(s) of alice@example.com unusable" in caplog.text
    assert "secret" not in caplog.text
    sealed = by[("bob@example.com",)].message
    assert smime.recipient_ids(sealed) == [smime.RecipientId(good.issuer, good.serial_number)]
    assert b"Bcc" not in sealed and b"Bcc" in by[("alice@example.com",)].message


class FixedBindings:
    """recipient_binding's directory question: the addresses in `bound` are bound to every
    serial, all others not."""

    def __init__(self, bound: set[str]) -> None:
        self.bound = bound

    def bindings(self, serials: Sequence[int],
                 addresses: Sequence[Address]) -> list[list[Binding]]:
        return [[Binding.BOUND if str(a) in self.bound else Binding.NOT_BOUND
                 for a in addresses] for _ in serials]


def test_keep_goes_on_for_the_admitted_when_binding_refuses_another(pki: Pki) -> None:
    """inbound_genuine = "keep" with recipient_binding: the container was issued for alice,
    so bob is refused; alice, whose genuine certificate the envelope names too, still gets
    the message as it arrived."""
    ca = make_ca("Genuine CA")
    _, genuine = email_cert(ca, "alice@example.com")
    d = FixedDirectory({"alice@example.com": Certificates(genuine=(genuine,))})
    p = pipeline(pki, d)
    p.policy = PolicyConfig(inbound_genuine=InboundGenuine.KEEP)
    p.bindings = FixedBindings({"alice@example.com"})
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current), genuine])
    outs = p.process("x@outside.test", ["alice@example.com", "bob@example.com"], enc)
    by = {o.recipients: o for o in outs}
    assert by[("bob@example.com",)].action is Action.REJECT
    kept = by[("alice@example.com",)]
    assert kept.action is Action.RELAY and KEPT_HEADER.encode() in kept.message
    assert smime.is_encrypted(kept.message) and d.asked == ["alice@example.com"]


def test_keep_gives_each_kept_recipient_a_copy_naming_their_own_certificates(pki: Pki) -> None:
    """inbound_genuine = "keep" for two recipients with genuine certificates: one copy each,
    naming that recipient's certificate alone (neither learns the other's; neither sees
    the gateway's container)."""
    ca = make_ca("Genuine CA")
    (alice_key, alice), (bob_key, bob) = (email_cert(ca, f"{n}@example.com")
                                          for n in ("alice", "bob"))
    d = FixedDirectory({"alice@example.com": Certificates(genuine=(alice,)),
                        "bob@example.com": Certificates(genuine=(bob,))})
    p = pipeline(pki, d)
    p.policy = PolicyConfig(inbound_genuine=InboundGenuine.KEEP)
    enc = smime.encrypt_message(plain_message(), [pki.container(pki.current), alice, bob])
    outs = p.process("x@outside.test", ["alice@example.com", "bob@example.com"], enc)
    by = {o.recipients: o for o in outs}
    assert set(by) == {("alice@example.com",), ("bob@example.com",)}
    for rcpt, cert, key in (("alice@example.com", alice, alice_key),
                            ("bob@example.com", bob, bob_key)):
        kept = by[(rcpt,)].message
        assert by[(rcpt,)].action is Action.RELAY and KEPT_HEADER.encode() in kept
        assert [(r.issuer, r.serial) for r in smime.recipient_ids(kept)] == [
            (cert.issuer, cert.serial_number)]
        assert b"secret quarterly" in smime.Decryptor([key]).decrypt_message(kept).message
