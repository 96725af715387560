"""policy.inbound_genuine: inbound mail the sender also encrypted to the recipient's genuine
certificate. With "keep" that recipient gets the message as it arrived (their own key opens
it), after the gateway decrypted it and the scan accepted the clear text; the other
recipients of the same message get it decrypted. Every peer real: `keypost directory serve`
holding gina@example.com's genuine certificate (gw_directory), `keypost gateway serve`, a
`[scan] command` that keeps what it was shown, an aiosmtpd mailbox, and ciphertext made by
`openssl cms -encrypt` to the certificates an outside sender's client gets from the
directory, opened again by `openssl cms -decrypt` with gina's key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography import x509
from gw_directory import DirectoryWorld
from gw_support import Pki, Sink, body_of, send, serving_gateway, write_private
from gw_verify import openssl_verify
from pki_util import email_cert, key_pem, make_ca
from port_util import refusing_port

from keypost.core import smime
from keypost.core.containers import to_pem
from keypost.gateway.config import load_config
from keypost.gateway.errors import ConfigError
from keypost.gateway.pipeline import DECRYPTED_HEADER, KEPT_HEADER

SENDER = "sender@outside.test"
GINA, DAVE = "gina@example.com", "dave@example.com"  # gina has a genuine certificate
SECRET = "secret figures for gina and dave"


def certificates(world: DirectoryWorld, address: str) -> list[bytes]:
    """What an outside sender's client gets for `address` (anonymous, HTTP)."""
    resp = requests.get(f"http://127.0.0.1:{world.http_port}/v1/containers",
                        params={"address": address}, timeout=30)
    assert resp.status_code == 200, resp.text
    return [str(c["pem"]).encode() for c in resp.json()["results"][0]["containers"]]


def encrypt(tmp: Path, entity: bytes, recipients: list[bytes], *options: str) -> bytes:
    """`entity` (a MIME entity) in an enveloped-data entity for these certificates."""
    source = tmp / f"entity-{len(list(tmp.iterdir()))}"
    source.write_bytes(entity)
    recips: list[str] = []
    for i, pem in enumerate(recipients):
        path = source.with_suffix(f".recip-{i}.pem")
        path.write_bytes(pem)
        recips += ["-recip", str(path)]
    done = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-binary", "-in",
                           str(source), *recips, *options],
                          capture_output=True, timeout=60, check=True)
    return done.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail(enveloped: bytes, forged: bool = True, message_id: str = "ig@outside.test") -> bytes:
    """The message a sender mails; `forged`: with the gateway's own fields written in."""
    head = (f"From: {SENDER}\r\nTo: {GINA}, {DAVE}\r\nSubject: figures\r\n"
            f"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n")
    if forged:
        head += f"{KEPT_HEADER}: forged\r\n{DECRYPTED_HEADER}: forged\r\n"
    return head.encode() + enveloped


def text(secret: str) -> bytes:
    """A text/plain entity holding `secret`."""
    return f"Content-Type: text/plain; charset=utf-8\r\n\r\n{secret}\r\n".encode()


TEXT = text(SECRET)


def scanner(tmp: Path, verdict: int = 0) -> str:
    """A scan command that keeps what it was shown in tmp/scanned, then exits `verdict`."""
    script = tmp / "scanner.py"
    script.write_text("import sys\n"
                      f"open({str(tmp / 'scanned')!r}, 'wb').write(sys.stdin.buffer.read())\n"
                      f"print('refused by test'); sys.exit({verdict})\n")
    return f'[scan]\ncommand = ["{sys.executable}", "{script}"]\n'


def config(pki: Pki, world: DirectoryWorld, sink: Sink, tmp: Path, policy: str | None = "keep",
           verdict: int = 0, url: str | None = None) -> Path:
    return gateway_config(pki, world, sink.port, tmp, policy, verdict, url)


def gateway_config(pki: Pki, world: DirectoryWorld, next_hop: int, tmp: Path,
                   policy: str | None = "keep", verdict: int = 0, url: str | None = None,
                   protocol: str = "smtp") -> Path:
    """gateway.toml in `tmp`: the protocol, the scanner, the policy, the directory `url`
    (default: the world's over HTTP) as the gateway account."""
    extra = f'protocol = "{protocol}"\n' + scanner(tmp, verdict)
    if policy is not None:
        extra += f'[policy]\ninbound_genuine = "{policy}"\n'
    # over HTTP: on LDAP the gateway account is given its own domain's signing containers
    url = url or f"http://127.0.0.1:{world.http_port}"
    return pki.config(next_hop, extra=extra, folder=tmp,
                      directory=world.gateway_directory_lines(url))


