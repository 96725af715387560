"""`keypost start` (the README's first command) comes up, and its printed ldapsearch line
works; SIGTERM stops it and its children."""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dir_support import KEYPOST


def _read_until_ldapsearch(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.strip().startswith("ldapsearch ") or time.monotonic() > deadline:
            break
    return lines


def test_keypost_start_prints_a_working_ldapsearch_line(tmp_path: Path) -> None:
    data = tmp_path / "kp"
    proc = subprocess.Popen(
        [*KEYPOST, "start", "--data", str(data), "--ldap-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = _read_until_ldapsearch(proc, time.monotonic() + 120)
        text = "\n".join(lines)
        assert lines and lines[-1].strip().startswith("ldapsearch "), text
        assert "trust anchor SHA-256" in text and "http://127.0.0.1:" in text
        done = subprocess.run(shlex.split(lines[-1].strip()), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "dn: mail=alice@example.com,dc=keypost" in done.stdout
        unfolded = done.stdout.replace("\n ", "")  # LDIF continuation lines
        [value] = [line.split(":: ", 1)[1] for line in unfolded.splitlines()
                   if line.lower().startswith("usercertificate")]
        cert = x509.load_der_x509_certificate(base64.b64decode(value))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
        public = (data / "demo/gateway-encryption-public.pem").read_bytes()
        assert cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == public

        # The demo's password file as ldapsearch takes one (-y: the whole file, no newline)
        argv = shlex.split(lines[-1].strip())
        bound = subprocess.run(
            [*argv[:2], "-D", "uid=alice,dc=keypost", "-y", str(data / "demo/alice-password"),
             *argv[2:]], capture_output=True, text=True, timeout=60)
        assert bound.returncode == 0, bound.stderr
        assert "dn: mail=alice@example.com,dc=keypost" in bound.stdout

        for secret in ("demo/gateway-encryption-key.pem", "demo/gateway-signing-key.pem",
                       "demo/alice-password", "directory/ca-key.pem"):
            assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600, secret
        port = int(lines[-1].split("ldap://127.0.0.1:")[1].split()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    with socket.socket() as s:  # the directory child is gone too
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_second_start_reuses_the_data(tmp_path: Path) -> None:
    data = tmp_path / "kp"
    argv = [*KEYPOST, "start", "--data", str(data), "--ldap-port", "0", "--http-port", "0"]
    for run in range(2):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            text = "\n".join(_read_until_ldapsearch(proc, time.monotonic() + 120))
            assert ("first run" in text) == (run == 0), text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert sys.executable  # the same interpreter ran both
