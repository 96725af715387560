"""Starting the real keypost servers the tests run, on ports the kernel picks, and stopping
them: politely first, then for sure."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL: no server outlives its test."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serving(argv: list[str], log: Path, what: str, timeout: float,
             preexec_fn: Callable[[], None] | None = None,
             ) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start a keypost server whose listeners all bind port 0 and read what it prints
    until `ready`: each `listening <url>` line names a port the kernel gave it, so no port
    is picked beforehand and none can be taken in between (a free-port probe raced with
    other processes' outgoing connections). stderr goes to `log`, read when it fails to
    start. `preexec_fn` runs in the child before it starts (e.g. to set a resource
    limit). -> (process, {scheme: URL as printed})."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "keypost.core.cli", *argv],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=preexec_fn)
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    # a start that hangs without printing must not hang the session: killed, it ends stdout
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("listening "):
                url = line.split()[1]
                urls[url.split("://")[0]] = url
            if line.strip() == "ready":
                break
        else:
            stop(proc)
            raise AssertionError(f"{what} exited or hung ({timeout} s): "
                                 + log.read_text(errors="replace"))
    finally:
        timer.cancel()
    return proc, urls


def start_directory_serve(data: Path, log: Path, *extra: str, timeout: float = 60,
                          preexec_fn: Callable[[], None] | None = None,
                          ports: Mapping[str, int] | None = None,
                          ) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`keypost directory serve --data DATA` with every listener on an ephemeral loopback
    port (`--ldap/--http` always, `--ldaps/--https` when `extra` gives --tls-cert), started
    by `_serving`; `ports` ({scheme: port}) fixes some, for a restart where the last run
    listened (the clients' configurations name those). -> (process, {scheme: URL as
    printed}); `port_of` reads a port from one."""
    schemes = ["ldap", "http"] + (["ldaps", "https"] if "--tls-cert" in extra else [])
    listeners = [arg for scheme in schemes
                 for arg in (f"--{scheme}", f"127.0.0.1:{(ports or {}).get(scheme, 0)}")]
    proc, urls = _serving(["directory", "serve", "--data", str(data), *listeners, *extra],
                          log, "directory serve", timeout, preexec_fn)
    if len(urls) < len(listeners) // 2:
        stop(proc)
        raise AssertionError(f"directory serve listens on {urls} only: "
                             + log.read_text(errors="replace"))
    return proc, urls


def start_gateway_serve(config: Path, log: Path, timeout: float = 60,
                        preexec_fn: Callable[[], None] | None = None,
                        ) -> tuple[subprocess.Popen[str], int]:
    """`keypost gateway serve --config CONFIG`, whose `listen` names port 0 (as the tests'
    configurations do unless a fixed port is the point), started by `_serving`: the port
    comes from its `listening smtp://HOST:PORT` line. -> (process, port)."""
    proc, urls = _serving(["gateway", "serve", "--config", str(config)], log,
                          "gateway serve", timeout, preexec_fn)
    if "smtp" not in urls:
        stop(proc)
        raise AssertionError("gateway serve printed no listening line: "
                             + log.read_text(errors="replace"))
    return proc, port_of(urls["smtp"])


def port_of(url: str) -> int:
    return int(urllib.parse.urlsplit(url).port or 0)


def origin_of(url: str) -> str:
    """`scheme://host:port` of a URL as printed (`ldap://127.0.0.1:N/dc=keypost` -> without
    the base, `http://127.0.0.1:N/` -> without the slash)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
