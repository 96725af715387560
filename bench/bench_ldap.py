"""LDAP search serving: `keypost directory serve` against OpenLDAP slapd, same load, same run.

Anchor: slapd (Debian package, back-mdb) holding a static entry that carries the very
certificates keypost serves for the address, so both answer with entries of the same
size. Load: bench/ldapload.c (compiled here with gcc), a closed-loop epoll client sending
one pre-encoded search per connection, 16 persistent connections. On a machine with 2+
CPUs each server is pinned to CPU 0 and the load generator to CPU 1 (slapd with all its
threads), i.e. one core each. Rounds alternate between the servers; the median round
is reported. Also measured:
- bind+search+unbind per connection (anonymous bind), both servers;
- the LDAP layer alone: keypost's LdapServer with a static in-memory backend serving
  the same certificates (what the protocol code costs without the directory's
  controller);
- cache misses: keypost answering a search for a new address every time (each one a
  new container) against the bare issue rate of the same CA key (DirectoryCA.issue in a
  loop on the same core).
Besides rates and latencies it prints the server CPU time per search (from /proc) and
how much of a core each server got: on a shared machine a single-threaded server gets a
smaller share of its core than slapd's thread pool, so CPU per search is the fairer
comparison of efficiency there.

--breakdown COUNT only measures, in-process with the process CPU clock and no profiler,
where a miss goes: DirectoryCA.issue in a loop (the anchor), the directory backend's
lookup of a fresh address, the same with issue replaced by a constant certificate (the
controller's own work), and the LDAP layer (LdapServer with the static backend, fed
encoded searches through its protocol object with a transport that drops the answers)
for never-seen and for repeated searches, and the whole miss (LdapServer with the
directory backend in an event loop, 16 protocol objects fed one fresh search each per
loop iteration). No sockets: seconds instead of minutes, for finding hot spots.

    python bench/bench_ldap.py [--seconds 3] [--rounds 3] [--connections 16]
                               [--ca-key-type ecdsa-p256|rsa-3072]
    python bench/bench_ldap.py --breakdown 20000 [--rounds 3]
    python bench/bench_ldap.py --gc-pause 100000 [--rounds 3]

--gc-pause COUNT fills the directory's caches with COUNT containers (one anonymous
requestor each, the controller's work without the signing) and times full collections of
the cyclic garbage collector, which stop every connection while they run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from keypost.core.address import Address, parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import Purpose
from keypost.directory.accounts import Authenticator
from keypost.directory.controller import Controller
from keypost.directory.ldap import ber
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.backend import AddressEntry
from keypost.directory.ldap.server import LdapServer, _LdapProtocol
from keypost.directory.ldap_backend import DirectoryLdapBackend
from keypost.directory.store import GatewayKeyRecord, KeyUse
from keypost.directory.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent
KEYPOST = [sys.executable, "-m", "keypost.core.cli"]
SUFFIX = "dc=keypost"
DOMAIN = "example.com"
ADDRESS = f"alice@{DOMAIN}"
ATTRIBUTES = ("userCertificate;binary",)  # what Thunderbird asks for

Result = dict[str, float]
RATE = "rate"
LIFETIME = dt.timedelta(hours=24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


NICE = 0  # set from --nice: the priority of both servers and the load generator


def pinned(cpu: int) -> list[str]:
    """A prefix pinning to one CPU (when there are two to share out), at priority NICE."""
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        prefix += ["taskset", "-c", str(cpu)]
    return prefix


@contextmanager
def process(argv: Sequence[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def search_message(address: str, message_id: int = 1) -> bytes:
    request = M.SearchRequest(
        SUFFIX,
        M.Scope.SUB,
        M.DerefAliases.NEVER,
        0,
        0,
        False,
        F.EqualityMatch("mail", address.encode()),
        ATTRIBUTES,
    )
    return M.encode_message(M.LDAPMessage(message_id, request))


def fetch_certificates(port: int, address: str) -> list[bytes]:
    """One search with the codec under test, over a plain socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(search_message(address))
        data = b""
        certs: list[bytes] = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the directory closed the connection")
            data += chunk
            while (n := ber.frame_length(data)) is not None:
                msg = M.decode_message(data[:n])
                data = data[n:]
                if isinstance(msg.op, M.SearchResultEntry):
                    for attribute in msg.op.attributes:
                        certs.extend(attribute.values)
                elif isinstance(msg.op, M.SearchResultDone):
                    return certs


