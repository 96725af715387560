"""Inbound (Fig. 1) through real SMTP: sender -> gateway -> aiosmtpd sink, no directory needed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest
from gw_support import (
    EphemeralController,
    Pki,
    Sink,
    SinkHandler,
    body_of,
    plain_message,
    running_gateway,
    running_sink,
    send,
)
from port_util import refusing_socket

from keypost.core import cms, mime, smime
from keypost.core.containers import DirectoryCA
from keypost.core.types import Capability
from keypost.gateway.keys import spki_fingerprint

ALICE = "alice@example.com"


def encrypted_for(pki: Pki, key: object, body: str = "secret quarterly figures",
                  to: str = ALICE) -> bytes:
    return smime.encrypt_message(plain_message(to=to, body=body), [pki.container(key, to)])  # type: ignore[arg-type]


def test_inbound_decrypts_with_the_current_key(pki: Pki, sink: Sink) -> None:
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE], encrypted_for(pki, pki.current))
    assert code == 250, text
    [got] = sink.handler.messages
    assert got.rcpt_tos == [ALICE]
    assert b"secret quarterly figures" in got.data
    assert b"pkcs7-mime" not in got.data
    header = f"X-Keypost-Decrypted: key=current fingerprint={spki_fingerprint(pki.current)}"
    assert header.encode() in got.data
    assert b"alg=aes256-cbc" in got.data
    assert b"Subject: Quarterly" in got.data and b"From: sender@outside.test" in got.data
    assert b"PRIVATE" not in got.data


def test_inbound_decrypts_with_a_retired_key(pki: Pki, sink: Sink) -> None:
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, "sender@outside.test", [ALICE], encrypted_for(pki, pki.retired))
    assert code == 250
    [got] = sink.handler.messages
    assert b"X-Keypost-Decrypted: key=retired-1" in got.data
    assert b"secret quarterly figures" in got.data


def test_mail_encrypted_only_for_someone_else_passes_unchanged(pki: Pki, sink: Sink) -> None:
    other_ca = DirectoryCA.generate(common_name="somebody else's CA")
    from gw_support import pub_pem

    from keypost.core.address import parse_address
    from keypost.core.containers import ContainerRequest, GatewayKey
    from keypost.core.types import Purpose

    cert = other_ca.issue(ContainerRequest(parse_address(ALICE), Purpose.ENCRYPT,
                                           GatewayKey.from_pem(pub_pem(pki.stranger))))
    enc = smime.encrypt_message(plain_message(), [cert])
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, "sender@outside.test", [ALICE], enc)
    assert code == 250
    [got] = sink.handler.messages
    assert body_of(got.data) == body_of(enc)
    assert b"X-Keypost-Decrypted" not in got.data


def test_encrypted_to_a_key_we_do_not_hold_is_refused_not_delivered(pki: Pki, sink: Sink) -> None:
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE],
                          encrypted_for(pki, pki.stranger))
        assert code == 554 and "does not hold" in text
        # the process keeps serving
        code2, _ = send(gw.port, "sender@outside.test", [ALICE], encrypted_for(pki, pki.current))
    assert code2 == 250
    assert len(sink.handler.messages) == 1
    assert b"X-Keypost-Decrypted" in sink.handler.messages[0].data


def test_more_recipient_infos_than_the_limit_are_refused_as_malformed(
    pki: Pki, sink: Sink
) -> None:
    """Each RecipientInfo would cost one RSA operation per gateway key: past the limit the
    message is unreadable S/MIME (554), though every one of them wraps the right key."""
    container = pki.container(pki.current, ALICE)
    # keypost's own writer refuses such an envelope: build it as a hostile sender would
    entity = b"Content-Type: text/plain\r\n\r\nmany\r\n"
    der = cms.build_enveloped(entity, [container] * (smime.MAX_RECIPIENT_INFOS + 1),
                              Capability.AES256_CBC)
    many = mime.b64_lines(der, (
        f"From: sender@outside.test\r\nTo: {ALICE}\r\nSubject: many\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n").encode())
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE], many)
    assert code == 554 and "not a readable S/MIME message" in text, text
    assert sink.handler.messages == []


def test_recipients_outside_our_domains_get_the_ciphertext_untouched(
    pki: Pki, sink: Sink
) -> None:
    enc = encrypted_for(pki, pki.current)
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, "sender@outside.test", [ALICE, "x@outside.test"], enc)
    assert code == 250
    by_rcpt = {tuple(m.rcpt_tos): m.data for m in sink.handler.messages}
    assert set(by_rcpt) == {(ALICE,), ("x@outside.test",)}
    assert b"secret quarterly figures" in by_rcpt[(ALICE,)]
    assert body_of(by_rcpt[("x@outside.test",)]) == body_of(enc)


SCANNER = """
import sys
data = sys.stdin.buffer.read()
if b"VIRUS" in data:
    print("Found: Test.Virus"); sys.exit(1)
