"""Gateway throughput: 50 KB inbound encrypted messages through decrypt + null scan + relay,
against the same SMTP path through a plain pass-through relay, measured in the same run.

Both relays are `keypost gateway serve` processes: the anchor has no [[domain]], so every
message is "not for us" and is relayed unchanged (aiosmtpd -> smtplib to the same sink);
the gateway decrypts each message with its domain key first. Senders are threads in this
process, one SMTP session each, many messages per session; the sink is its own process.

    python bench/bench_gateway.py [--seconds 3] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import Purpose

KEYPOST = [sys.executable, "-m", "keypost.core.cli"]
SINK = """
import asyncio, signal, sys
from aiosmtpd.controller import Controller
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads inherit the mask
count = 0
class H:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        return "250 OK"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM})
c.stop()
print(count, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(400):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def message(size: int) -> bytes:
    line = b"The quarterly figures are attached; nothing to see here, move along.\r\n"
    body = line * (size // len(line) + 1)
    return (
        b"From: sender@outside.test\r\nTo: alice@example.com\r\nSubject: bench\r\n"
        b"Message-ID: <bench@outside.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body[:size]
    )


def setup(root: Path, sink_port: int) -> tuple[Path, Path, bytes]:
    key = rsa.generate_private_key(65537, 2048)
    path = root / "enc.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    ca = DirectoryCA.generate()
    cert = ca.issue(ContainerRequest(parse_address("alice@example.com"), Purpose.ENCRYPT,
                                     GatewayKey.from_pem(pub)))
    data = smime.encrypt_message(message(50 * 1024), [cert])
    common = f'next_hop = "127.0.0.1:{sink_port}"\nlog_level = "warning"\n'
    gateway = root / "gateway.toml"
    gateway.write_text(
        f'listen = "127.0.0.1:{free_port()}"\n{common}'
        '[[domain]]\nname = "example.com"\nencryption_keys = ["enc.key"]\n'
    )
    anchor = root / "anchor.toml"
    anchor.write_text(f'listen = "127.0.0.1:{free_port()}"\n{common}')
    return gateway, anchor, data


def listen_port(config: Path) -> int:
    first = config.read_text().splitlines()[0]
    return int(first.rsplit(":", 1)[1].rstrip('"'))


def run_senders(port: int, data: bytes, senders: int, seconds: float) -> tuple[int, int]:
    """(accepted, refused) messages over `seconds` with `senders` concurrent SMTP sessions."""
    stop = time.monotonic() + seconds
    counts = [0] * senders
    errors = [0] * senders

    def sender(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            while time.monotonic() < stop:
                try:
                    s.sendmail("sender@outside.test", ["alice@example.com"], data)
                    counts[i] += 1
                except smtplib.SMTPException:
                    errors[i] += 1

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), sum(errors)


def serve(config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*KEYPOST, "gateway", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL)
    wait_port(listen_port(config))
    return proc


def measure(config: Path, data: bytes, senders: int, seconds: float) -> float:
    t0 = time.perf_counter()
    ok, bad = run_senders(listen_port(config), data, senders, seconds)
    elapsed = time.perf_counter() - t0  # includes the messages in flight at the deadline
    if bad:
        raise SystemExit(f"{bad} messages were refused; the benchmark is invalid")
    return ok / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sink_port = free_port()
        sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)],
                                stdout=subprocess.PIPE, text=True)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            gateway, anchor, data = setup(root, sink_port)
            procs = [serve(anchor), serve(gateway)]
            for config in (anchor, gateway):  # warm-up: imports, first connections
                run_senders(listen_port(config), data, 2, 0.5)
            print(f"message: {len(data)} bytes encrypted (50 KB clear), RSA-2048, AES-256-CBC;"
                  f" {args.rounds} alternating rounds of {args.seconds:g} s per side, medians")
            print(f"{'senders':>8} {'pass-through msg/s':>19} {'gateway msg/s':>14} {'ratio':>6}")
            for senders in (1, args.concurrency):
                rows = []
                for _ in range(args.rounds):
                    base = measure(anchor, data, senders, args.seconds)
                    gw = measure(gateway, data, senders, args.seconds)
                    rows.append((base, gw, gw / base))
                base, gw, ratio = (statistics.median(col) for col in zip(*rows, strict=True))
                print(f"{senders:>8} {base:>19.1f} {gw:>14.1f} {ratio:>6.2f}")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            sink.send_signal(signal.SIGTERM)
            out, _ = sink.communicate(timeout=30)
        total = out.strip().splitlines()[-1]
        print(f"sink received {total} messages in total (goal: ratio >= 0.5)")


if __name__ == "__main__":
    main()
