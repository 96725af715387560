"""A sender's signing containers survive a gateway restart (`state_dir`).

The gateway signs with the container that covers a message's Date; mail dated before the
current container's notBefore (queued while the gateway was down, a client clock behind)
needs the previous one, which a restart used to forget.
"""

from __future__ import annotations

import datetime as dt
import logging
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from gw_directory import DirectoryWorld, keypost, start_directory
from gw_support import (
    KEYPOST,
    Pki,
    Rolling,
    Sink,
    plain_message,
    pub_pem,
    send,
    serving_gateway,
)
from gw_verify import gpgsm_verify, openssl_verify

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.core.containers import (
    DEFAULT_SKEW,
    ContainerRequest,
    DirectoryCA,
    GatewayKey,
    to_pem,
)
from keypost.core.types import Purpose
from keypost.gateway.directory import MAX_SIGNING_CONTAINERS, CachingDirectory
from keypost.gateway.kept import KeptContainers

ALICE, CAROL = "alice@example.com", "carol@elsewhere.net"


def _signed_by(message: bytes, ca_pem: Path) -> x509.Certificate:
    result = smime.verify_signed(message, [x509.load_pem_x509_certificate(ca_pem.read_bytes())])
    assert result.ok, result.reasons
    assert result.signer is not None
    return result.signer


def _dated(when: dt.datetime, subject: str) -> bytes:
    return plain_message(ALICE, CAROL, subject=f"[sign] {subject}", body=subject, date=when)


