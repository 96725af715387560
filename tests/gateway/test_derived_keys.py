"""[[domain]] derived_keys = true against a real `keypost directory serve` whose domain has
`--derived-keys`: containers fetched over HTTP carry per-address keys, ciphertext made by
`openssl cms -encrypt` (and by keypost's own encrypt_message) reaches a real `keypost
gateway serve` over SMTP. Mail for bob goes to bob; the same ciphertext mailed to mallory is
refused, also after her container's serial was edited into its RecipientInfo (the edit
that defeats policy.recipient_binding); openssl itself decrypts with bob's derived key."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from gw_support import (
    KEYPOST,
    Sink,
    encrypted_again,
    plain_message,
    pub_pem,
    send,
    serving_gateway,
    unique_file,
    write_private,
)
from pki_util import key_pem
from proc_util import port_of, start_directory_serve, stop

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey, to_pem
from keypost.core.derived import derived_private_key
from keypost.core.types import Purpose
from keypost.gateway.config import parse_config
from keypost.gateway.errors import ConfigError
from keypost.gateway.keys import load_domain_keys
from keypost.gateway.pipeline import DECRYPTED_HEADER

DOMAIN = "derived.test"
SENDER = "sender@outside.test"
BOB, CAROL, MALLORY = f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"mallory@{DOMAIN}"


def _run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*KEYPOST, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"keypost {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class World:
    root: Path
    data: Path
    http: str
    ldap: str
    key: ec.EllipticCurvePrivateKey  # the gateway's EC encryption key
    key_file: Path

    def container(self, address: str, auth: tuple[str, str] | None = None) -> bytes:
        """The encryption container an outside sender's client gets for `address` (with
        `auth`: the one a user of the domain gets, from its own gateway)."""
        resp = requests.get(f"{self.http}/v1/containers", params={"address": address},
                            auth=auth, timeout=30)
        assert resp.status_code == 200, resp.text
        [found] = resp.json()["results"][0]["containers"]
        return str(found["pem"]).encode()

    def ca(self) -> DirectoryCA:
        return DirectoryCA.load((self.data / "ca.pem").read_bytes(),
                                (self.data / "ca-key.pem").read_bytes())

    def config(self, sink: Sink, domain_extra: str = "derived_keys = true\n") -> Path:
        """A gateway.toml listening on a port the kernel picks (ServingGateway.port)."""
        return unique_file(self.root, "gateway", ".toml", f"""
listen = "127.0.0.1:0"
next_hop = "127.0.0.1:{sink.port}"
hostname = "gw.{DOMAIN}"
quarantine_dir = "{self.root / 'quarantine'}"
state_dir = "{self.root / 'state'}"
[directory]
trust_anchor = "{self.data / 'ca.pem'}"
[[domain]]
name = "{DOMAIN}"
encryption_keys = ["{self.key_file}"]
{domain_extra}""")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("derived-gw")
    data = root / "data"
    _run("directory", "init", "--data", str(data))
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = write_private(root / "enc.key", key_pem(key))
    (root / "enc.pub").write_bytes(pub_pem(key))  # type: ignore[arg-type]
    _run("directory", "domain", "add", DOMAIN, "--encryption-cert", str(root / "enc.pub"),
         "--derived-keys", "--data", str(data))
    _run("directory", "account", "add", "alice", "--role", "user", "--domain", DOMAIN,
         "--password-stdin", "--data", str(data), stdin="alice-pw\n")
    proc, urls = start_directory_serve(data, root / "serve.log")
    ldap, http = port_of(urls["ldap"]), port_of(urls["http"])
    try:
        yield World(root, data, f"http://127.0.0.1:{http}", f"ldap://127.0.0.1:{ldap}", key,
                    key_file)
    finally:
        stop(proc, timeout=20)


def encrypt_der(tmp: Path, recipients: list[bytes], body: str) -> bytes:
    """`openssl cms -encrypt` to these certificates, DER out."""
    (tmp / "entity").write_bytes(
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode())
    recips: list[str] = []
    for i, pem in enumerate(recipients):
        (tmp / f"recip-{i}.pem").write_bytes(pem)
        recips += ["-recip", str(tmp / f"recip-{i}.pem")]
    return subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-binary", "-outform",
                           "DER", "-in", str(tmp / "entity"), *recips],
                          capture_output=True, timeout=60, check=True).stdout


def mail(der: bytes) -> bytes:
    """An S/MIME message around an EnvelopedData DER, as a sender's client mails it."""
    b64 = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: figures\r\n"
            "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <dk@outside.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
            "smime-type=enveloped-data; name=smime.p7m\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + b64


