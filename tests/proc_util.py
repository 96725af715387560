"""Stopping the real servers the tests start: politely first, then for sure."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
from pathlib import Path


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL: no server outlives its test."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_directory_serve(data: Path, log: Path, *extra: str,
                          timeout: float = 60) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`keypost directory serve --data DATA` with every listener on an ephemeral loopback
    port (`--ldap/--http` always, `--ldaps/--https` when `extra` gives --tls-cert): the
    server binds port 0 and prints `listening <url>` lines, then `ready`. No port is picked
    beforehand, so none can be taken in between (a free-port probe raced with other
    processes' outgoing connections). stderr goes to `log`, read when it fails to start.
    -> (process, {scheme: URL as printed}); `port_of` reads a port from one."""
    listeners = ["--ldap", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    if "--tls-cert" in extra:
        listeners += ["--ldaps", "127.0.0.1:0", "--https", "127.0.0.1:0"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keypost.core.cli", "directory", "serve", "--data",
             str(data), *listeners, *extra],
            stdout=subprocess.PIPE, stderr=err, text=True)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("listening "):
            url = line.split()[1]
            urls[url.split("://")[0]] = url
        if line.strip() == "ready" or time.monotonic() > deadline:
            break
    else:
        stop(proc)
        raise AssertionError("directory serve exited: " + log.read_text(errors="replace"))
    if len(urls) < len(listeners) // 2:
        stop(proc)
        raise AssertionError(f"directory serve listens on {urls} only: "
                             + log.read_text(errors="replace"))
    return proc, urls


def port_of(url: str) -> int:
    return int(urllib.parse.urlsplit(url).port or 0)