def gina_opens(world: DirectoryWorld, tmp: Path, message: bytes) -> bytes:
    """`openssl cms -decrypt` of `message` with gina's own key."""
    key = write_private(tmp / "gina.key", key_pem(world.gina_key))
    (tmp / "kept.eml").write_bytes(message)
    done = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(tmp / "kept.eml"),
                           "-inkey", str(key), "-recip", str(world.root / f"{GINA}.pem")],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def by_recipient(sink: Sink) -> dict[str, bytes]:
    """What each recipient got (each exactly once)."""
    got = [(r, m.data) for m in sink.handler.messages for r in m.rcpt_tos]
    assert len(got) == len({r for r, _ in got}), [r for r, _ in got]
    return dict(got)


@pytest.mark.parametrize("identify", [[], ["-keyid"]], ids=["issuer-serial", "keyid"])
def test_keep_delivers_the_original_to_gina_and_clear_text_to_dave(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, identify: list[str]
) -> None:
    ours, genuine = certificates(world, GINA)  # her gateway container, her own certificate
    # and a Bcc recipient elsewhere, by their own certificate
    _, bcc = email_cert(make_ca("Elsewhere CA"), "bcc@elsewhere.test", ski=True)
    enveloped = encrypt(tmp_path, TEXT, [ours, genuine, to_pem(bcc)], *identify)
    sent = mail(enveloped)
    with serving_gateway(config(pki, world, sink, tmp_path), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], sent)
    assert code == 250, text
    assert len(sink.handler.messages) == 2  # one transaction per distinct content
    got = by_recipient(sink)
    kept, clear = got[GINA], got[DAVE]
    # gina: the ciphertext as it came, naming her own certificate alone (not the gateway's
    # container, not bob's); her key opens it
    theirs = x509.load_pem_x509_certificate(genuine)
    ids, skis = smime.recipient_identifiers(kept)
    if identify:
        assert ids == [] and skis == [theirs.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value.digest]
    else:
        assert skis == [] and [(r.issuer, r.serial) for r in ids] == [
            (theirs.issuer, theirs.serial_number)]
    assert len(smime.recipient_identifiers(sent)[int(bool(identify))]) == 3
    assert SECRET.encode() not in kept
    assert SECRET.encode() in gina_opens(world, tmp_path, kept)
    # what the gateway opened it with, scanned; the forged fields are gone
    fields = [line for line in kept.split(b"\r\n\r\n")[0].split(b"\r\n")
              if line.startswith(b"X-Keypost-")]
    assert len(fields) == 1 and fields[0].startswith(f"{KEPT_HEADER}: key=current ".encode())
    assert fields[0].endswith(b", alg=aes256-cbc; scanned")
    # dave: the decrypted message, as without the setting
    assert SECRET.encode() in clear and b"pkcs7" not in clear.lower()
    assert clear.count(f"{DECRYPTED_HEADER}: key=current".encode()) == 1
    assert KEPT_HEADER.encode() not in clear and b"forged" not in clear
    # the scanner saw the clear text once, for both
    scanned = (tmp_path / "scanned").read_bytes()
    assert SECRET.encode() in scanned and b"pkcs7" not in scanned.lower()