def delivered_to(sink: Sink, body: str) -> list[str]:
    return [r for m in sink.handler.messages if body.encode() in m.data
            and DECRYPTED_HEADER.encode() in m.data for r in m.rcpt_tos]


def serial_der(serial: int) -> bytes:
    content = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return b"\x02" + bytes([len(content)]) + content


def test_mail_for_bob_reaches_bob_and_never_mallory(
        world: World, sink: Sink, tmp_path: Path) -> None:
    der = encrypt_der(tmp_path, [world.container(BOB)], "for bob only")
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [MALLORY], mail(der))
        assert code == 554 and "5.7.1" in text and MALLORY in text, text
        assert "derived_keys" in text
        assert sink.handler.messages == []
        code, text = send(gw.port, SENDER, [BOB], mail(der))
        assert code == 250, text
        sink.handler.wait(1)
        assert delivered_to(sink, "for bob only") == [BOB]
        sink.handler.messages.clear()
        # both at once: bob gets it, mallory is refused alone, the sender told of her
        code, text = send(gw.port, SENDER, [MALLORY, BOB], mail(der))
        assert code == 250 and "refused=1" in text, text
        sink.handler.wait(2)
    assert delivered_to(sink, "for bob only") == [BOB]
    [report] = [m for m in sink.handler.messages if m.rcpt_tos == [SENDER]]
    assert MALLORY.encode() in report.data and b"for bob only" not in report.data
    assert b"derived-keys" in next(m.data for m in sink.handler.messages if m.rcpt_tos == [BOB])


def test_an_edited_serial_does_not_help(world: World, sink: Sink, tmp_path: Path) -> None:
    """mallory edits the serial of her own container into the RecipientInfo of bob's
    ciphertext (what defeats policy.recipient_binding): her key still does not open it."""
    bob_pem = world.container(BOB)
    bob = x509.load_pem_x509_certificate(bob_pem)
    der = encrypt_der(tmp_path, [bob_pem], "for bob, edited")
    for _ in range(50):  # anonymous requests get a new container (and serial) each time
        theirs = x509.load_pem_x509_certificate(world.container(MALLORY)).serial_number
        if len(serial_der(theirs)) == len(serial_der(bob.serial_number)):
            break
    assert der.count(serial_der(bob.serial_number)) == 1
    edited = der.replace(serial_der(bob.serial_number), serial_der(theirs))
    assert serial_der(theirs) in edited and edited != der
    rids = smime.recipient_ids(mail(edited))
    assert [r.serial for r in rids] == [theirs]  # the RecipientInfo now names her container
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [MALLORY], mail(edited))
        assert code == 554 and "5.7.1" in text and MALLORY in text, text
        code, text = send(gw.port, SENDER, [BOB], mail(der))
        assert code == 250, text
        sink.handler.wait(1)
    assert delivered_to(sink, "for bob, edited") == [BOB]


def test_every_envelope_opened_must_be_for_the_recipients_key(
        world: World, sink: Sink, tmp_path: Path) -> None:
    """mallory encrypts bob's ciphertext once more, to her own container: her key opens the
    outer envelope, not the inner one, so she is refused; bob's twice-encrypted mail opens."""
    for_bob = mail(encrypt_der(tmp_path, [world.container(BOB)], "for bob, wrapped"))
    laundered = encrypted_again(tmp_path, world.container(MALLORY), for_bob, SENDER, MALLORY)
    twice = encrypted_again(tmp_path, world.container(BOB), for_bob, SENDER, BOB)
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [MALLORY], laundered)
        assert code == 554 and "5.7.1" in text and MALLORY in text, text
        assert "derived_keys" in text and sink.handler.messages == []
        code, text = send(gw.port, SENDER, [BOB], twice)
        assert code == 250, text
        sink.handler.wait(1)
    assert delivered_to(sink, "for bob, wrapped") == [BOB]
    [got] = sink.handler.messages
    assert got.data.count(b"derived-keys") == 2 and b"pkcs7" not in got.data.lower()


