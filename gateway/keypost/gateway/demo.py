"""`keypost gateway demo` / `demo-send`: the demo domain's gateway with a local inbox as next hop.

`keypost start` runs `demo` beside the directory: it writes a gateway.toml from the demo
keys and the gateway account that `keypost start` created, starts a local SMTP sink that
files every message into a Maildir, and serves the gateway in front of it. `demo-send`
plays an outside sender: it fetches alice's container anonymously from the directory,
encrypts a message to it, sends it through the gateway and shows what arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.gateway import headers
from keypost.gateway.config import load_config
from keypost.gateway.directory import CachingDirectory, LdapFetcher, load_trust_anchors
from keypost.gateway.errors import ConfigError
from keypost.gateway.files import PRIVATE, make_private_dirs
from keypost.gateway.kept import FOLDER as KEPT_FOLDER
from keypost.gateway.pipeline import DECRYPTED_HEADER
from keypost.gateway.quarantine import Maildir
from keypost.gateway.serve import build, quiet_smtp_logging, run

DEMO_PORT = 10025


class InboxHandler:
    """The demo's next hop: files each message into a Maildir."""

    def __init__(self, inbox: Maildir) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = self.inbox.deliver(envelope.original_content or b"")
        return f"250 2.0.0 filed as {name}"


def _port(preferred: int) -> int:
    with socket.socket() as s:
        # aiosmtpd binds with SO_REUSEADDR (asyncio's default on POSIX): a port left in
        # TIME_WAIT by the last run is free to it, so it is to this probe as well.
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trust_anchor(directory_data: Path) -> bytes:
    """The operator's step: export the directory CA with the directory's own command."""
    done = subprocess.run(
        [sys.executable, "-m", "keypost.core.cli", "directory", "ca", "export",
         "--data", str(directory_data)],
        capture_output=True, check=False, timeout=60,
    )
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN CERTIFICATE-----"):
        raise ConfigError("cannot export the directory CA for the demo gateway")
    return done.stdout  # the PEM alone (the fingerprint goes to stderr)


def tighten_demo_folders(gwdir: Path) -> None:
    """keypost-data/gateway is keypost's own (`keypost start` made it), its inbox and
    quarantine hold decrypted mail and its state the names of senders: folders an older
    version left open to others are tightened to 0700, not just warned about as a
    configured quarantine is."""
    for folder in (gwdir, *Maildir(gwdir / "inbox").folders,
                   *Maildir(gwdir / "quarantine").folders,
                   gwdir / "state", gwdir / "state" / KEPT_FOLDER):
        if folder.is_dir() and not folder.is_symlink():
            os.chmod(folder, PRIVATE)


def write_demo_config(args: argparse.Namespace, sink_port: int) -> Path:
    root = Path(args.data).resolve()
    demo, gwdir = root / "demo", root / "gateway"
    make_private_dirs(gwdir)
    (gwdir / "directory-ca.pem").write_bytes(_trust_anchor(root / "directory"))
    config = gwdir / "gateway.toml"
    config.write_text(
        "# written by `keypost gateway demo` (keypost start); see gateway/gateway.toml\n"
        f'listen = "127.0.0.1:{_port(args.port)}"\n'
        f'next_hop = "127.0.0.1:{sink_port}"\n'
        'hostname = "gateway.demo.invalid"\n'
        f'quarantine_dir = "{gwdir / "quarantine"}"\n'
        f'state_dir = "{gwdir / "state"}"\n'
        "[directory]\n"
        f'url = "{args.directory}"\n'
        f'username = "{args.account}"\n'
        f'password_file = "{demo / (args.account + "-password")}"\n'
        f'trust_anchor = "{gwdir / "directory-ca.pem"}"\n'
        "[[domain]]\n"
        f'name = "{args.domain}"\n'
        f'encryption_keys = ["{demo / "gateway-encryption-key.pem"}"]\n'
        f'signing_key = "{demo / "gateway-signing-key.pem"}"\n'
    )
    return config


def cmd_demo(args: argparse.Namespace) -> int:
    # stdout: `keypost start` shows a child's stdout lines, prefixed with its name
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    quiet_smtp_logging()  # before the sink starts: its start-up self-check logs at INFO
    gwdir = Path(args.data).resolve() / "gateway"
    inbox = Maildir(gwdir / "inbox")
    inbox.ensure()
    tighten_demo_folders(gwdir)
    sink_port = _port(0)
    sink = Controller(InboxHandler(inbox), hostname="127.0.0.1", port=sink_port)
    sink.start()
    try:
        gw = build(load_config(write_demo_config(args, sink_port)))
        print(f"inbox {inbox.root / 'new'} (next hop: a local sink)", flush=True)
        print(f"try: keypost gateway demo-send --data {args.data}", flush=True)
        asyncio.run(run(gw))
    finally:
        sink.stop()
    return 0


def cmd_demo_send(args: argparse.Namespace) -> int:
    root = Path(args.data).resolve()
    cfg = load_config(root / "gateway" / "gateway.toml")
    to = parse_address(args.to)
    # An outsider: no credentials, so the directory answers with the gateway's container.
    fetcher = LdapFetcher(replace(cfg.directory, username=None), None, cfg.timeouts.directory)
    certs = CachingDirectory(fetcher, load_trust_anchors(cfg.directory)).encryption_certificates(to)
    if not certs.encryption:
        raise ConfigError(f"the directory gave no container for {to}")
    message = (
        f"From: someone@outside.test\r\nTo: {to}\r\nSubject: hello through the gateway\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "This was encrypted for the gateway's container and decrypted by the gateway.\r\n"
    ).encode()
    encrypted = smime.encrypt_message(message, certs.encryption)
    inbox = root / "gateway" / "inbox" / "new"
    before = set(inbox.iterdir()) if inbox.exists() else set()
    with smtplib.SMTP(cfg.listen.host, cfg.listen.port, timeout=60) as s:
        s.sendmail("someone@outside.test", [str(to)], encrypted)
    print(f"sent {len(encrypted)} bytes of application/pkcs7-mime for {to} to "
          f"smtp://{cfg.listen}")
    for _ in range(50):
        new = set(inbox.iterdir()) - before if inbox.exists() else set()
        if new:
            path = max(new, key=lambda p: p.stat().st_mtime)
            data = path.read_bytes()
            print(f"arrived decrypted: {path}")
            print(f"  {DECRYPTED_HEADER}: {headers.get(data, DECRYPTED_HEADER)}")
            return 0
        time.sleep(0.1)
    print("nothing arrived in the inbox", file=sys.stderr)
    return 1


def _port_number(text: str) -> int:
    """argparse type: a TCP port, so that socket.bind never sees one out of range."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0 .. 65535, got {text!r}")
    return int(text)


def register_demo(gsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = gsub.add_parser("demo", help="the demo domain's gateway with a local inbox (start)")
    demo.add_argument("--data", default="keypost-data", help="keypost start's data folder")
    demo.add_argument("--directory", required=True, metavar="URL", help="directory LDAP URL")
    demo.add_argument("--domain", default="example.com")
    demo.add_argument("--account", default="gateway", help="the gateway account's name")
    demo.add_argument("--port", type=_port_number, default=DEMO_PORT,
                      help="preferred SMTP port (0: any free one)")
    demo.set_defaults(func=cmd_demo)
    send = gsub.add_parser("demo-send", help="send an encrypted test message through the demo")
    send.add_argument("--data", default="keypost-data")
    send.add_argument("--to", default="alice@example.com")
    send.set_defaults(func=cmd_demo_send)
