"""One gateway serving example.com and example.de, each with keys of its own, under one
directory account of both domains: `keypost gateway serve` (its own process) against a real
`keypost directory serve`, real SMTP in and out. Outbound mail of senders of both domains
is signed (checked by `openssl cms -verify`), and inbound mail for the second domain passes
policy.recipient_binding = "enforce". The session's gateway account of example.com alone
is the contrast: the directory refuses it the second domain's containers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_directory import DirectoryWorld, keypost, start_directory
from gw_support import (
    KEYPOST,
    Pki,
    Sink,
    plain_message,
    pub_pem,
    send,
    serving_gateway,
    write_private,
)
from gw_verify import openssl_verify
from pki_util import key_pem, rsa_key
from test_recipient_binding import delivered_to, encrypted

from keypost.core.containers import describe

BOTH, BOTH_PW = "gw-both", "both-pw-1"
CAROL = "carol@elsewhere.net"  # outside: a genuine certificate only
ALICE, HANS, DAVE, MALLORY = ("alice@example.com", "hans@example.de", "dave@example.de",
                              "mallory@example.de")
SENDER = "sender@outside.test"


@dataclass
class TwoDomains:
    world: DirectoryWorld
    both_pw_file: Path
    de_encryption: rsa.RSAPrivateKey
    de_signing: rsa.RSAPrivateKey
    de_block: str  # the gateway's [[domain]] of example.de


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TwoDomains]:
    """A directory of its own (the session's stays as it is): example.com with the Pki's
    keys, example.de with two new ones, and the account gw-both of both domains."""
    root = tmp_path_factory.mktemp("two-domains")
    world = start_directory(root, pki)
    try:
        enc, sign = rsa_key(), rsa_key()
        paths = {}
        for name, key in (("de-enc", enc), ("de-sign", sign)):
            paths[name] = write_private(root / f"{name}.key", key_pem(key))
            (root / f"{name}.pub").write_bytes(pub_pem(key))
        data = str(root / "data")
        keypost("directory", "domain", "add", "example.de", "--data", data,
                "--encryption-cert", str(root / "de-enc.pub"),
                "--signing-cert", str(root / "de-sign.pub"))
        keypost("directory", "account", "add", BOTH, "--role", "gateway", "--domain",
                "example.com", "--domain", "example.de", "--password-stdin", "--data", data,
                stdin=BOTH_PW + "\n")
        block = (f'[[domain]]\nname = "example.de"\n'
                 f'encryption_keys = ["{paths["de-enc"]}"]\nsigning_key = "{paths["de-sign"]}"\n')
        pw = write_private(root / "both.pass", BOTH_PW.encode() + b"\n")
        yield TwoDomains(world, pw, enc, sign, block)
    finally:
        world.stop()


def config(pki: Pki, two: TwoDomains, sink: Sink, account: str = BOTH, policy: str = "",
           url: str | None = None) -> Path:
    """The gateway of both domains, asking the directory as `account`."""
    pw = two.both_pw_file if account == BOTH else None
    lines = two.world.gateway_directory_lines(url, username=account, password_file=pw)
    return pki.config(sink.port, directory=lines, extra=policy, domain_extra=two.de_block)


@pytest.fixture
def serving(pki: Pki, two: TwoDomains, sink: Sink, tmp_path: Path) -> Iterator[int]:
    """`keypost gateway serve` of both domains with the account of both: its port."""
    cfg = config(pki, two, sink)
    with serving_gateway(cfg, tmp_path / "gateway.log") as gw:
        yield gw.port


def spki_pem(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def signer(message: bytes, two: TwoDomains, tmp: Path) -> x509.Certificate:
    """The signing container of a message `openssl cms -verify` accepts."""
    done = openssl_verify(message, two.world.ca_pem, tmp, "-signer", str(tmp / "signer.pem"))
    assert done.returncode == 0, done.stderr
    return x509.load_pem_x509_certificate((tmp / "signer.pem").read_bytes())


def test_senders_of_both_domains_are_signed_with_their_domains_keys(
        serving: int, two: TwoDomains, pki: Pki, sink: Sink, tmp_path: Path) -> None:
    for sender in (ALICE, HANS):
        msg = plain_message(sender=sender, to=CAROL, subject="[sign] Offer", body=sender)
        code, text = send(serving, sender, [CAROL], msg)
        assert code == 250, text
    com, de = sink.handler.messages
    assert b"multipart/signed" in com.data and b"multipart/signed" in de.data
    by_com, by_de = signer(com.data, two, tmp_path), signer(de.data, two, tmp_path)
    assert describe(by_com).addresses == (ALICE,) and describe(by_de).addresses == (HANS,)
    assert spki_pem(by_com) == pub_pem(pki.signing)
    assert spki_pem(by_de) == pub_pem(two.de_signing)


def test_an_account_of_one_domain_gets_no_signature_for_the_other(
        pki: Pki, two: TwoDomains, sink: Sink, tmp_path: Path) -> None:
    """The limit this lifts: the same gateway asking as the account of example.com alone."""
    cfg = config(pki, two, sink, account="gw-example")
    with serving_gateway(cfg, tmp_path / "gateway.log") as gw:
        msg = plain_message(sender=HANS, to=CAROL, subject="[sign] Offer", body="unsigned")
        code, text = send(gw.port, HANS, [CAROL], msg)
    assert code != 250, text
    assert all(b"multipart/signed" not in m.data for m in sink.handler.messages)


def container(two: TwoDomains, address: str) -> bytes:
    """example.de's gateway container for `address`, as an outside sender's client gets it."""
    resp = requests.get(f"http://127.0.0.1:{two.world.http_port}/v1/containers",
                        params={"address": address}, timeout=30)
    assert resp.status_code == 200, resp.text
    [found] = resp.json()["results"][0]["containers"]
    assert found["gateway"] == "example.de"
    return str(found["pem"]).encode()


@pytest.mark.parametrize("account", [BOTH, "gw-example"])
def test_enforce_binds_the_second_domains_mail_to_its_mailbox(
        pki: Pki, two: TwoDomains, sink: Sink, tmp_path: Path, account: str) -> None:
    """Mail for dave@example.de, opened with example.de's own key: delivered to dave,
    refused for mallory@example.de it was re-sent to. Asked as the account of example.com
    alone, the directory does not answer for example.de's key: refused for dave too."""
    for_dave = encrypted(tmp_path, [container(two, DAVE)], "for dave only")
    url = f"http://127.0.0.1:{two.world.http_port}"
    cfg = config(pki, two, sink, account, '[policy]\nrecipient_binding = "enforce"\n', url)
    with serving_gateway(cfg, tmp_path / "gateway.log") as gw:
        port = gw.port
        mallory = send(port, SENDER, [MALLORY], for_dave)
        dave = send(port, SENDER, [DAVE], for_dave)
    if account == BOTH:
        assert mallory[0] == 554 and "another mailbox" in mallory[1], mallory
        assert dave[0] == 250, dave
        assert delivered_to(sink, "for dave only") == [DAVE]
    else:
        assert dave[0] == 554 and "does not know" in dave[1], dave
        assert delivered_to(sink, "for dave only") == []


def test_check_config_connect_with_the_account_of_both_domains(
        pki: Pki, two: TwoDomains, sink: Sink) -> None:
    """check-config --connect fetches and checks each domain's signing container."""
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config",
                           str(config(pki, two, sink))], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for domain in ("example.com", "example.de"):
        assert (f"signing container for postmaster@{domain} valid until" in done.stdout
                and "matches the signing key" in done.stdout), done.stdout
