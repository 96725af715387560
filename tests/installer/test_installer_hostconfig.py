"""Talking to the host as a subprocess: framing, chunk reassembly, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import pytest

from keypost.installer import hostconfig

# A stand-in host that answers like PROTOCOL.md says, including a chunked reply; it lets the
# installer's client be tested on its own. The real host is exercised further below.
FAKE_HOST = r"""
import json, struct, sys
L = struct.Struct("=I")
def send(obj):
    b = json.dumps(obj).encode()
    sys.stdout.buffer.write(L.pack(len(b)) + b)
data = sys.stdin.buffer.read()
pos = 0
while pos < len(data):
    (n,) = L.unpack_from(data, pos); pos += 4
    req = json.loads(data[pos:pos+n]); pos += n
    if req["action"] == "status":
        text = json.dumps({"id": req["id"], "ok": True, "result": {"big": "x" * 5000}})
        parts = [text[i:i + 700] for i in range(0, len(text), 700)]
        for i, p in enumerate(parts):
            send({"id": req["id"], "chunk": {"index": i, "count": len(parts), "data": p}})
    elif req["action"] == "configure":
        send({"id": req["id"], "ok": False, "error": {"code": 9, "name": "trust_anchor_mismatch",
              "message": "fingerprint differs"}})
    else:
        send({"id": req["id"], "ok": True, "result": req["params"]})
"""


@pytest.fixture
def fake_host(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_host.py"
    script.write_text(FAKE_HOST, "utf-8")
    return [sys.executable, str(script)]


def test_replies_in_order_with_chunks_joined(fake_host: list[str]) -> None:
    echo, status = hostconfig.call([("ping", {"protocol": 1}), ("status", {})], command=fake_host)
    assert echo == {"protocol": 1}
    assert status == {"big": "x" * 5000}


def test_error_reply_keeps_code_and_name(fake_host: list[str]) -> None:
    with pytest.raises(hostconfig.HostError) as info:
        hostconfig.configure("ldaps://d.example", trust_anchor_pem="x", command=fake_host)
    assert (info.value.code, info.value.name) == (9, "trust_anchor_mismatch")
    assert "fingerprint differs" in str(info.value)


def test_missing_host_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(hostconfig.HostError, match="could not run"):
        hostconfig.call([("status", {})], command=[str(tmp_path / "nope")])


def test_truncated_output_is_detected() -> None:
    frame = hostconfig.encode({"id": 1, "ok": True, "result": 1})
    assert hostconfig.decode_replies(frame) == [{"id": 1, "ok": True, "result": 1}]
    with pytest.raises(hostconfig.HostError, match="cut short"):
        hostconfig.decode_replies(frame[:-3])
    assert struct.unpack("=I", frame[:4])[0] == len(frame) - 4


def test_real_host_status_when_unconfigured(tmp_path: Path) -> None:
    if importlib.util.find_spec("keypost.host.__main__") is None:
        pytest.skip("keypost.host has no __main__ yet (engineer E's host)")
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "KEYPOST_CONFIG_DIR": str(tmp_path / "cfg"),
        "KEYPOST_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
    }
    status = hostconfig.status(env=env)
    assert status["configured"] is False
    assert status["directory"] is None
    json.dumps(status)  # plain JSON all the way
