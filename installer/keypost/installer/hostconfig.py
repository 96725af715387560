"""Configure the native messaging host the way the add-on does: start it and speak PROTOCOL.md.

The host stays the only writer of its config files and keyring entry; the installer never
imports keypost.host (components talk like strangers), it runs it as a subprocess.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from keypost.core.errors import KeypostError

_LEN = struct.Struct("=I")  # native byte order, as Thunderbird frames it
PROTOCOL = 1  # PROTOCOL.md's version this installer speaks (a host of another refuses ping)


class HostError(KeypostError):
    """The host answered with an error (PROTOCOL.md code and name kept) or could not be run."""

    def __init__(self, message: str, code: int = 0, name: str = "host_unavailable") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


def encode(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj).encode("utf-8")
    return _LEN.pack(len(data)) + data


def decode_replies(data: bytes) -> list[dict[str, Any]]:
    """Complete replies in a host output stream, chunked replies joined (PROTOCOL.md)."""
    replies: list[dict[str, Any]] = []
    parts: list[str] = []
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > len(data):
            raise HostError("the host's reply was cut short")
        frame = json.loads(data[pos : pos + n].decode("utf-8"))
        pos += n
        chunk = frame.get("chunk") if isinstance(frame, dict) else None
        if isinstance(chunk, dict):
            parts.append(str(chunk.get("data", "")))
            if len(parts) == int(chunk.get("count", 0)):
                replies.append(json.loads("".join(parts)))
                parts = []
            continue
        replies.append(frame)
    return replies


def host_command(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "keypost.host"]


def call(
    requests: Sequence[tuple[str, dict[str, Any]]],
    command: Sequence[str] | None = None,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Send the requests to one host process; return each result in order or raise HostError."""
    frames = b"".join(
        encode({"id": i, "action": action, "params": params})
        for i, (action, params) in enumerate(requests, start=1)
    )
    try:
        proc = subprocess.run(
            list(command or host_command()),
            input=frames,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"could not run the keypost host: {exc}") from exc
    by_id = {r.get("id"): r for r in decode_replies(proc.stdout) if isinstance(r, dict)}
    results = []
    for i, (action, _params) in enumerate(requests, start=1):
        reply = by_id.get(i)
        if reply is None:
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [
                "no output"
            ]
            raise HostError(f"the keypost host gave no answer to {action}: {detail[0]}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise HostError(
                f"{action}: {err.get('message', 'failed')}",
                int(err.get("code", 0)),
                str(err.get("name", "")),
            )
        results.append(reply.get("result"))
    return results


def ping(command: Sequence[str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Start the host and exchange versions: proves the command runs *this* keypost's host
    without touching its configuration or the OS keyring (`status` reads the keyring)."""
    (result,) = call([("ping", {"protocol": PROTOCOL})], command=command, timeout=timeout)
    out: dict[str, Any] = result
    return out


def configure(
    directory: str,
    username: str | None = None,
    password: str | None = None,
    trust_anchor_pem: str | None = None,
    trust_anchor_fingerprint: str | None = None,
    test: bool = True,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `configure`; returns the host's status. The password only travels over the pipe."""
    params: dict[str, Any] = {"directory": directory, "username": username or None, "test": test}
    if password is not None:
        params["password"] = password
    if trust_anchor_pem is not None:
        params["trust_anchor_pem"] = trust_anchor_pem
    if trust_anchor_fingerprint:
        params["trust_anchor_fingerprint"] = trust_anchor_fingerprint
    (status,) = call([("configure", params)], command=command, env=env)
    result: dict[str, Any] = status
    return result


def status(
    command: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    (result,) = call([("status", {})], command=command, env=env)
    out: dict[str, Any] = result
    return out