def gateway_certificate(folder: Path) -> Path:
    """A self-signed RSA-2048 certificate standing for the gateway's encryption key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gateway.{DOMAIN}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = folder / "gateway.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def keypost_cli(*args: str) -> None:
    done = subprocess.run([*KEYPOST, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"keypost {' '.join(args)}: {done.stderr.strip()}")


def slapd_folder(folder: Path, certificates: Sequence[bytes]) -> Path:
    """slapd.conf with back-mdb and an entry carrying `certificates`, loaded by slapadd."""
    import base64

    (folder / "db").mkdir(parents=True)
    conf = folder / "slapd.conf"
    conf.write_text(
        "include /etc/ldap/schema/core.schema\n"
        "include /etc/ldap/schema/cosine.schema\n"
        "include /etc/ldap/schema/inetorgperson.schema\n"
        "modulepath /usr/lib/ldap\n"
        "moduleload back_mdb\n"
        f"pidfile {folder}/slapd.pid\n"
        "database mdb\n"
        f'suffix "{SUFFIX}"\n'
        f'rootdn "cn=admin,{SUFFIX}"\n'
        f"directory {folder}/db\n"
        "maxsize 104857600\n"
        "index mail eq\n"
        "access to * by * read\n"
    )
    values = "".join(
        f"userCertificate;binary:: {base64.b64encode(c).decode()}\n" for c in certificates
    )
    ldif = folder / "data.ldif"
    ldif.write_text(
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "dc: keypost\no: keypost\n\n"
        f"dn: mail={ADDRESS},{SUFFIX}\nobjectClass: inetOrgPerson\n"
        f"cn: {ADDRESS}\nsn: {ADDRESS}\nmail: {ADDRESS}\n{values}"
    )
    subprocess.run(
        ["slapadd", "-q", "-f", str(conf), "-l", str(ldif)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return conf


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    ldapload: Path,
    server_pid: int,
    port: int,
    connections: int,
    seconds: float,
    mode: str,
    search_file: Path,
    bind_file: Path | None = None,
) -> Result:
    argv = [
        *pinned(1),
        str(ldapload),
        "127.0.0.1",
        str(port),
        str(connections),
        str(seconds),
        "0.5",  # warm-up, not counted
        mode,
        str(search_file),
    ]
    if bind_file is not None:
        argv.append(str(bind_file))
    cpu_before = cpu_seconds(server_pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(server_pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"ldapload failed: {done.stderr.strip()}")
    result: Result = json.loads(done.stdout)
    # Server CPU per answered search (warm-up included in both): robust against other
    # load on the machine, which the rate is not.
    result["cpu_us"] = cpu * 1e6 / max(1.0, result["completed"] * (seconds + 0.5) / seconds)
    if result["errors"]:
        raise RuntimeError(f"ldapload saw {result['errors']} error results")
    return result


def median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def bare_issue_rate(data: Path, gateway_pem: Path, seconds: float) -> float:
    """DirectoryCA.issue with the directory's own CA key, one core, new address each time."""
    from keypost.directory.config import DataDir

    paths = DataDir(data)
    ca = DirectoryCA.load(paths.ca_cert.read_bytes(), paths.ca_key.read_bytes())
    gateway = GatewayKey.from_pem(gateway_pem.read_bytes())
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    cpus, priority = (os.sched_getaffinity(0) if pin else set()), os.getpriority(os.PRIO_PROCESS, 0)
    if pin:
        os.sched_setaffinity(0, {0})  # the core the server had
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)  # and its priority
    try:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            address = parse_address(f"bare{n}@{DOMAIN}")
            ca.issue(ContainerRequest(address, Purpose.ENCRYPT, gateway))
            n += 1
        return n / (time.perf_counter() - start)
    finally:  # back out of the servers' way for the next round
        if pin:
            os.sched_setaffinity(0, cpus)
        if NICE:
            os.setpriority(os.PRIO_PROCESS, 0, priority)


