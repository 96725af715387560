"""The pipeline without sockets: envelope + bytes in, per-recipient outcomes out."""

from __future__ import annotations

import pytest
from cryptography import x509
from gw_support import Pki, plain_message

from keypost.core import smime
from keypost.core.address import Address
from keypost.gateway.config import DomainConfig, PolicyConfig
from keypost.gateway.directory import Certificates
from keypost.gateway.errors import DirectoryUnavailable
from keypost.gateway.keys import load_domain_keys
from keypost.gateway.pipeline import Action, Pipeline
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

    def signing_container(self, address: Address) -> x509.Certificate | None:
        if self.down:
            raise DirectoryUnavailable("directory unreachable")
        return None


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
    assert len(outs) == 1  # the same untouched original for both: one relay
    assert outs[0].recipients == ("y@else.test", "z@else.test") and outs[0].message == enc


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