if b"SUSPECT" in data:
    print("looks suspicious"); sys.exit(2)
if b"SCANFAIL" in data:
    sys.exit(7)
if b"SLOW" in data:
    import time; time.sleep(10)
sys.exit(0)
"""


@pytest.fixture
def scanned(pki: Pki, sink: Sink, tmp_path: Path):  # type: ignore[no-untyped-def]
    script = tmp_path / "scan.py"
    script.write_text(SCANNER)
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"), extra=(
        f'[scan]\ncommand = ["{sys.executable}", "{script}"]\n'
        "[timeouts]\nprocessing = 3\n"
    ))
    with running_gateway(cfg) as gw:
        yield gw, tmp_path / "q"


def test_scan_sees_clear_text_and_rejects_with_its_reason(pki: Pki, sink: Sink, scanned) -> None:  # type: ignore[no-untyped-def]
    gw, _ = scanned
    code, text = send(gw.port, "s@outside.test", [ALICE],
                      encrypted_for(pki, pki.current, body="a VIRUS inside"))
    assert code == 554 and "Found: Test.Virus" in text
    code, _ = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current))
    assert code == 250
    assert len(sink.handler.messages) == 1


def test_scan_quarantine_keeps_the_message_and_notifies(pki: Pki, sink: Sink, scanned) -> None:  # type: ignore[no-untyped-def]
    gw, qdir = scanned
    code, _ = send(gw.port, "s@outside.test", [ALICE],
                   encrypted_for(pki, pki.current, body="SUSPECT content"))
    assert code == 250
    held = list((qdir / "new").iterdir())
    assert len(held) == 1
    assert b"SUSPECT content" in held[0].read_bytes()
    assert oct(held[0].stat().st_mode & 0o777) == "0o600"
    [notice] = sink.handler.messages
    assert notice.rcpt_tos == [ALICE] and notice.mail_from in ("", "<>")
    assert b"quarantine" in notice.data and held[0].name.encode() in notice.data
    assert b"SUSPECT content" not in notice.data


def test_scanner_failure_and_timeout_answer_451(pki: Pki, sink: Sink, scanned) -> None:  # type: ignore[no-untyped-def]
    gw, _ = scanned
    code, _ = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current, "SCANFAIL"))
    assert code == 451
    code, text = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current, "SLOW"))
    assert code == 451 and "timed out" in text
    assert sink.handler.messages == []


def test_next_hop_down_answers_451_then_delivers_on_retry(pki: Pki) -> None:
    # The point: the next hop comes up on the port configured. Held from the start (a port
    # merely free when picked could go to another process's server in between).
    enc = encrypted_for(pki, pki.current)
    with refusing_socket() as hop, running_gateway(pki.config(hop.getsockname()[1])) as gw:
        code, _ = send(gw.port, "s@outside.test", [ALICE], enc)
        assert code == 451
        with running_sink(hop) as sink:
            code, _ = send(gw.port, "s@outside.test", [ALICE], enc)
            assert code == 250
            assert len(sink.handler.messages) == 1


@pytest.mark.parametrize(("reply", "expected"), [("451 4.3.0 busy", 451), ("554 5.7.1 no", 554)])
def test_next_hop_refusals_are_passed_back(pki: Pki, sink: Sink, reply: str, expected: int) -> None:
    sink.handler.reply = reply
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current))
    assert code == expected


def test_internal_error_answers_451_and_keeps_serving(pki: Pki, sink: Sink) -> None:
    with running_gateway(pki.config(sink.port)) as gw:
        real = gw.gateway.handler.process

        def broken(*args: object) -> list[object]:
            raise RuntimeError("a bug")

        gw.gateway.handler.process = broken  # type: ignore[assignment]
        code, _ = send(gw.port, "s@outside.test", [ALICE], plain_message())
        assert code == 451
        gw.gateway.handler.process = real
        code, _ = send(gw.port, "s@outside.test", [ALICE], plain_message())
        assert code == 250


def test_split_envelope_inbound_clear_outbound_refused_with_report(pki: Pki, sink: Sink) -> None:
    """alice writes to a colleague and to an outsider; no directory, so the outsider has no
    certificate and the default policy (encrypt-only) refuses that copy."""
    enc = smime.encrypt_message(plain_message(sender=ALICE, to="bob@example.com"),
                                [pki.container(pki.current, "bob@example.com")])
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, ALICE, ["bob@example.com", "x@outside.test"], enc)
    assert code == 250
    by_rcpt = {tuple(m.rcpt_tos): m for m in sink.handler.messages}
    assert b"secret quarterly figures" in by_rcpt[("bob@example.com",)].data
    report = by_rcpt[(ALICE,)]
    assert report.mail_from in ("", "<>") and b"x@outside.test" in report.data
    assert b"secret quarterly figures" not in report.data
    assert ("x@outside.test",) not in by_rcpt


def test_concurrent_senders_all_arrive(pki: Pki, sink: Sink) -> None:
    messages = [encrypted_for(pki, pki.current, body=f"message {i}") for i in range(12)]

    async def one(port: int, data: bytes) -> None:
        await aiosmtplib.send(data, sender="s@outside.test", recipients=[ALICE],
                              hostname="127.0.0.1", port=port, timeout=60)

    async def all_of(port: int) -> None:
        await asyncio.gather(*(one(port, m) for m in messages))

    with running_gateway(pki.config(sink.port)) as gw:
        asyncio.run(all_of(gw.port))
    bodies = sorted(body_of(m.data).strip() for m in sink.handler.messages)
    assert bodies == sorted(f"message {i}".encode() for i in range(12))
    assert os.path.exists(pki.root)


def test_next_hop_refusing_one_recipient_reports_it_to_the_sender(pki: Pki, sink: Sink) -> None:
    sink.handler.refuse = {"gone@example.com"}
    enc = encrypted_for(pki, pki.current)
    with running_gateway(pki.config(sink.port)) as gw:
        code, _ = send(gw.port, "s@outside.test", [ALICE, "gone@example.com"], enc)
    assert code == 250
    by_rcpt = {tuple(m.rcpt_tos): m for m in sink.handler.messages}
    assert b"secret quarterly figures" in by_rcpt[(ALICE,)].data
    report = by_rcpt[("s@outside.test",)].data
    assert b"gone@example.com" in report and b"550" in report
    assert b"secret quarterly figures" not in report


def test_smtputf8_addresses_pass_through(pki: Pki, sink: Sink) -> None:
    import smtplib

    enc = encrypted_for(pki, pki.current)
    with running_gateway(pki.config(sink.port)) as gw, smtplib.SMTP(
        "127.0.0.1", gw.port, timeout=60
    ) as s:
        s.sendmail("jörg@outside.test", ["alice@example.com"], enc, mail_options=["SMTPUTF8"])
    [got] = sink.handler.messages
    assert got.mail_from == "jörg@outside.test"
    assert b"X-Keypost-Decrypted" in got.data


def test_next_hop_deferring_one_recipient_keeps_its_copy(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    sink.handler.defer = {"busy@example.com"}
    enc = encrypted_for(pki, pki.current)
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        code, _ = send(gw.port, "s@outside.test", [ALICE, "busy@example.com"], enc)
    assert code == 250
    by_rcpt = {tuple(m.rcpt_tos): m for m in sink.handler.messages}
    assert (ALICE,) in by_rcpt
    [kept] = list((tmp_path / "q" / "new").iterdir())
    assert b"busy@example.com" in kept.read_bytes()
    assert b"secret quarterly figures" in kept.read_bytes()
    assert kept.name.encode() in by_rcpt[("s@outside.test",)].data


def test_quarantined_message_can_be_listed_and_released(
    pki: Pki, sink: Sink, scanned  # type: ignore[no-untyped-def]
) -> None:
    import subprocess

    from gw_support import KEYPOST

    gw, qdir = scanned
    assert send(gw.port, "s@outside.test", [ALICE],
                encrypted_for(pki, pki.current, body="SUSPECT but fine"))[0] == 250
    [held] = list((qdir / "new").iterdir())
    cfg = next(p for p in pki.root.glob("gateway-*.toml") if str(qdir) in p.read_text())
    listed = subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "list"],
                            capture_output=True, text=True, timeout=60)
    assert held.name in listed.stdout and "looks suspicious" in listed.stdout
    done = subprocess.run(
        [*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release", held.name],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    released = sink.handler.messages[-1]
    assert released.rcpt_tos == [ALICE] and released.mail_from == "s@outside.test"
    assert b"SUSPECT but fine" in released.data and b"X-Keypost-Quarantine" not in released.data
    assert list((qdir / "new").iterdir()) == []
    assert len(list((qdir / "cur").iterdir())) == 1
    # Nothing named, nothing to do: a usage error (one line, status 2), not a silent success.
    sent = len(sink.handler.messages)
    bare = subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release"],
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2, bare.stderr
    assert len(bare.stderr.splitlines()) == 1 and "release needs the IDs" in bare.stderr
    assert len(sink.handler.messages) == sent
    # Released once: a second release says so (it is kept in cur/), and sends nothing.
    again = subprocess.run(
        [*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release", held.name],
        capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"keypost: error: {held.name} was released already (kept in {qdir / 'cur'})"]
    assert len(sink.handler.messages) == sent


def test_lmtp_gives_one_reply_per_recipient(pki: Pki, sink: Sink) -> None:
    import smtplib

    enc = smime.encrypt_message(plain_message(sender=ALICE, to="bob@example.com"),
                                [pki.container(pki.current, "bob@example.com")])
    cfg = pki.config(sink.port, extra='protocol = "lmtp"')
    with running_gateway(cfg) as gw, smtplib.LMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.ehlo()  # smtplib.LMTP sends LHLO
        s.mail(ALICE)
        s.rcpt("bob@example.com")
        s.rcpt("x@outside.test")
        first = s.data(enc)
        second = s.getreply()
    assert first[0] == 250
    assert second[0] == 554 and b"x@outside.test" in second[1]
    [got] = sink.handler.messages  # no report: the MTA bounces x itself
    assert got.rcpt_tos == ["bob@example.com"] and b"secret quarterly" in got.data


def test_a_bounce_is_never_bounced_again(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    sink.handler.refuse = {"gone@example.com"}
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        code, _ = send(gw.port, "", [ALICE, "gone@example.com"], plain_message())
    assert code == 250
    [got] = sink.handler.messages  # alice's copy, and no report to the null sender
    assert got.rcpt_tos == [ALICE]
    [kept] = list((tmp_path / "q" / "new").iterdir())
    assert b"gone@example.com" in kept.read_bytes()


def test_signing_without_a_directory_is_refused_not_retried(pki: Pki, sink: Sink) -> None:
    msg = plain_message(sender=ALICE, to="x@outside.test", subject="[sign] hi")
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, ALICE, ["x@outside.test"], msg)
    assert code == 554 and "needs a directory" in text
    assert sink.handler.messages == []


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        ("rcpt", "550 5.1.1 next hop refused: no such user here"),
        ("552 5.3.4 Message size exceeds fixed limit",
         "552 5.3.4 next hop refused: Message size exceeds fixed limit"),
        ("554 transaction failed", "554 5.0.0 next hop refused: transaction failed"),
    ],
)
def test_next_hop_refusal_keeps_its_enhanced_status_code(
    pki: Pki, sink: Sink, refusal: str, expected: str
) -> None:
    if refusal == "rcpt":
        sink.handler.refuse = {ALICE}
    else:
        sink.handler.reply = refusal
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current))
    assert f"{code} {text}" == expected


@pytest.mark.parametrize("refusal", ["refuse", "defer"])
def test_next_hop_refusing_a_later_group_does_not_undo_the_delivered_one(
    pki: Pki, sink: Sink, tmp_path: Path, refusal: str
) -> None:
    """x@outside.test (the ciphertext) is relayed before alice's decrypted copy, which the
    next hop then refuses (550) or defers (450): x's copy is delivered, so the reply must
    not be a 5xx (the sender would be told x did not get it) nor a 451 (the retry would
    deliver x's copy again)."""
    getattr(sink.handler, refusal).add(ALICE)
    enc = encrypted_for(pki, pki.current)
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        code, text = send(gw.port, "s@outside.test", ["x@outside.test", ALICE], enc)
    assert code == 250, text
    by_rcpt = {tuple(m.rcpt_tos): m.data for m in sink.handler.messages}
    assert set(by_rcpt) == {("x@outside.test",), ("s@outside.test",)}
    assert body_of(by_rcpt[("x@outside.test",)]) == body_of(enc)
    report = by_rcpt[("s@outside.test",)]
    assert ALICE.encode() in report and b"secret quarterly figures" not in report
    kept = list((tmp_path / "q" / "new").glob("*"))
    if refusal == "defer":  # kept for a release, like a deferred recipient of one group
        assert len(kept) == 1 and b"secret quarterly figures" in kept[0].read_bytes()
        assert kept[0].name.encode() in report
    else:
        assert kept == []


def test_a_report_to_an_smtputf8_sender_is_sent_once(pki: Pki, sink: Sink) -> None:
    """The report to a UTF-8 envelope sender needs SMTPUTF8 too; without it the gateway
    answered 451 after alice's copy was delivered, and every retry delivered it again."""
    import smtplib

    sink.handler.refuse = {"gone@example.com"}
    enc = encrypted_for(pki, pki.current)
    with running_gateway(pki.config(sink.port)) as gw, smtplib.SMTP(
        "127.0.0.1", gw.port, timeout=60
    ) as s:
        refused = s.sendmail("jörg@outside.test", [ALICE, "gone@example.com"], enc,
                             mail_options=["SMTPUTF8"])
    assert refused == {}
    by_rcpt = {tuple(m.rcpt_tos): m for m in sink.handler.messages}
    assert set(by_rcpt) == {(ALICE,), ("jörg@outside.test",)}
    assert b"gone@example.com" in by_rcpt[("jörg@outside.test",)].data


def test_a_utf8_address_the_next_hop_cannot_take_is_refused_not_retried(pki: Pki) -> None:
    import smtplib

    handler = SinkHandler()
    ctl = EphemeralController(handler, hostname="127.0.0.1", port=0, enable_SMTPUTF8=False)
    ctl.start()
    try:
        with running_gateway(pki.config(ctl.port)) as gw, smtplib.SMTP(
            "127.0.0.1", gw.port, timeout=60
        ) as s:
            s.ehlo()
            s.mail("jörg@outside.test", ["SMTPUTF8"])
            s.rcpt(ALICE)
            code, text = s.data(encrypted_for(pki, pki.current))
    finally:
        ctl.stop()
    assert (code, text.decode()) == (
        553, "5.6.7 the next hop offers no SMTPUTF8 for a UTF-8 address")
    assert handler.messages == []


def test_a_report_the_next_hop_refuses_is_kept_not_answered_with_its_5xx(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    """alice's copy is delivered; the report about gone@ to s@ is refused: answering that
    refusal would bounce alice's copy too, so the report is kept in the quarantine."""
    sink.handler.refuse = {"gone@example.com", "s@outside.test"}
    cfg = pki.config(sink.port, quarantine=str(tmp_path / "q"))
    with running_gateway(cfg) as gw:
        code, text = send(gw.port, "s@outside.test", [ALICE, "gone@example.com"],
                          encrypted_for(pki, pki.current))
    assert code == 250, text
    [got] = sink.handler.messages
    assert got.rcpt_tos == [ALICE]
    [kept] = list((tmp_path / "q" / "new").iterdir())
    assert b"gone@example.com" in kept.read_bytes() and b"550" in kept.read_bytes()
    assert b"secret quarterly figures" not in kept.read_bytes()


def _openssl_encrypted(pki: Pki, tmp_path: Path, cipher: str) -> bytes:
    """An RFC 5322 message that `openssl cms -encrypt` (an independent sender) wrote for
    alice's container."""
    from cryptography.hazmat.primitives import serialization

    cert = tmp_path / "container.pem"
    cert.write_bytes(pki.container(pki.current, ALICE).public_bytes(serialization.Encoding.PEM))
    entity = tmp_path / "entity"
    entity.write_bytes(b"Content-Type: text/plain\r\n\r\nsecret quarterly figures\r\n")
    res = subprocess.run(
        ["openssl", "cms", "-encrypt", cipher, "-in", str(entity), "-from",
         "sender@outside.test", "-to", ALICE, "-subject", "Quarterly", str(cert)],
        capture_output=True, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_inbound_decrypts_aes_gcm_authenveloped_data(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    """RFC 8551 prefers AES-GCM (AuthEnvelopedData); a sender whose client writes it must
    not see it delivered as ciphertext the recipient cannot read."""
    message = _openssl_encrypted(pki, tmp_path, "-aes-256-gcm")
    assert b"smime-type=authEnveloped-data" in message
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    assert b"secret quarterly figures" in got.data and b"pkcs7-mime" not in got.data
    assert b"X-Keypost-Decrypted: key=current" in got.data and b"alg=aes256-gcm" in got.data


def test_inbound_3des_is_refused_by_name_and_not_delivered(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    message = _openssl_encrypted(pki, tmp_path, "-des3")
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE], message)
    assert code == 554 and "3DES" in text, text
    assert sink.handler.messages == []


def test_decrypted_8bit_content_is_relayed_with_body_8bitmime(pki: Pki, sink: Sink) -> None:
    """The ciphertext came as 7-bit (no BODY=); the clear text it held is 8-bit, and RFC 6152
    wants 8-bit content announced as BODY=8BITMIME."""
    with running_gateway(pki.config(sink.port)) as gw:
        for body in ("Grüße, secret quarterly figures", "secret quarterly figures"):
            code, text = send(gw.port, "s@outside.test", [ALICE],
                              encrypted_for(pki, pki.current, body=body))
            assert code == 250, text
    eight, seven = sink.handler.messages
    assert "Grüße".encode() in eight.data
    assert eight.mail_options == ["BODY=8BITMIME"]
    assert seven.mail_options == []


def test_8bit_content_the_next_hop_cannot_take_is_refused_not_sent(pki: Pki) -> None:
    """A next hop without 8BITMIME must not get 8-bit bytes (RFC 6152); a retry could not
    fare better, so the refusal is permanent and the sender's MTA bounces with the reason."""
    handler = SinkHandler()
    ctl = EphemeralController(handler, hostname="127.0.0.1", port=0,
                              decode_data=True)  # no 8BITMIME
    ctl.start()
    try:
        with running_gateway(pki.config(ctl.port)) as gw:
            eight = send(gw.port, "s@outside.test", [ALICE],
                         encrypted_for(pki, pki.current, body="Grüße"))
            seven = send(gw.port, "s@outside.test", [ALICE], encrypted_for(pki, pki.current))
    finally:
        ctl.stop()
    assert eight == (554, "5.6.3 the next hop offers no 8BITMIME for 8-bit content")
    assert seven[0] == 250
    [got] = handler.messages
    assert b"secret quarterly figures" in got.data


def test_a_gateway_with_an_ec_key_decrypts_mail_to_its_ec_container(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    """`keypost gateway serve` whose current encryption key is EC P-256 (the retired one
    RSA): mail a keypost sender encrypted to the EC container (a KeyAgreeRecipientInfo,
    next to an RSA recipient's KeyTransRecipientInfo) arrives decrypted, the EC key named;
    mail to the retired RSA key still opens."""
    import shutil

    from cryptography.hazmat.primitives.asymmetric import ec
    from gw_support import serving_gateway, write_private
    from pki_util import key_pem

    from keypost.core.address import parse_address
    from keypost.core.containers import ContainerRequest, GatewayKey
    from keypost.core.types import Purpose

    keys = tmp_path / "keys"
    shutil.copytree(pki.root, keys)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    write_private(keys / "enc-current.key", key_pem(ec_key))
    ec_pki = Pki(keys, pki.ca, pki.current, pki.retired, pki.signing, pki.stranger)
    ec_container = pki.ca.issue(ContainerRequest(parse_address(ALICE), Purpose.ENCRYPT,
                                                 GatewayKey(ec_key.public_key())))
    other = pki.container(pki.stranger, "bob@elsewhere.test")  # an RSA gateway's container
    to_ec = smime.encrypt_message(plain_message(body="figures for the EC key"),
                                  [ec_container, other])
    assert b"pkcs7-mime" in to_ec
    with serving_gateway(ec_pki.config(sink.port, quarantine=str(tmp_path / "q")),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, "sender@outside.test", [ALICE], to_ec)
        assert code == 250, text
        code, text = send(gw.port, "sender@outside.test", [ALICE],
                          encrypted_for(pki, pki.retired, "figures for the retired key"))
        assert code == 250, text
    first, second = sink.handler.wait(2)
    assert b"figures for the EC key" in first.data and b"pkcs7-mime" not in first.data
    header = f"X-Keypost-Decrypted: key=current fingerprint={spki_fingerprint(ec_key)}"
    assert header.encode() in first.data
    assert b"figures for the retired key" in second.data
    assert b"X-Keypost-Decrypted: key=retired-1" in second.data


def test_a_recipient_named_twice_is_given_to_the_next_hop_once(pki: Pki, sink: Sink) -> None:
    """smtplib counts the recipients it refused per address: a recipient named twice and
    refused by the next hop was one refusal for two recipients, so it went on to DATA with
    none, and the sender got the next hop's '503 need RCPT command' instead of its 550. A
    next hop that takes it delivers one copy, not two."""
    sink.handler.refuse = {"gone@example.com"}
    enc = encrypted_for(pki, pki.current)
    with running_gateway(pki.config(sink.port)) as gw:
        code, text = send(gw.port, "s@outside.test", ["gone@example.com"] * 2, enc)
        assert f"{code} {text}".startswith("550 5.1.1 next hop refused"), text
        code, text = send(gw.port, "s@outside.test", [ALICE, ALICE], enc)
        assert code == 250, text
    [got] = sink.handler.messages
    assert got.rcpt_tos == [ALICE]