def test_keypost_encrypted_mail_for_two(world: World, sink: Sink, tmp_path: Path) -> None:
    """keypost's own encrypt path (the host's) to bob's and carol's containers: both get it,
    mallory beside them does not."""
    certs = [x509.load_pem_x509_certificate(world.container(a)) for a in (BOB, CAROL)]
    sealed = smime.encrypt_message(plain_message(to=BOB, body="for bob and carol"), certs)
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [BOB, MALLORY, CAROL], sealed)
        assert code == 250 and "refused=1" in text, text
        sink.handler.wait(2)
    assert sorted(delivered_to(sink, "for bob and carol")) == [BOB, CAROL]


def test_openssl_decrypts_with_the_derived_key(world: World, tmp_path: Path) -> None:
    """Standard ECDH with the derived key: openssl opens bob's mail with d_bob exported to a
    PEM, and not with d_mallory or the gateway key itself."""
    bob_pem = world.container(BOB)
    (tmp_path / "ct.der").write_bytes(encrypt_der(tmp_path, [bob_pem], "openssl reads it"))
    (tmp_path / "bob.pem").write_bytes(bob_pem)

    def decrypt(key: ec.EllipticCurvePrivateKey) -> subprocess.CompletedProcess[bytes]:
        write_private(tmp_path / "k.pem", key_pem(key))
        return subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                               str(tmp_path / "ct.der"), "-inkey", str(tmp_path / "k.pem")],
                              capture_output=True, timeout=60)

    done = decrypt(derived_private_key(world.key, parse_address(BOB)))
    assert done.returncode == 0 and b"openssl reads it" in done.stdout, done.stderr
    assert b"openssl reads it" not in decrypt(
        derived_private_key(world.key, parse_address(MALLORY))).stdout
    assert b"openssl reads it" not in decrypt(world.key).stdout


def test_plain_key_mail_needs_accept_plain_keys(
        world: World, sink: Sink, tmp_path: Path) -> None:
    """A container of the key itself (issued before the switch by the same directory CA):
    refused under derived_keys alone, opened for every recipient with accept_plain_keys."""
    plain = world.ca().issue(ContainerRequest(parse_address(BOB), Purpose.ENCRYPT,
                                              GatewayKey(world.key.public_key())))
    der = encrypt_der(tmp_path, [to_pem(plain)], "to the plain key")
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [BOB], mail(der))
        assert code == 554 and "5.7.1" in text, text
    extra = "derived_keys = true\naccept_plain_keys = true\n"
    with serving_gateway(world.config(sink, extra), tmp_path / "gw2.log") as gw:
        code, text = send(gw.port, SENDER, [BOB, MALLORY], mail(der))
        assert code == 250, text
        sink.handler.wait(1)
        bob_der = encrypt_der(tmp_path, [world.container(BOB)], "derived, beside plain")
        code, text = send(gw.port, SENDER, [MALLORY], mail(bob_der))
        assert code == 554 and "5.7.1" in text, text
    assert sorted(delivered_to(sink, "to the plain key")) == [BOB, MALLORY]


def test_without_derived_keys_the_gateway_cannot_open_them(
        world: World, sink: Sink, tmp_path: Path) -> None:
    """A gateway configured without derived_keys for a domain the directory derives keys for
    opens nothing addressed to the containers (the modes must match)."""
    der = encrypt_der(tmp_path, [world.container(BOB)], "mode mismatch")
    with serving_gateway(world.config(sink, ""), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [BOB], mail(der))
    assert code == 554 and "5.6.0" in text and "does not hold" in text, text


def test_outbound_mail_encrypted_to_the_gateway_opens(
        world: World, sink: Sink, tmp_path: Path) -> None:
    """Fig. 2: alice's client gets her own gateway's container for the outside recipient,
    which carries that recipient's derived key; the gateway opens it with the outbound
    recipient's key (and sends it on in clear here: no directory, policy clear)."""
    outside = "ext@outside.test"
    pem = world.container(outside, auth=("alice", "alice-pw"))
    theirs = derived_private_key(world.key, parse_address(outside)).public_key()
    assert x509.load_pem_x509_certificate(pem).public_key() == theirs
    sealed = smime.encrypt_message(plain_message(sender=f"alice@{DOMAIN}", to=outside,
                                                 body="outbound via derived"),
                                   [x509.load_pem_x509_certificate(pem)])
    cfg = world.config(sink)
    cfg.write_text(cfg.read_text() + '\n[policy]\noutbound_no_genuine = "clear"\n')
    with serving_gateway(cfg, tmp_path / "gw.log") as gw:
        code, text = send(gw.port, f"alice@{DOMAIN}", [outside], sealed)
        assert code == 250, text
        sink.handler.wait(1)
    [got] = sink.handler.messages
    assert b"outbound via derived" in got.data and b"pkcs7-mime" not in got.data


