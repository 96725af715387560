"""DecryptResult.opened_by: the RecipientInfos whose wrapped key is the content key, i.e.
those that the key which opened the message was meant by; the gateway's recipient
binding checks their containers. Messages from our engine and from `openssl cms`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_smime_pki import container, ec_gateway, gateway, pem

from keypost.core import smime

ENTITY = b"Content-Type: text/plain\r\n\r\nfor bob and carol\r\n"
MESSAGE = b"From: a@a.example\r\nTo: bob@b.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n" + ENTITY


def _ids(result: smime.DecryptResult) -> list[tuple[int | None, bool]]:
    """In serial order: DER sorts the SET OF RecipientInfos by their encoding."""
    return sorted(((r.serial, r.ski is not None) for r in result.opened_by),
                  key=lambda i: i[0] or 0)


def test_every_recipient_info_of_the_key_that_opened_it_and_no_other() -> None:
    ours, theirs = gateway(), gateway("gw.c.example")
    bob, carol = container("bob@b.example", ours), container("carol@b.example", ours)
    dave = container("dave@c.example", theirs)
    message = smime.encrypt_message(MESSAGE, [bob, dave, carol])
    result = smime.Decryptor([ours.key]).decrypt_message(message)
    assert _ids(result) == sorted([(bob.serial_number, False), (carol.serial_number, False)])
    assert {r.issuer for r in result.opened_by} == {bob.issuer}
    other = smime.Decryptor([theirs.key]).decrypt_message(message)
    assert _ids(other) == [(dave.serial_number, False)]


def test_an_ec_key_names_its_recipient_encrypted_keys() -> None:
    """ECDH key agreement: each RecipientEncryptedKey names a container like a KTRI does;
    those of an RSA gateway in the same message are not ours."""
    ours, rsa_gateway = ec_gateway("P-384", "gw-ec-opened.b.example"), gateway("gw.c.example")
    bob, carol = container("bob@b.example", ours), container("carol@b.example", ours)
    dave = container("dave@c.example", rsa_gateway)
    message = smime.encrypt_message(MESSAGE, [bob, dave, carol])
    result = smime.Decryptor([ours.key]).decrypt_message(message)
    assert _ids(result) == sorted([(bob.serial_number, False), (carol.serial_number, False)])
    assert {r.issuer for r in result.opened_by} == {bob.issuer}
    other = smime.Decryptor([rsa_gateway.key]).decrypt_message(message)
    assert _ids(other) == [(dave.serial_number, False)]


def test_a_retired_key_names_its_own_recipient_infos() -> None:
    old, new = gateway(), gateway("gw-new")
    bob = container("bob@b.example", old)
    result = smime.Decryptor([new.key, old.key]).decrypt_message(
        smime.encrypt_message(MESSAGE, [bob]))
    assert result.key_index == 1 and _ids(result) == [(bob.serial_number, False)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("options", [["-aes256"], ["-aes-256-gcm"]])
def test_openssl_subject_key_identifier_recipient_infos_are_named_by_ski(
        tmp_path: Path, options: list[str]) -> None:
    ours = gateway()
    (tmp_path / "bob.pem").write_bytes(pem(container("bob@b.example", ours)))
    (tmp_path / "entity").write_bytes(ENTITY)
    done = subprocess.run(
        ["openssl", "cms", "-encrypt", *options, "-binary", "-in", str(tmp_path / "entity"),
         "-recip", str(tmp_path / "bob.pem"), "-keyid"],
        capture_output=True, timeout=60, check=True)
    result = smime.Decryptor([ours.key]).decrypt_message(b"Subject: s\r\n" + done.stdout)
    assert _ids(result) == [(None, True)]
    assert result.opened_by[0].issuer is None