def test_a_signature_around_the_envelope_stays_for_gina(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Encrypt-then-sign (carol@elsewhere.net signs, detached): the gateway takes the
    signature off to open the envelope for the scan, but gina's copy is the original, whose
    signature `openssl cms -verify` checks and whose envelope her key opens."""
    enveloped = tmp_path / "enveloped.eml"
    enveloped.write_bytes(encrypt(tmp_path, TEXT, certificates(world, GINA)))
    carol = world.root / "carol@elsewhere.net.pem"
    carol_key = write_private(tmp_path / "carol.key", key_pem(world.carol_key))
    done = subprocess.run(["openssl", "cms", "-sign", "-in", str(enveloped), "-signer",
                           str(carol), "-inkey", str(carol_key)],
                          capture_output=True, timeout=60, check=True)
    sent = mail(done.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    with serving_gateway(config(pki, world, sink, tmp_path), tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], sent)
    assert code == 250, text
    got = by_recipient(sink)
    assert body_of(got[GINA]) == body_of(sent)
    verified = openssl_verify(got[GINA], world.genuine_ca_pem, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert SECRET.encode() in gina_opens(world, tmp_path, verified.stdout)
    assert SECRET.encode() in got[DAVE] and b"multipart/signed" not in got[DAVE]


def test_a_rejected_scan_delivers_nothing_to_either(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    enveloped = encrypt(tmp_path, TEXT, certificates(world, GINA))
    with serving_gateway(config(pki, world, sink, tmp_path, verdict=1),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(enveloped))
    assert code == 554 and "refused by test" in text, text
    assert sink.handler.messages == []
    assert SECRET.encode() in (tmp_path / "scanned").read_bytes()


def test_a_held_scan_holds_the_clear_text_for_both(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """As without the setting: the decrypted message is held once for both, and each gets
    a notice (no content); nothing is delivered."""
    enveloped = encrypt(tmp_path, TEXT, certificates(world, GINA))
    with serving_gateway(config(pki, world, sink, tmp_path, verdict=2),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(enveloped))
    assert code == 250 and "quarantined=2" in text, text
    [held] = list((tmp_path / "quarantine" / "new").iterdir())
    assert SECRET.encode() in held.read_bytes()
    assert all(SECRET.encode() not in m.data and b"pkcs7" not in m.data.lower()
               for m in sink.handler.messages)


@pytest.mark.parametrize("policy", [None, "clear"])
def test_clear_decrypts_for_gina_too(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, policy: str | None
) -> None:
    """The default: as before the setting, one decrypted copy for both."""
    enveloped = encrypt(tmp_path, TEXT, certificates(world, GINA))
    with serving_gateway(config(pki, world, sink, tmp_path, policy),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(enveloped))
    assert code == 250, text
    [got] = sink.handler.messages
    assert sorted(got.rcpt_tos) == [DAVE, GINA]
    assert SECRET.encode() in got.data and KEPT_HEADER.encode() not in got.data


def test_only_when_gina_opens_every_envelope(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Nested envelopes: an outer one to the gateway alone around one to gina's
    certificate, and one to gina's certificate around an inner one to the gateway and
    someone else's certificate (bob@partner.org's). Neither opens with her key all the
    way to the text: both reach her decrypted."""
    ours, genuine = certificates(world, GINA)
    inside = encrypt(tmp_path, TEXT, [ours, genuine])
    outer_ours = encrypt(tmp_path, inside, [ours])
    bobs = (world.root / "bob@partner.org.pem").read_bytes()
    outer_hers = encrypt(tmp_path, encrypt(tmp_path, TEXT, [ours, bobs]), [ours, genuine])
    with serving_gateway(config(pki, world, sink, tmp_path), tmp_path / "gw.log") as gw:
        for enveloped in (outer_ours, outer_hers):
            code, text = send(gw.port, SENDER, [GINA], mail(enveloped, forged=False))
            assert code == 250, text
    assert len(sink.handler.messages) == 2
    for got in sink.handler.messages:
        assert SECRET.encode() in got.data and KEPT_HEADER.encode() not in got.data
        assert got.data.count(f"{DECRYPTED_HEADER}: ".encode()) == 2


def test_directory_down_defers_what_it_could_keep_only(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Whether gina's certificate is among the RecipientInfos needs the directory: while it
    cannot answer, such mail gets 451 (the MTA retries). Mail whose RecipientInfos are all
    our containers needs no question and is delivered decrypted."""
    ours, genuine = certificates(world, GINA)
    with refusing_port() as port, serving_gateway(
            config(pki, world, sink, tmp_path, url=f"http://127.0.0.1:{port}"),
            tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE],
                          mail(encrypt(tmp_path, TEXT, [ours, genuine])))
        assert code == 451 and "directory" in text, text
        assert sink.handler.messages == []
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(encrypt(tmp_path, TEXT, [ours])))
    assert code == 250, text
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data and KEPT_HEADER.encode() not in got.data


@pytest.mark.parametrize("policy", ["keep", "reencrypt"])
@pytest.mark.parametrize(("url", "roots", "problem"), [
    (None, True, "set [directory] url (https://)"),
    ("ldap", True, "which it answers over HTTP only"),
    ("http", False, "with no [directory] genuine_roots every genuine certificate is ignored"),
])
def test_keep_and_reencrypt_need_the_directory_over_http_and_genuine_roots(
    pki: Pki, world: DirectoryWorld, tmp_path: Path, url: str | None, roots: bool, problem: str,
    policy: str,
) -> None:
    lines = (f'trust_anchor = "{world.ca_pem}"' if url is None else
             world.gateway_directory_lines(world.ldap_url if url == "ldap"
                                           else f"http://127.0.0.1:{world.http_port}"))
    if not roots:
        lines = lines.replace(f'genuine_roots = ["{world.genuine_ca_pem}"]', "")
    path = pki.config(2525, extra=f'[policy]\ninbound_genuine = "{policy}"\n',
                      directory=lines, folder=tmp_path)
    with pytest.raises(ConfigError) as failed:
        load_config(path)
    assert str(failed.value).startswith(f"policy.inbound_genuine: {policy} asks the directory")
    assert problem in str(failed.value)


def test_an_unknown_value_names_the_choices(pki: Pki, tmp_path: Path) -> None:
    path = pki.config(2525, extra='[policy]\ninbound_genuine = "encrypted"\n', folder=tmp_path)
    choices = "expected one of 'clear' | 'keep' | 'reencrypt', got"
    with pytest.raises(ConfigError, match=re.escape(choices)):
        load_config(path)
