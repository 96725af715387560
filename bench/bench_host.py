"""Host: look up, verify and encrypt a 100 KB message for 1, 10, 50 recipients vs looking
the recipients up the way Thunderbird does and one LDAP search at a time (goal: <= 100 ms
for 10 recipients, >= 5x faster than one-at-a-time).

Starts a real `keypost directory serve` on loopback (two served domains, user alice of
example.com), configures a host session (ldap3 over LDAP, keyring credentials from an
in-memory keyring) and measures, in the same run, interleaved:

  host      Host.handle("encrypt") with an empty container cache and no remembered
            verification: one LDAP search for all recipients + the sender on the session's
            bound connection, verification of every container against the pinned anchor,
            MIME build, S/MIME encrypt, reply framing.
  cached    the same with the session's cache warm (containers and their verification
            outcome, valid until their not-after), as after the add-on's background lookup.
  TB fetch  anchor 1, faithful: what Thunderbird's built-in LDAP certificate fetch does
            (comm-central mailnews/extensions/smime/certFetchingStatus.js): a new
            connection and a simple bind per fetch, then one search ORing all addresses;
            then the same verification and encryption.
  1-by-1    anchor 2, the issue's wording: one `(mail=x)` search per address on one bound
            connection kept for the session; then the same verification and encryption.

The directory caches issued containers, so after the warm-up all paths get the same,
already issued certificates: the difference is how the directory is asked.

    python bench/bench_host.py [--rounds 5] [--rtt 10]

--rtt also measures everything through a relay that delays each direction by half the
given round-trip time, as a directory across a LAN/WAN would; every round runs every
contender on both paths, so the two tables can be compared with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keyring
import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from keyrings.alt.file import PlaintextKeyring

from keypost.core import smime
from keypost.core.containers import load_certificates, verify_container
from keypost.core.types import Purpose, Role
from keypost.host.actions import Host
from keypost.host.compose import build_message, parse_compose
from keypost.host.config import parse_directory_url
from keypost.host.directory_client import CERT_ATTRIBUTE, LdapDirectoryClient
from keypost.host.framing import encode_reply

KEYPOST = str(Path(sys.executable).with_name("keypost"))
PASSWORD = "bench password 4711"
SIZES = (1, 10, 50)


def directory_cli(*args: str, stdin: str | None = None) -> None:
    subprocess.run([KEYPOST, "directory", *args], input=stdin, text=True, check=True,
                   capture_output=True)


def start_directory(base: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Init + serve; returns the process, the LDAP URL and the trust anchor PEM."""
    data = str(base / "data")
    directory_cli("init", "--data", data)
    for domain in ("example.com", "example.org"):
        key = rsa.generate_private_key(65537, 2048).public_key()
        pem = base / f"{domain}.pem"
        pem.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        directory_cli("domain", "add", domain, "--data", data, "--encryption-cert", str(pem))
    directory_cli("account", "add", "alice", "--data", data, "--role", "user", "--domain",
                  "example.com", "--password-stdin", stdin=PASSWORD + "\n")
    directory_cli("ca", "export", "--data", data, "--out", str(base / "anchor.pem"))
    proc = subprocess.Popen(
        [KEYPOST, "directory", "serve", "--data", data, "--ldap", "127.0.0.1:0",
         "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:
        found = re.search(r"listening (ldap://127\.0\.0\.1:\d+)", line)
        url = url or (found.group(1) if found else None)
        if line.strip() == "ready":
            break
    if url is None:
        proc.kill()
        raise SystemExit("the directory did not start")
    return proc, url, (base / "anchor.pem").read_text()


def compose_params(n: int, attachment: bytes) -> dict[str, Any]:
    return {
        "from": "alice@example.com",
        "to": [f"user{i}@example.org" for i in range(n)],
        "subject": "bench",
        "body_plain": "100 KB attached.",
        "attachments": [{"name": "a.bin", "content_type": "application/octet-stream",
                         "data_base64": base64.b64encode(attachment).decode()}],
    }


def _bound_connection(url: str) -> ldap3.Connection:
    host, port = url.removeprefix("ldap://").split(":")
    server = ldap3.Server(host, int(port), get_info=ldap3.NONE)
    return ldap3.Connection(server, "uid=alice,dc=keypost", PASSWORD, auto_bind=True,
                            read_only=True)


def _certificates(conn: ldap3.Connection) -> list[bytes]:
    return [der for entry in conn.response or []
            for der in entry.get("raw_attributes", {}).get(CERT_ATTRIBUTE, [])]


class Anchor:
    """An anchor lookup strategy followed by the host's verification and encryption, so
    that the columns differ only in how the directory is asked."""

    def __init__(self, anchor: x509.Certificate) -> None:
        self.anchor = anchor

    def lookup(self, addresses: list[str]) -> list[bytes]:
        raise NotImplementedError

    def run(self, params: dict[str, Any]) -> bytes:
        compose = parse_compose(params)
        certs: dict[bytes, x509.Certificate] = {}
        asked = [*params["to"], params["from"]]
        wanted = set(asked)
        for der in self.lookup(asked):
            cert = x509.load_der_x509_certificate(der)
            # An OR search does not say which address an entry answers (Thunderbird asks
            # for the certificate only): take the certificate's own address, which must be
            # one that was asked for and which the verification then checks.
            address = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name)[0]
            if address not in wanted:
                raise SystemExit(f"anchor path: a container for {address}, not asked for")
            result = verify_container(cert, [self.anchor], address, Purpose.ENCRYPT,
                                      expected_roles=[Role.PROXY_ENCRYPTION])
            if not result.ok:
                raise SystemExit(f"anchor path: invalid container: {result.reasons}")
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            certs.setdefault(spki, cert)
        return smime.encrypt_message(build_message(compose), list(certs.values()))


class ThunderbirdFetch(Anchor):
    """What Thunderbird's built-in LDAP certificate fetch does, per
    mozilla/releases-comm-central mailnews/extensions/smime/certFetchingStatus.js (opened by
    msgCompSecurityInfo.js with every address that has no certificate yet): a new
    nsILDAPConnection (LDAPConnection.sys.mjs: a new TCP connection) and a simple bind each
    time it runs, then ONE search whose filter ORs `(mail=x)` for all the addresses,
    attribute `usercertificate;binary`, size limit 2 x addresses; the dialog then closes
    and the connection goes with it. It is not one search per address."""

    def __init__(self, url: str, anchor: x509.Certificate) -> None:
        super().__init__(anchor)
        self.url = url

    def lookup(self, addresses: list[str]) -> list[bytes]:
        conn = _bound_connection(self.url)
        try:
            terms = "".join(f"(mail={a})" for a in addresses)  # Thunderbird does not escape
            conn.search("dc=keypost", terms if len(addresses) == 1 else f"(|{terms})",
                        attributes=[CERT_ATTRIBUTE], size_limit=2 * len(addresses))
            return _certificates(conn)
        finally:
            conn.unbind()


class OneByOne(Anchor):
    """The issue's anchor, stricter than Thunderbird in one way and kinder in another: one
    `(mail=x)` search per address (no OR filter), on one connection bound once and kept
    for the whole session (no connect and bind per message)."""

    def __init__(self, url: str, anchor: x509.Certificate) -> None:
        super().__init__(anchor)
        self.conn = _bound_connection(url)

    def lookup(self, addresses: list[str]) -> list[bytes]:
        found = []
        for address in addresses:
            self.conn.search("dc=keypost", f"(mail={address})", attributes=[CERT_ATTRIBUTE])
            found.extend(_certificates(self.conn))
        return found


class DelayRelay:
    """A TCP relay that holds every chunk for `delay` seconds each way, counted from the
    chunk's arrival and pipelined (a chunk does not wait for the one before it to be
    delivered): a network round trip of 2 x delay on loopback (the directory is rarely on
    the same machine). It runs in its own process, so that it does not compete with the
    measured code for the GIL (as a thread of the bench it did; measured side by side, that
    made no difference beyond the noise: a cold lookup at RTT 10 costs one round trip and
    ~1 ms more either way)."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--relay", f"{target[0]}:{target[1]}",
             "--delay", repr(delay)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise SystemExit("the relay did not start")
        self.port = int(line)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    @staticmethod
    def serve(target: tuple[str, int], delay: float) -> None:
        """The relay process: prints its port, then relays until terminated."""

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            loop = asyncio.get_running_loop()
            while data := await reader.read(65536):
                # Equal delays keep the order: asyncio runs equal deadlines first-in first-out.
                loop.call_later(delay, writer.write, data)
            loop.call_later(delay, writer.close)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(*target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                                 return_exceptions=True)

        async def main() -> None:
            server = await asyncio.start_server(client, "127.0.0.1", 0)
            print(server.sockets[0].getsockname()[1], flush=True)
            await server.serve_forever()

        asyncio.run(main())


def timed(fn: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    if before is not None:
        before()  # preparation that is not part of the measured work
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


NAMES = ("host", "cached", "TB fetch", "1-by-1", "lookup 1", "lookup TB", "lookup N")


class Session:
    """One network path (loopback or through the relay): a configured host session, the
    two anchors and a bare client for the lookup-only contenders."""

    def __init__(self, label: str, url: str, anchor_pem: str, base: Path) -> None:
        self.label, self.url = label, url
        # Own configuration and cache folders: the sessions are measured side by side.
        self.host = Host(base / f"config-{label}", base / f"cache-{label}")
        reply = self.host.handle({"id": 0, "action": "configure", "params": {
            "directory": url, "username": "alice", "password": PASSWORD,
            "trust_anchor_pem": anchor_pem}})
        if not reply["ok"]:
            raise SystemExit(f"configure failed: {reply['error']}")
        anchor = load_certificates(anchor_pem.encode())[0]
        self.thunderbird = ThunderbirdFetch(url, anchor)
        self.one_by_one = OneByOne(url, anchor)
        self.client = LdapDirectoryClient(parse_directory_url(url), "alice", PASSWORD)

    def contenders(self, n: int, attachment: bytes) -> dict[str, Contender]:
        """The measured calls for n recipients (warmed up once here)."""
        host = self.host
        params = compose_params(n, attachment)
        request = {"id": 1, "action": "encrypt", "params": params}
        addresses = [*params["to"], params["from"]]

        def host_encrypt() -> None:
            # Until the reply frames are ready; the cache file is written after (Host.idle).
            reply = host.handle(request)
            assert reply["ok"], reply.get("error")
            encode_reply(reply)

        def one_search() -> None:
            assert len(self.client.fetch(addresses)) == len(addresses)

        def lookup(anchor: Anchor) -> Callable[[], None]:
            return lambda: None if len(anchor.lookup(addresses)) >= len(addresses) else (
                sys.exit("anchor lookup: containers missing"))

        def encrypt(anchor: Anchor) -> Callable[[], None]:
            return lambda: None if anchor.run(params) else sys.exit("anchor: no message")

        host_encrypt()  # warm-up: the directory issues each container once
        self.one_by_one.run(params)
        one_search()  # the first search of this client connects and binds (not a lookup cost)
        return {
            "host": (host_encrypt, host.forget_containers),
            "cached": (host_encrypt, host.idle),
            "TB fetch": (encrypt(self.thunderbird), None),
            "1-by-1": (encrypt(self.one_by_one), None),
            "lookup 1": (one_search, None),
            "lookup TB": (lookup(self.thunderbird), None),
            "lookup N": (lookup(self.one_by_one), None),
        }

    def close(self) -> None:
        self.one_by_one.conn.unbind()
        self.client.close()
        self.host.close()


Contender = tuple[Callable[[], None], Callable[[], object] | None]


def measure(sessions: list[Session], n: int, attachment: bytes,
            rounds: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per network and contender for n recipients. Every round runs
    every contender on every network, so that loopback and relay figures are comparable
    (measured one network after the other, minutes apart, they differed by the machine's
    drift as well as by the network)."""
    plans = {s.label: s.contenders(n, attachment) for s in sessions}
    runs: dict[str, dict[str, list[float]]] = {
        label: {name: [] for name in plan} for label, plan in plans.items()}
    for _ in range(rounds):
        for label, plan in plans.items():
            for name, (fn, before) in plan.items():
                runs[label][name].append(timed(fn, before))
    return {label: {name: statistics.median(v) for name, v in by_name.items()}
            for label, by_name in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtt", type=float, default=0.0,
                    help="also measure through a relay adding this round-trip time (ms)")
    ap.add_argument("--relay", help=argparse.SUPPRESS)  # internal: run as the relay
    ap.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        host, _, port = args.relay.rpartition(":")
        DelayRelay.serve((host, int(port)), args.delay)
        return 0
    base = Path(tempfile.mkdtemp(prefix="bench_host_"))
    # A file keyring in the temporary folder: the bench must not touch the user's keyring.
    bench_keyring = PlaintextKeyring()
    bench_keyring.file_path = str(base / "keyring.cfg")
    keyring.set_keyring(bench_keyring)
    # named on purpose: the host uses a fallback backend only when told to
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    os.environ["KEYPOST_CONFIG_DIR"] = str(base / "config")
    os.environ["KEYPOST_CACHE_DIR"] = str(base / "cache")
    proc, direct_url, anchor_pem = start_directory(base)
    urls = [("loopback", direct_url)]
    relay = None
    if args.rtt > 0:
        port = int(direct_url.rsplit(":", 1)[1])
        relay = DelayRelay(("127.0.0.1", port), args.rtt / 2000)
        urls.append((f"RTT {args.rtt:g} ms", f"ldap://127.0.0.1:{relay.port}"))
    attachment = os.urandom(100 * 1024)
    print(f"100 KB message; median of {args.rounds} rounds (ms). host: encrypt action with an "
          "empty container cache (1 search + verify + MIME + encrypt + framing); cached: "
          "the same, containers cached; TB fetch: Thunderbird's certFetchingStatus.js (new "
          "connection + bind + one OR search) + the same verification and encryption; "
          "1-by-1: one search per address on a kept bound connection + the same; "
          "lookup 1 / TB / N: the searches alone")
    sessions: list[Session] = []
    try:
        sessions = [Session(label, url, anchor_pem, base) for label, url in urls]
        results = {n: measure(sessions, n, attachment, args.rounds) for n in SIZES}
        ratios = ("TB/host", "1by1/host", "lkTB/lk1", "lkN/lk1")
        for session in sessions:
            print(f"\n{session.label} ({session.url})")
            print(f"{'rcpts':>5} " + " ".join(f"{n:>9}" for n in (*NAMES, *ratios)))
            for n in SIZES:
                m = results[n][session.label]
                print(f"{n:>5} " + " ".join(f"{m[name]:>9.1f}" for name in NAMES)
                      + f" {m['TB fetch'] / m['host']:>8.1f}x"
                      + f" {m['1-by-1'] / m['host']:>8.1f}x"
                      + f" {m['lookup TB'] / m['lookup 1']:>8.1f}x"
                      + f" {m['lookup N'] / m['lookup 1']:>8.1f}x")
        print(f"\ngoal: host <= 100 ms for 10 recipients; anchor / host >= 5x. "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for session in sessions:
            session.close()
        if relay is not None:
            relay.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