class StaticBackend:
    """Answers every address with the same certificates (for --serve-static)."""

    def __init__(self, certificates: tuple[bytes, ...]) -> None:
        self.suffix = SUFFIX
        self.certificates = certificates

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        return None

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        return [AddressEntry(a, self.certificates) for a in addresses]


def serve_static(port: int, cert_file: Path) -> None:
    """Run LdapServer with a StaticBackend until terminated (a child of the benchmark)."""
    import asyncio

    from keypost.directory.ldap.server import LdapServer

    certificates = tuple(ber_values(cert_file.read_bytes()))

    async def run() -> None:
        server = LdapServer(StaticBackend(certificates))
        await server.listen("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(run())


def ber_values(data: bytes) -> Iterator[bytes]:
    """Split concatenated DER elements."""
    pos = 0
    while pos < len(data):
        _, _, end = ber.read_header(data, pos, len(data))
        yield data[pos:end]
        pos = end


def line(name: str, r: Result) -> str:
    rate, p50, p99, cpu = r["rate"], r["p50_us"], r["p99_us"], r["cpu_us"]
    share = rate * cpu / 1e6  # how much of a core the server actually got
    return (f"  {name:34s} {rate:7.0f}/s  p50 {p50:6.0f} us  p99 {p99:6.0f} us"
            f"  server CPU {cpu:4.0f} us/search, {share:4.2f} cores")


class _Sink(asyncio.Transport):
    """A transport that takes the answers and drops them."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class _ConstantCA:
    """Hands out one ready certificate: the controller's work without the signing."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self.certificate = certificate

    def issue(self, request: ContainerRequest, now: dt.datetime | None = None) -> x509.Certificate:
        return self.certificate


def per_call(fn: Callable[[int], None], count: int) -> float:
    """CPU microseconds per call of fn over `count` distinct arguments."""
    start = time.process_time()
    for i in range(count):
        fn(i)
    return (time.process_time() - start) / count * 1e6


def bare_issue(ca: DirectoryCA, gateway: GatewayKey,
               addresses: Sequence[Address]) -> Callable[[int], None]:
    def issue(i: int) -> None:
        ca.issue(ContainerRequest(addresses[i], Purpose.ENCRYPT, gateway, LIFETIME))

    return issue


def directory_backend(ca: DirectoryCA | _ConstantCA, pem: bytes, folder: Path,
                      prefix: str, cache_size: int = 100_000) -> DirectoryLdapBackend:
    store = SqliteStore(folder / f"{prefix}.db")
    fingerprint = GatewayKey.from_pem(pem).fingerprint
    store.add_domain(DOMAIN, [GatewayKeyRecord(DOMAIN, KeyUse.ENCRYPTION, pem, fingerprint,
                                               ("aes256-cbc",), dt.datetime.now(dt.UTC))])
    return DirectoryLdapBackend(Controller(store, cast(DirectoryCA, ca), cache_size=cache_size),
                                Authenticator(store), SUFFIX)


def backend_lookup(ca: DirectoryCA | _ConstantCA, pem: bytes, folder: Path, prefix: str,
                   per_search: int) -> Callable[[int], None]:
    """Fresh-address lookups, `per_search` addresses in one search; call i completes a
    search every `per_search` calls, so per_call gives the cost per address."""
    backend = directory_backend(ca, pem, folder, prefix)

    def lookup(i: int) -> None:
        if (i + 1) % per_search:
            return
        addresses = [f"{prefix}{j}@{DOMAIN}" for j in range(i + 1 - per_search, i + 1)]
        coro = backend.lookup(None, addresses, "127.0.0.1:1")
        try:  # answers without awaiting: drive the coroutine by hand, as the server does
            coro.send(None)
        except StopIteration:
            return
        raise RuntimeError("lookup awaited")

    return lookup


def deliver(protocol: _LdapProtocol, message: bytes) -> None:
    """Hand one encoded message to the protocol as the event loop would after a read."""
    protocol.read_buffer[: len(message)] = message
    protocol.buffer_updated(len(message))


class _CountingSink(_Sink):
    """Counts the answers written."""

    writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        _CountingSink.writes += 1


async def whole_pipeline(ca: DirectoryCA, pem: bytes, folder: Path, prefix: str, count: int,
                         connections: int = 16) -> float:
    """CPU per fresh-address search through LdapServer + the directory backend and the event
    loop, `connections` protocol objects fed one search each per iteration; no sockets."""
    server = LdapServer(directory_backend(ca, pem, folder, prefix))
    protocols = []
    for _ in range(connections):
        protocol = _LdapProtocol(server, False)
        protocol.connection_made(_CountingSink())
        protocols.append(protocol)
    messages = [search_message(f"{prefix}-{i}@{DOMAIN}", i // connections + 1)
                for i in range(count)]
    _CountingSink.writes = 0
    start = time.process_time()
    for first in range(0, count - connections + 1, connections):
        for n, protocol in enumerate(protocols):
            deliver(protocol, messages[first + n])
        while _CountingSink.writes < first + connections:
            await asyncio.sleep(0)
    return (time.process_time() - start) / (count // connections * connections) * 1e6


def ldap_layer(messages: Sequence[bytes]) -> Callable[[int], None]:
    protocol = _LdapProtocol(LdapServer(StaticBackend((b"\x30" * 830,))), False)
    protocol.connection_made(_Sink())

    def feed(i: int) -> None:
        deliver(protocol, messages[i])

    return feed


async def measure_breakdown(count: int, rounds: int) -> dict[str, list[float]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    gateway = GatewayKey.from_pem(pem)
    ca = DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")
    constant = _ConstantCA(ca.issue(ContainerRequest(
        parse_address(f"x@{DOMAIN}"), Purpose.ENCRYPT, gateway, LIFETIME)))
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ldap-miss-") as tmp:
        folder = Path(tmp)
        for rnd in range(rounds):  # contenders alternate within every round
            addresses = [parse_address(f"bare{rnd}-{i}@{DOMAIN}") for i in range(count)]
            fresh = [search_message(f"fresh{rnd}-{i}@{DOMAIN}", i + 1) for i in range(count)]
            same = [search_message(f"same@{DOMAIN}", i + 1) for i in range(count)]
            contenders: dict[str, Callable[[int], None]] = {
                "bare DirectoryCA.issue (anchor)": bare_issue(ca, gateway, addresses),
                "backend lookup, fresh address": backend_lookup(ca, pem, folder, f"r{rnd}m", 1),
                "  16 addresses in one search": backend_lookup(ca, pem, folder, f"r{rnd}b", 16),
                "  of it without the signing": backend_lookup(constant, pem, folder,
                                                              f"r{rnd}c", 1),
                "LDAP layer, never-seen search": ldap_layer(fresh),
                "LDAP layer, repeated search": ldap_layer(same),
            }
            figures = {}
            for name, call in contenders.items():
                figures[name] = per_call(call, count)
                gc.collect()  # one contender's garbage is not billed to the next
            figures["whole miss, 16 connections"] = await whole_pipeline(
                ca, pem, folder, f"r{rnd}w", count)
            gc.collect()
            for name, value in figures.items():
                out.setdefault(name, []).append(value)
    return out


def print_gc_pause(count: int, rounds: int) -> None:
    """--gc-pause: how long one full collection of the cyclic GC stops the server once the
    directory's caches hold `count` containers (every connection waits for it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    ca = DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")
    constant = _ConstantCA(ca.issue(ContainerRequest(
        parse_address(f"x@{DOMAIN}"), Purpose.ENCRYPT, GatewayKey.from_pem(pem), LIFETIME)))
    with tempfile.TemporaryDirectory(prefix="bench-ldap-gc-") as tmp:
        gc.collect()
        empty = len(gc.get_objects())
        # the controller's work per address, signing aside (the pause does not depend on it)
        backend = directory_backend(constant, pem, Path(tmp), "gc", cache_size=count)
        controller = backend.controller
        for i in range(count):
            peer = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:1"  # one requestor each
            coro = backend.lookup(None, [f"gc{i}@{DOMAIN}"], peer)
            with suppress(StopIteration):
                coro.send(None)
            if i % 1000 == 999:
                controller.take_pending()  # what the writer thread does
        controller.take_pending()
        gc.collect()
        tracked = len(gc.get_objects()) - empty
        pauses = []
        for _ in range(rounds):
            start = time.perf_counter()
            gc.collect()
            pauses.append((time.perf_counter() - start) * 1e3)
    print(f"cyclic GC with {len(controller._cache)} cached containers "
          f"({len(controller._answers)} cached answers): {tracked} tracked objects more than "
          f"an empty process; one full collection {statistics.median(pauses):.1f} ms "
          f"(median of {rounds})")


def print_breakdown(count: int, rounds: int) -> None:
    """--breakdown: where a miss goes, in-process (seconds instead of minutes)."""
    results = asyncio.run(measure_breakdown(count, rounds))
    print(f"LDAP miss breakdown, in-process, {count} calls each, "
          f"median of {rounds} rounds (CPU per call)")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"  {name:34s} {value:7.1f} us")
    bare = medians["bare DirectoryCA.issue (anchor)"]
    lookup = medians["backend lookup, fresh address"]
    batched = medians["  16 addresses in one search"]
    layer = medians["LDAP layer, never-seen search"]
    print("ratios:")
    print(f"  backend lookup vs bare issue:          {bare / lookup:.2f}x"
          f"  (16 addresses in one search: {bare / batched:.2f}x)")
    print(f"  backend + LDAP layer vs bare issue:    {bare / (lookup + layer):.2f}x"
          "  (no sockets, no event loop)")
    print(f"  whole miss vs bare issue:              "
          f"{bare / medians['whole miss, 16 connections']:.2f}x  (event loop, no sockets)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--log-level", default="warning", help="keypost serve --log-level")
    parser.add_argument("--ca-key-type", default="ecdsa-p256", choices=("ecdsa-p256", "rsa-3072"),
                        help="the directory CA's key (keypost directory init --ca-key-type); "
                        "the miss row's anchor issues with the same key")
    parser.add_argument("--breakdown", type=int, metavar="COUNT",
                        help="only where a miss goes, in-process, COUNT calls per figure")
    parser.add_argument("--gc-pause", type=int, metavar="COUNT",
                        help="only the full GC pause with COUNT cached containers, in-process")
    parser.add_argument("--serve-static", nargs=2, metavar=("PORT", "CERTS"), help="internal")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run servers and load generator at this nice level (e.g. -10 as root on a "
        "shared machine, so that other processes disturb both servers less)",
    )
    args = parser.parse_args()
    global NICE
    NICE = args.nice
    if args.breakdown:
        print_breakdown(args.breakdown, args.rounds)
        return 0
    if args.gc_pause:
        print_gc_pause(args.gc_pause, args.rounds)
        return 0
    if args.serve_static:
        serve_static(int(args.serve_static[0]), Path(args.serve_static[1]))
        return 0
    for tool in ("gcc", "slapd", "slapadd"):
        if shutil.which(tool) is None:
            print(f"bench_ldap: {tool} is needed", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="bench-ldap-") as tmp:
        folder = Path(tmp)
        ldapload = folder / "ldapload"
        subprocess.run(
            ["gcc", "-O2", "-o", str(ldapload), str(HERE / "ldapload.c")],
            check=True,
            timeout=120,
        )
        data = folder / "data"
        gateway_pem = gateway_certificate(folder)
        keypost_cli("directory", "init", "--data", str(data), "--suffix", SUFFIX,
                    "--ca-key-type", args.ca_key_type)
        keypost_cli(
            "directory", "domain", "add", DOMAIN, "--encryption-cert", str(gateway_pem),
            "--data", str(data),
        )
        search_file = folder / "search.ber"
        search_file.write_bytes(search_message(ADDRESS))
        bind_file = folder / "bind.ber"
        bind_file.write_bytes(M.encode_message(M.LDAPMessage(1, M.BindRequest(3, "", b""))))
        # new addresses in every round (ldapload wraps around at the end of a file)
        miss_files = [folder / f"misses{n}.ber" for n in range(args.rounds)]
        for n, miss_file in enumerate(miss_files):
            miss_file.write_bytes(
                b"".join(search_message(f"user{n}.{i}@{DOMAIN}", 1) for i in range(100_000))
            )

        kp_port, slapd_port = free_port(), free_port()
        serve = [
            *pinned(0), *KEYPOST, "directory", "serve", "--data", str(data),
            "--ldap", f"127.0.0.1:{kp_port}", "--log-level", args.log_level,
        ]
        results: dict[str, list[Result]] = {}
        misses: list[Result] = []
        bares: list[float] = []
        with process(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as kp:
            wait_port(kp_port)
            certificates = fetch_certificates(kp_port, ADDRESS)
            if not certificates:
                raise RuntimeError("keypost returned no certificate for the benchmark address")
            conf = slapd_folder(folder / "slapd", certificates)
            slapd = [
                *pinned(0), "slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{slapd_port}/",
                "-d", "0",
            ]
            certs_file = folder / "certs.der"
            certs_file.write_bytes(b"".join(certificates))
            static_port = free_port()
            static = [*pinned(0), sys.executable, __file__, "--serve-static", str(static_port),
                      str(certs_file)]
            with process(slapd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as sl, \
                    process(static) as st:
                wait_port(slapd_port)
                wait_port(static_port)
                slapd_certs = fetch_certificates(slapd_port, ADDRESS)
                assert slapd_certs == certificates, "slapd must serve the same certificates"
                for rnd in range(args.rounds):
                    # the miss contender and its anchor alternate with the others too
                    misses.append(run_load(ldapload, kp.pid, kp_port, args.connections,
                                           args.seconds, "persist", miss_files[rnd]))
                    bares.append(bare_issue_rate(data, gateway_pem, min(args.seconds, 2.0)))
                    for name, pid, port in (("slapd", sl.pid, slapd_port),
                                            ("keypost", kp.pid, kp_port),
                                            ("static", st.pid, static_port)):
                        for mode in ("persist", "session"):
                            r = run_load(
                                ldapload, pid, port, args.connections, args.seconds, mode,
                                search_file, bind_file if mode == "session" else None,
                            )
                            results.setdefault(f"{name} {mode}", []).append(r)
        miss = median_run(misses)
        bare = statistics.median(bares)

    size = sum(len(c) for c in certificates)
    print(f"LDAP search, {args.connections} connections, {len(certificates)} certificate(s) "
          f"of {size} bytes per entry, median of {args.rounds} rounds of {args.seconds:g} s, "
          f"{args.ca_key_type} CA")
    med = {k: median_run(v) for k, v in results.items()}
    print(line("slapd back-mdb (anchor)", med["slapd persist"]))
    print(line("keypost, cached containers", med["keypost persist"]))
    print(line("LDAP layer alone (static backend)", med["static persist"]))
    print(line("slapd bind+search+unbind", med["slapd session"]))
    print(line("keypost bind+search+unbind", med["keypost session"]))
    print(line("LDAP layer alone, bind+search+unb.", med["static session"]))
    print(line("keypost, new container per search", miss))
    print(f"  {'bare issue rate, same CA key':34s} {bare:7.0f}/s")
    print("ratios:")
    print(f"  cached search vs slapd:          "
          f"{med['keypost persist']['rate'] / med['slapd persist']['rate']:.2f}x  (goal >= 1.0)")
    print(f"  CPU per cached search, slapd/keypost: "
          f"{med['slapd persist']['cpu_us'] / med['keypost persist']['cpu_us']:.2f}x")
    print(f"  LDAP layer alone vs slapd:       "
          f"{med['static persist']['rate'] / med['slapd persist']['rate']:.2f}x  (CPU "
          f"{med['slapd persist']['cpu_us'] / med['static persist']['cpu_us']:.2f}x)")
    print(f"  bind+search+unbind vs slapd:     "
          f"{med['keypost session']['rate'] / med['slapd session']['rate']:.2f}x")
    print(f"  new container per search vs bare issue: {miss['rate'] / bare:.2f}x  (goal >= 0.5;"
          f" rounds {', '.join(f'{m[RATE] / b:.2f}' for m, b in zip(misses, bares, strict=True))})")
    print(f"  CPU per miss vs bare issue: {miss['cpu_us']:.0f} vs {1e6 / bare:.0f} us")
    spread = [statistics.pstdev([r["rate"] for r in v]) / statistics.mean([r["rate"] for r in v])
              for v in results.values()]
    print(f"  (round-to-round spread up to {max(spread) * 100:.0f}% of the mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