def test_a_previous_signing_container_still_signs_after_a_restart(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    """Mail dated before alice's current signing container is signed with the previous one
    after a restart, as it is without one; both verify with openssl and gpgsm."""
    (tmp_path / "directory").mkdir()
    world = start_directory(tmp_path / "directory", pki)  # its own: it is rekeyed below
    try:
        cfg = pki.config(sink.port, directory=world.gateway_directory_lines(),
                         folder=tmp_path)
        with serving_gateway(cfg, tmp_path / "first.log") as gw:
            code, text = send(gw.port, ALICE, [CAROL], _dated(dt.datetime.now(dt.UTC), "first"))
        assert code == 250, text
        first = _signed_by(sink.handler.messages[0].data, world.ca_pem)
        # The directory hands out a new container (in production at half-life; here the
        # domain's keys are registered again, with other capabilities, which drops the
        # containers it issued). Wait until one issued now starts a second later.
        keypost("directory", "domain", "rekey", "example.com", "--data",
                str(world.root / "data"), "--encryption-cert", str(pki.path("enc-current.pub")),
                "--signing-cert", str(pki.path("sign.pub")), "--capabilities", "aes128-cbc")
        while dt.datetime.now(dt.UTC) < first.not_valid_before_utc + DEFAULT_SKEW + dt.timedelta(
                seconds=1):
            time.sleep(0.1)
        queued = first.not_valid_before_utc  # a Date only the first container covers
        with serving_gateway(cfg, tmp_path / "second.log") as gw:
            code, text = send(gw.port, ALICE, [CAROL], _dated(queued, "queued"))
            assert code == 250, text
            code, text = send(gw.port, ALICE, [CAROL], _dated(dt.datetime.now(dt.UTC), "new"))
            assert code == 250, text
        old, new = (m.data for m in sink.handler.messages[1:])
        newest = _signed_by(new, world.ca_pem)
        assert newest != first and newest.not_valid_before_utc > queued  # it did change
        assert _signed_by(old, world.ca_pem) == first
        done = openssl_verify(old, world.ca_pem, tmp_path)
        assert done.returncode == 0, done.stderr
        assert b"queued" in done.stdout
        done = gpgsm_verify(old, world.ca_pem, tmp_path)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"Good signature" in done.stderr
    finally:
        world.stop()
    # public certificates only, for the gateway's user alone
    folder = tmp_path / "state" / "signing-containers"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    [kept] = folder.iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_bytes() == to_pem(newest) + to_pem(first)


def test_a_corrupt_state_file_is_logged_and_the_gateway_starts_without_it(
    pki: Pki, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    cfg = pki.config(sink.port, directory=world.gateway_directory_lines(),
                     folder=tmp_path)
    folder = tmp_path / "state" / "signing-containers"
    folder.mkdir(parents=True)
    corrupt = folder / (KeptContainers(folder).name(parse_address(ALICE)))
    corrupt.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    log = tmp_path / "gateway.log"
    with serving_gateway(cfg, log) as gw:
        code, text = send(gw.port, ALICE, [CAROL], _dated(dt.datetime.now(dt.UTC), "after"))
    assert code == 250, text
    _signed_by(sink.handler.messages[0].data, world.ca_pem)
    lines = [line for line in log.read_text().splitlines() if corrupt.name in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "unreadable" in lines[0], lines
    assert b"not base64" not in corrupt.read_bytes()  # replaced by what the gateway signed with


# --- the store under CachingDirectory, with a fake clock ------------------------------


def _directory(pki: Pki, kept: KeptContainers, clock: list[dt.datetime],
               answer: Rolling | None = None) -> CachingDirectory:
    fetcher = answer or Rolling(lambda: [pki.signing_container(clock[0])])
    return CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0], kept=kept)


def test_kept_containers_come_back_in_a_new_directory_client(pki: Pki, tmp_path: Path) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    kept = KeptContainers(tmp_path / "kept")
    alice = parse_address(ALICE)
    [first] = _directory(pki, kept, clock).signing_containers(alice)
    clock[0] = t0 + dt.timedelta(days=15, minutes=1)  # a new container, after a restart
    second, previous = _directory(pki, KeptContainers(tmp_path / "kept"), clock) \
        .signing_containers(alice)
    assert previous == first and second.not_valid_before_utc > first.not_valid_before_utc
    # expired ones are neither loaded nor kept
    clock[0] = first.not_valid_after_utc + dt.timedelta(seconds=1)
    assert KeptContainers(tmp_path / "kept").load(alice, clock[0]) == [second]


def test_kept_containers_are_bounded_per_sender_and_in_all(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    alice = parse_address(ALICE)
    d = _directory(pki, KeptContainers(tmp_path / "kept"), clock, Rolling(
        lambda: [pki.signing_container(clock[0] - dt.timedelta(days=14))]))
    for _ in range(2 * MAX_SIGNING_CONTAINERS):
        d.signing_containers(alice)
        clock[0] += dt.timedelta(days=1, minutes=1)
    assert len(KeptContainers(tmp_path / "kept").load(alice, clock[0])) == MAX_SIGNING_CONTAINERS
    # senders beyond the limit are served, just not written down
    monkeypatch.setattr("keypost.gateway.kept.MAX_KEPT_SENDERS", 3)  # alice's file is one
    kept = KeptContainers(tmp_path / "kept")
    d = CachingDirectory(PerAddress(pki, clock), [pki.ca.certificate], clock=lambda: clock[0],
                         kept=kept)
    with caplog.at_level(logging.WARNING, "keypost.gateway.kept"):
        for who in ("bob", "carl", "dora"):
            assert len(d.signing_containers(parse_address(f"{who}@example.com"))) == 1
    assert len(list((tmp_path / "kept").iterdir())) == 3
    assert kept.load(parse_address("dora@example.com"), clock[0]) == []
    [warning] = [r.getMessage() for r in caplog.records]
    assert "3 senders" in warning and "dora" not in warning


class PerAddress:
    """A directory fetcher handing out a signing container for the address asked."""

    def __init__(self, pki: Pki, clock: list[dt.datetime]) -> None:
        self.pki, self.clock = pki, clock

    def fetch(self, address: object, purpose: Purpose) -> list[x509.Certificate]:
        return [self.pki.signing_container(self.clock[0], str(address))]


def test_prune_drops_expired_and_unreadable_files(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    kept = KeptContainers(tmp_path / "kept")
    kept.ensure()
    alice, bob = parse_address(ALICE), parse_address("bob@example.com")
    old = pki.signing_container(t0 - dt.timedelta(days=40), ALICE)
    valid = pki.signing_container(t0, "bob@example.com")
    kept.save(alice, [old])
    kept.save(bob, [valid])
    (tmp_path / "kept" / "junk.pem").write_bytes(b"garbage")
    (tmp_path / "kept" / ".interrupted.tmp").write_bytes(b"half a write")
    with caplog.at_level(logging.WARNING, "keypost.gateway.kept"):
        kept.prune(t0)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [kept.name(bob)]
    assert any("junk.pem" in r.getMessage() and "unreadable" in r.getMessage()
               for r in caplog.records)
    assert kept.load(bob, t0) == [valid]


def test_a_kept_container_not_from_the_trust_anchor_is_not_used(
    pki: Pki, tmp_path: Path
) -> None:
    """The state folder is no trust anchor: what it holds is verified like an answer."""
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rogue = DirectoryCA.generate(common_name="keypost directory CA")  # same name, other key
    alice = parse_address(ALICE)
    forged = rogue.issue(ContainerRequest(alice, Purpose.SIGN,
                                          GatewayKey.from_pem(pub_pem(pki.signing)),
                                          dt.timedelta(days=30)), now=t0 - dt.timedelta(days=1))
    kept = KeptContainers(tmp_path / "kept")
    kept.ensure()
    kept.save(alice, [forged])
    [current] = _directory(pki, kept, [t0]).signing_containers(alice)
    assert current != forged


def test_check_config_warns_when_the_state_folder_cannot_be_made(
    pki: Pki, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("in the way")
    cfg = pki.config(sink.port, directory=world.gateway_directory_lines(), folder=tmp_path,
                     extra='state_dir = "afile/state"')
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (f"warning: state_dir: {tmp_path / 'afile'} is not a folder: senders' previous "
            "signing containers will be forgotten at each restart") in done.stdout
    assert "configuration OK" in done.stdout
