"""`keypost start`: first-run demo setup and all services on loopback, as child processes.

Components talk like strangers: this module drives `keypost directory ...` through the
command line (never imports keypost.directory) and reads what the services print. To add
a service, write a function returning a `Service` and append it in `services()`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keypost.core.errors import KeypostError

DEMO_DOMAIN = "example.com"
DEMO_USER = "alice"
DEMO_GATEWAY_ACCOUNT = "gateway"
LDAP_PORT = 3890
HTTP_PORT = 8080
READY_TIMEOUT = 60.0


class StartError(KeypostError):
    """A step of `keypost start` failed (the message names the step)."""


def keypost(*args: str) -> list[str]:
    """argv running this installation's keypost command (same interpreter, same venv)."""
    return [sys.executable, "-m", "keypost.core.cli", *args]


def run_step(argv: Sequence[str], stdin: bytes | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise StartError(message[-1] if message else f"{' '.join(argv[3:5])} failed")
    return done.stdout.decode("utf-8", "replace")


def write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class Layout:
    """Where `keypost start` keeps things inside --data."""

    root: Path

    @property
    def directory(self) -> Path:
        return self.root / "directory"

    @property
    def demo(self) -> Path:
        """Demo secrets: gateway private keys, account passwords (all mode 0600)."""
        return self.root / "demo"


def _gateway_key(demo: Path, use: str) -> Path:
    """An RSA-3072 key pair for the demo gateway; returns the public key file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    write_private(demo / f"gateway-{use}-key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = demo / f"gateway-{use}-public.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def _account(layout: Layout, name: str, role: str) -> None:
    password = secrets.token_urlsafe(18)
    run_step(keypost("directory", "account", "add", name, "--role", role, "--domain",
                     DEMO_DOMAIN, "--password-stdin", "--data", str(layout.directory)),
             stdin=password.encode() + b"\n")
    # No newline: `ldapsearch -y FILE` sends the file whole (a newline made it a wrong
    # password); the gateway's password_file reads the first line either way.
    write_private(layout.demo / f"{name}-password", password.encode())


def first_run(layout: Layout) -> bool:
    """Create the demo directory once; False when it already exists. All or nothing: a
    set-up that fails or is interrupted removes what it created, so the next start does
    not take a half-made demo (no gateway account) for a finished one."""
    if (layout.directory / "directory.toml").exists():
        if not _finished(layout):
            raise StartError(
                f"the demo set-up in {layout.root} did not finish: remove {layout.directory}"
                f" and {layout.demo}, then run keypost start again"
            )
        return False
    created = [p for p in (layout.directory, layout.demo) if not p.exists()]
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.demo.mkdir(mode=0o700, exist_ok=True)
    print(f"first run: setting up a demo in {layout.root} ...", flush=True)
    try:
        run_step(keypost("directory", "init", "--data", str(layout.directory)))
        encryption = _gateway_key(layout.demo, "encryption")
        signing = _gateway_key(layout.demo, "signing")
        run_step(keypost("directory", "domain", "add", DEMO_DOMAIN, "--encryption-cert",
                         str(encryption), "--signing-cert", str(signing),
                         "--data", str(layout.directory)))
        _account(layout, DEMO_USER, "user")
        _account(layout, DEMO_GATEWAY_ACCOUNT, "gateway")  # last: its file marks "finished"
    except BaseException:
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return True


def _finished(layout: Layout) -> bool:
    return (layout.demo / f"{DEMO_GATEWAY_ACCOUNT}-password").is_file()


def free_port(preferred: int) -> int:
    """`preferred` when it is free on loopback, else 0 (the service picks one)."""
    if preferred == 0:
        return 0
    with socket.socket() as s:
        # As the servers bind (asyncio sets it on POSIX): a port whose last connections
        # wait in TIME_WAIT after a restart is free to them, and must be to this probe.
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


@dataclass
class Service:
    """A child process that prints `listening URL` lines and then `ready`."""

    name: str
    argv: list[str]
    urls: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # other lines worth showing
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line == "ready":
                threading.Thread(target=self._relay, daemon=True).start()
                return
            if line.startswith("listening "):
                self.urls.append(line.split(" ", 1)[1])
            elif line:
                self.facts.append(line)
            if time.monotonic() > deadline:
                break
        self.stop()
        raise StartError(f"{self.name} did not start (see the messages above)")

    def _relay(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            sys.stdout.write(f"[{self.name}] {raw.decode('utf-8', 'replace')}")
            sys.stdout.flush()

    def url(self, scheme: str) -> str:
        return next(u for u in self.urls if u.startswith(scheme + "://"))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def directory_service(layout: Layout, ports: Ports) -> Service:
    ldap, http = free_port(ports.ldap), free_port(ports.http)
    return Service("directory", keypost(
        "directory", "serve", "--data", str(layout.directory),
        "--ldap", f"127.0.0.1:{ldap}", "--http", f"127.0.0.1:{http}"))


@dataclass(frozen=True)
class Ports:
    """Preferred loopback ports (0 = any free port)."""

    ldap: int = LDAP_PORT
    http: int = HTTP_PORT


@dataclass
class GatewayService(Service):
    """`keypost gateway demo`: the demo domain's gateway in front of a local inbox. It is
    told the directory's LDAP URL once the directory runs."""

    directory: Service | None = None

    def start(self) -> None:
        assert self.directory is not None
        self.argv = [*self.argv, "--directory", self.directory.url("ldap")]
        super().start()


def gateway_service(layout: Layout, directory: Service) -> Service:
    return GatewayService("gateway", keypost(
        "gateway", "demo", "--data", str(layout.root), "--domain", DEMO_DOMAIN,
        "--account", DEMO_GATEWAY_ACCOUNT), directory=directory)


def services(layout: Layout, ports: Ports) -> list[Service]:
    """Everything `keypost start` runs, in start order."""
    directory = directory_service(layout, ports)
    return [directory, gateway_service(layout, directory)]


def summary(layout: Layout, running: Sequence[Service]) -> str:
    directory = running[0]
    ldap = directory.url("ldap")
    host_port = ldap.split("://", 1)[1].split("/", 1)[0]
    suffix = ldap.split("/", 3)[3] if ldap.count("/") >= 3 else "dc=keypost"
    http = directory.url("http")
    lines = ["", "keypost is running on loopback (Ctrl-C stops it)"]
    for s in running:
        lines += [f"  {s.name:10} {u}" for u in s.urls]
        lines += [f"  {s.name:10} {f}" for f in s.facts]
    lines += [
        f"  demo domain {DEMO_DOMAIN}: user account {DEMO_USER}"
        f" (password in {layout.demo / (DEMO_USER + '-password')}),",
        f"  gateway account {DEMO_GATEWAY_ACCOUNT}, gateway private keys in {layout.demo}",
        "",
        "try:",
        f'  ldapsearch -x -H ldap://{host_port} -b {suffix} "(mail={DEMO_USER}@{DEMO_DOMAIN})"'
        " userCertificate",
        f"  curl '{http}v1/containers?address={DEMO_USER}@{DEMO_DOMAIN}'",
        "",
    ]
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_start(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.data).resolve())
    first_run(layout)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    running: list[Service] = []
    try:
        for service in services(layout, Ports(args.ldap_port, args.http_port)):
            service.start()
            running.append(service)
        print(summary(layout, running), flush=True)
        while all(s.process is not None and s.process.poll() is None for s in running):
            time.sleep(0.5)
        failed = [s.name for s in running if s.process is not None and s.process.poll() is not None]
        raise StartError(f"{', '.join(failed)} stopped unexpectedly")
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        for service in reversed(running):
            service.stop()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keypost start` to the keypost command."""
    p = subparsers.add_parser("start", help="run keypost on loopback with a demo (first command)")
    p.add_argument("--data", default="keypost-data", help="data folder (created on first run)")
    p.add_argument("--ldap-port", type=int, default=LDAP_PORT,
                   help=f"directory LDAP port (default {LDAP_PORT}; 0 or busy = any free port)")
    p.add_argument("--http-port", type=int, default=HTTP_PORT,
                   help=f"directory HTTP port (default {HTTP_PORT}; 0 or busy = any free port)")
    p.set_defaults(func=cmd_start)