def test_check_config_names_the_mode(world: World, sink: Sink) -> None:
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config",
                           str(world.config(sink))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "derived keys: each recipient's mail opens with that recipient's key" in done.stdout


@pytest.mark.parametrize("scheme", ["http", "ldap"])
def test_check_config_connect_compares_the_mode_with_the_directory(
        world: World, sink: Sink, scheme: str) -> None:
    """The container an outside sender gets for postmaster@ carries P_A: derived_keys on
    agrees, off is a one-line error (every message to the domain would stay shut)."""
    url = world.http if scheme == "http" else world.ldap

    def check(domain_extra: str) -> subprocess.CompletedProcess[str]:
        cfg = world.config(sink, domain_extra)
        cfg.write_text(cfg.read_text().replace("[directory]\n", f'[directory]\nurl = "{url}"\n'))
        return subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config",
                               str(cfg)], capture_output=True, text=True, timeout=60)

    done = check("derived_keys = true\n")
    assert done.returncode == 0, done.stderr
    assert f"{DOMAIN}'s containers carry derived keys, as derived_keys says" in done.stdout
    done = check("")
    assert done.returncode == 1, done.stdout
    assert "carry derived keys, but derived_keys is off" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_config_rules(tmp_path: Path) -> None:
    key = write_private(tmp_path / "rsa.key", key_pem(rsa.generate_private_key(65537, 2048)))
    domain = {"name": DOMAIN, "encryption_keys": [str(key)], "derived_keys": True}
    cfg = parse_config({"domain": [domain]}, tmp_path)
    with pytest.raises(ConfigError, match="derived_keys needs EC encryption keys"):
        load_domain_keys(cfg.domains[0])
    with pytest.raises(ConfigError, match="accept_plain_keys: only with derived_keys"):
        parse_config({"domain": [{"name": DOMAIN, "encryption_keys": [str(key)],
                                  "accept_plain_keys": True}]}, tmp_path)
    with pytest.raises(ConfigError, match="derived_keys: expected true or false"):
        parse_config({"domain": [{**domain, "derived_keys": "yes"}]}, tmp_path)



def test_one_derived_key_per_mailbox_however_often_it_is_a_recipient(world: World) -> None:
    """Each derived key costs an ECDH per KeyAgreeRecipientInfo of every message (up to
    1024 of them). The same mailbox named again, or in another case (Postfix removes exact
    duplicates only), got a key of its own each time: one valid address written 1000 ways
    made a message cost 1000 x 1024 ECDH (over two minutes of CPU at P-256, past the
    processing timeout: a 451, and the same again at every retry)."""
    cfg = parse_config({"domain": [{"name": DOMAIN, "encryption_keys": [str(world.key_file)],
                                    "derived_keys": True}]}, world.root)
    keys = load_domain_keys(cfg.domains[0])
    named = [BOB, BOB.upper(), "Bob@" + DOMAIN, CAROL, BOB]
    opener = keys.opener([parse_address(a) for a in named])
    assert len(opener.owners) == 2  # bob's key and carol's
    assert sorted(opener.owners) == [(0, frozenset({0, 1, 2, 4})), (0, frozenset({3}))]


def test_the_same_mailbox_in_two_cases_gets_its_copy_at_each(
        world: World, sink: Sink, tmp_path: Path) -> None:
    """Both spellings of bob are delivered (one derived key serves both), mallory beside
    them is refused."""
    der = encrypt_der(tmp_path, [world.container(BOB)], "for bob twice")
    bob2 = "Bob@" + DOMAIN
    with serving_gateway(world.config(sink), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [BOB, MALLORY, bob2], mail(der))
        assert code == 250 and "refused=1" in text, text
        sink.handler.wait(2)
    assert sorted(delivered_to(sink, "for bob twice")) == sorted([BOB, bob2])
