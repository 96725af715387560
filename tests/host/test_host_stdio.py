"""End to end: a `keypost host` process over stdio, as Thunderbird runs it, against a real
directory: ping, garbage, configure, lookup, a chunked encrypt reply that the gateways
decrypt, and no password anywhere but the keyring."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from host_support import KEYPOST, PASSWORD, Directory, GatewayKeys, host_env

from keypost.core import smime
from keypost.host.framing import ChunkAssembler, FrameDecoder, Message, encode_frame

ATTACHMENT = os.urandom(1_200_000)  # the encrypted reply is ~1.7 MB: must come in chunks


class HostProcess:
    """Speaks the native messaging framing to a host subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin: IO[bytes] = proc.stdin
        self.stdout: IO[bytes] = proc.stdout
        self.decoder = FrameDecoder(max_size=1 << 20)
        self.pending: list[dict[str, Any]] = []
        self.frame_sizes: list[int] = []

    def send_raw(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def frame(self) -> dict[str, Any]:
        while not self.pending:
            header = self.stdout.read(4)
            assert len(header) == 4, "host closed stdout"
            (length,) = struct.unpack("=I", header)
            self.frame_sizes.append(length + 4)
            body = self.stdout.read(length)
            for ev in self.decoder.feed(header + body):
                assert isinstance(ev, Message)
                self.pending.append(ev.value)
        return self.pending.pop(0)

    def reply(self) -> dict[str, Any]:
        asm = ChunkAssembler()
        while True:
            done = asm.add(self.frame())
            if done is not None:
                return done

    def request(self, rid: int, action: str, **params: Any) -> dict[str, Any]:
        self.send_raw(encode_frame({"id": rid, "action": action, "params": params}))
        reply = self.reply()
        assert reply["id"] == rid
        return reply


@pytest.fixture
def host_process(tmp_path: Path) -> Iterator[tuple[HostProcess, Path]]:
    env = host_env(tmp_path / "config", tmp_path / "cache", tmp_path / "data")
    # Thunderbird starts the host with the manifest path and the add-on id.
    proc = subprocess.Popen(
        [KEYPOST, "host", str(tmp_path / "keypost.json"), "keypost@example.org"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    timer = threading.Timer(120, proc.kill)  # never hang the suite on a stuck host
    timer.start()
    try:
        yield HostProcess(proc), tmp_path
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_host_process_end_to_end(
    host_process: tuple[HostProcess, Path], directory: Directory, gateway_keys: GatewayKeys
) -> None:
    host, tmp = host_process
    pong = host.request(1, "ping", protocol=1, version="0.1.0")
    assert pong["ok"] and pong["result"]["protocol"] == 1

    host.send_raw(struct.pack("=I", 5) + b"{oops")  # garbage: answered, stream survives
    bad = host.reply()
    assert bad["id"] is None and bad["error"]["code"] == 1

    configured = host.request(2, "configure", directory=directory.ldap_url, username="alice",
                              password=PASSWORD, trust_anchor_pem=directory.anchor_pem,
                              trust_anchor_fingerprint=directory.fingerprint)
    assert configured["ok"], configured
    assert configured["result"]["password_in_keyring"] is True

    looked = host.request(3, "lookup", recipients=["bob@example.org", "nobody@example.net"],
                          **{"from": "alice@example.com"})
    assert [r["status"] for r in looked["result"]["recipients"]] == ["ok", "ok"]

    host.frame_sizes.clear()
    enc = host.request(4, "encrypt", **{
        "from": "Alice <alice@example.com>", "to": ["bob@example.org"],
        "bcc": ["hidden@example.org"], "subject": "Big", "body_plain": "See attachment.",
        "attachments": [{"name": "blob.bin", "content_type": "application/octet-stream",
                         "data_base64": base64.b64encode(ATTACHMENT).decode()}],
        "for_outbox": True})
    assert enc["ok"], enc.get("error")
    assert len(host.frame_sizes) > 1 and max(host.frame_sizes) < 768 * 1024
    message = enc["result"]["message"].encode()
    assert smime.is_encrypted(message)
    outer = email.message_from_bytes(message, policy=email.policy.default)
    # The Outbox copy names the Bcc recipient outside (Thunderbird strips it before sending).
    assert outer["Bcc"] == "hidden@example.org"
    der = outer.get_payload(decode=True)
    assert isinstance(der, bytes)
    for domain in ("example.com", "example.org"):
        decryptor = smime.Decryptor([gateway_keys.keys[domain]])
        entity, _, _ = decryptor.decrypt_der(der)
        assert b"hidden@example.org" not in entity
        assert re.search(rb"(?im)^bcc:", entity) is None
        clear = decryptor.decrypt_message(message).message
        inner = email.message_from_bytes(clear, policy=email.policy.default)
        [blob] = [p for p in inner.walk() if p.get_filename() == "blob.bin"]
        assert blob.get_payload(decode=True) == ATTACHMENT

    refused = host.request(5, "encrypt", **{
        "from": "alice@example.com", "to": ["x@@example.org"], "body_plain": "no"})
    assert refused["error"]["code"] == 10

    host.stdin.close()  # the add-on disconnects: the host exits cleanly
    assert host.proc.wait(30) == 0
    # The password went to the keyring file only: not the config, cache, log or stderr.
    stderr = host.proc.stderr.read() if host.proc.stderr else b""
    assert PASSWORD.encode() not in stderr
    keyring_files = set((tmp / "data").rglob("*"))
    checked = 0
    for path in tmp.rglob("*"):
        if path.is_file() and path not in keyring_files:
            assert PASSWORD.encode() not in path.read_bytes(), path
            checked += 1
    log = (tmp / "cache" / "host.log").read_text()
    assert "configure id=2 -> ok" in log and "encrypt id=5 -> no_valid_container" in log
    assert checked >= 4  # host.toml, trust anchor, containers.json, host.log


def _configure_with_password(tmp_path: Path, env: dict[str, str],
                             directory: Directory) -> dict[str, Any]:
    """A `keypost host` in `env`: status must answer, then configure alice with a password;
    returns configure's reply."""
    proc = subprocess.Popen(
        [KEYPOST, "host", str(tmp_path / "keypost.json"), "keypost@example.org"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        host = HostProcess(proc)
        status = host.request(1, "status")
        assert status["ok"], status
        return host.request(2, "configure", directory=directory.ldap_url,
                            username="alice", password=PASSWORD,
                            trust_anchor_pem=directory.anchor_pem,
                            trust_anchor_fingerprint=directory.fingerprint)
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("backend", ["", "no.such.module.Keyring"])
def test_keyring_backend_that_cannot_be_loaded(tmp_path: Path, backend: str,
                                               directory: Directory) -> None:
    """PYTHON_KEYRING_BACKEND naming nothing loadable: status still answers (password state
    unknown) and configure with a password says the keyring is unavailable, code 6, instead
    of an internal error."""
    env = host_env(tmp_path / "config", tmp_path / "cache", tmp_path / "data")
    env["PYTHON_KEYRING_BACKEND"] = backend
    configured = _configure_with_password(tmp_path, env, directory)
    assert not configured["ok"]
    assert configured["error"]["code"] == 6, configured
    assert "PYTHON_KEYRING_BACKEND" in configured["error"]["message"]
    assert PASSWORD not in str(configured)


def test_a_plain_file_keyring_chosen_by_default_is_refused(tmp_path: Path,
                                                           directory: Directory) -> None:
    """With keyrings.alt installed (the test extra puts it into the same .venv that
    `keypost start` uses) and no OS keyring running, keyring's own choice is its
    PlaintextKeyring: the password went into ~/.local/share/python_keyring/keyring_pass.cfg
    in base64, and `configure` said it was in the OS keyring. Now refused, code 6; naming
    the backend in PYTHON_KEYRING_BACKEND (as the other tests do) still accepts it."""
    env = host_env(tmp_path / "config", tmp_path / "cache", tmp_path / "data")
    del env["PYTHON_KEYRING_BACKEND"]
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # no Secret Service: keyring picks by priority
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")  # and no keyringrc.cfg
    chosen = subprocess.run(
        [sys.executable, "-c", "import keyring; print(type(keyring.get_keyring()).__name__)"],
        capture_output=True, text=True, env=env, timeout=60, check=True).stdout.strip()
    assert chosen == "PlaintextKeyring"  # the situation this test is about
    configured = _configure_with_password(tmp_path, env, directory)
    assert not configured["ok"]
    assert configured["error"]["code"] == 6, configured
    assert "plain file" in configured["error"]["message"], configured
    assert "PYTHON_KEYRING_BACKEND" in configured["error"]["message"]
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for f in (tmp_path / "data").rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert encoded not in text and PASSWORD not in text, f
