"""SIGTERM loses nothing issued: containers and audit records still waiting for the
once-a-second batch write are flushed before `directory serve` exits."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from pathlib import Path

import ldap3
from cryptography import x509
from dir_support import DOMAIN, KEYPOST, SUFFIX, keypost, write_rsa

from keypost.directory.config import DataDir
from keypost.directory.controller import peer_identity, requestor_key
from keypost.directory.store import CacheKey
from keypost.directory.store.sqlite import SqliteStore


def test_sigterm_flushes_every_issued_container(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keypost("directory", "init", "--data", str(data))
    _, pub = write_rsa(tmp_path / "gw.pem")
    keypost("directory", "domain", "add", DOMAIN, "--encryption-cert", str(pub),
            "--data", str(data))
    proc = subprocess.Popen(
        [*KEYPOST, "directory", "serve", "--data", str(data), "--ldap", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    issued: dict[str, x509.Certificate] = {}
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith("listening ldap://"):
                url = line.split()[1].rsplit("/", 1)[0]
            if line.strip() == "ready":
                break
        conn = ldap3.Connection(ldap3.Server(url), auto_bind=True)
        for i in range(30):
            address = f"u{i}@{DOMAIN}"
            conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
            [entry] = conn.response
            [der] = entry["attributes"]["userCertificate;binary"]
            issued[address] = x509.load_der_x509_certificate(der)
        conn.unbind()
    finally:
        proc.send_signal(signal.SIGTERM)  # at once: well inside the 1 s batch interval
        proc.wait(timeout=30)
    assert proc.returncode == 0
    store = SqliteStore(DataDir(data).database)
    try:
        serials = sorted(s for record in store.audit() for s in record.serials)
        assert serials == sorted(c.serial_number for c in issued.values())
        assert store.issued_addresses(dt.datetime.now(dt.UTC)) == set(issued)
        fingerprint = store.domain_keys()[0].fingerprint
        identity = peer_identity("127.0.0.1")  # the anonymous requestor: ldap3 from here
        assert identity is not None
        who = requestor_key(identity)
        for address, cert in issued.items():
            stored = store.issued(CacheKey(address, "proxy-encryption", fingerprint, "encrypt",
                                           who))
            assert stored is not None and stored.serial == cert.serial_number
    finally:
        store.close()

