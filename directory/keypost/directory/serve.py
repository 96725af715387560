"""`keypost directory serve`: one asyncio process serving LDAP, LDAPS and HTTP from a data dir."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from keypost.core import logfmt
from keypost.core.containers import sha256_fingerprint
from keypost.core.fdlimit import connection_budget, raise_open_files_limit
from keypost.directory import admin
from keypost.directory.accounts import Authenticator
from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.config import DataDir, load_settings
from keypost.directory.controller import Controller, Lifetimes
from keypost.directory.errors import ConfigError, StoreError
from keypost.directory.http import PeerCappedSite, make_app, make_runner
from keypost.directory.ldap.server import LdapServer, Limits
from keypost.directory.ldap_backend import DirectoryLdapBackend
from keypost.directory.metrics import GcWatch
from keypost.directory.peer_counts import PeerCounts
from keypost.directory.store.sqlite import SqliteStore
from keypost.directory.writer import BatchWriter, sqlite_writer

log = logging.getLogger("keypost.directory")

FLUSH_SECONDS = 1.0  # issued containers and audit records are written in batches
PURGE_SECONDS = 3600.0


@dataclass(frozen=True)
class ServeOptions:
    data: DataDir
    ldap: tuple[str, int]
    ldaps: tuple[str, int] | None = None
    http: tuple[str, int] | None = None
    https: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    cleartext_passwords: CleartextPolicy = CleartextPolicy.LOOPBACK
    max_per_peer: int = Limits.max_per_peer  # LDAP connections, and HTTP ones, per address
    # at shutdown, how long to wait for a store another process holds locked before the
    # last batch goes to a journal file (keypost.directory.journal)
    shutdown_store_wait: float = 30.0


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} wants HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _tls_context(options: ServeOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None and options.tls_key is None:
        if options.ldaps is not None or options.https is not None:
            raise ConfigError("--ldaps and --https need --tls-cert and --tls-key")
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise ConfigError("give both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate/key: {exc}") from None
    return context


def _configure_logging(level: str) -> None:
    logfmt.configure(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _say(line: str) -> None:
    print(line, flush=True)


async def _maintain(controller: Controller, writer: BatchWriter,
                    retention: dt.timedelta) -> None:
    """Batch writes every second and, hourly, the purge of expired containers and old
    audit, both in the writer's thread (one after the other, never overlapping)."""
    since_purge = PURGE_SECONDS
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            issued, audit = controller.take_pending()  # after a recheck: a rekey retires some
            await writer.write(issued, audit, controller.take_retracted())
            controller.written()
            since_purge += FLUSH_SECONDS
            if since_purge >= PURGE_SECONDS:
                since_purge = 0.0
                now = dt.datetime.now(dt.UTC)
                purged = await writer.purge(now, retention)
                controller.purged(now)
                if any(purged):
                    log.info("event=purge issued=%d audit=%d", *purged)
        except Exception:
            log.exception("event=maintenance_failed")


async def serve(options: ServeOptions) -> None:
    data = options.data
    settings = load_settings(data)
    admin.ensure_private(data.ca_key)
    ca = admin.load_ca(data, settings)
    tls = _tls_context(options)
    store = SqliteStore(data.database)
    writer = sqlite_writer(data.database)
    # what earlier shutdowns left in journal files, before the controller first asks the
    # store which addresses have containers
    await writer.replay()
    lifetimes = Lifetimes(dt.timedelta(hours=settings.encrypt_hours),
                          dt.timedelta(days=settings.sign_days))
    controller = Controller(store, ca, lifetimes, settings.cache_size,
                            genuine_to_anonymous=settings.genuine_to_anonymous)
    controller.snapshot()  # fail now, not on the first request, when a stored key is bad
    authenticator = Authenticator(store)
    backend = DirectoryLdapBackend(controller, authenticator, settings.suffix)
    # LDAP and HTTP(S) share the process's descriptors: each gets half of what the open
    # files limit leaves (4096 each at most), so that the next client is told busy
    files = raise_open_files_limit()
    listeners = sum(where is not None for where in (options.ldap, options.ldaps, options.http,
                                                    options.https))
    cap = min(Limits.max_connections, connection_budget(files, listeners, shares=2))
    log.info("event=limits open_files=%d ldap_connections=%d http_connections=%d",
             files, cap, cap)
    ldap = LdapServer(backend, tls=tls, max_addresses=settings.max_addresses,
                      limits=Limits(max_per_peer=options.max_per_peer, max_connections=cap),
                      cleartext_passwords=options.cleartext_passwords,
                      on_bind_refused=lambda reason: controller.metrics.request(
                          "ldap", f"bind_{reason}"))
    runner: web.AppRunner | None = None
    maintenance = asyncio.create_task(
        _maintain(controller, writer, dt.timedelta(days=settings.audit_retention_days)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second one: the operator will not wait for a locked store
            log.warning("event=shutdown_hurried")
            writer.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    gc_watch = controller.metrics.gc = GcWatch()
    try:
        gc_watch.install()
        # What is loaded by now (modules, the CA, the snapshot, the LDAP server: ~45,000
        # objects) lives as long as the process: out of the cyclic GC's sight, every full
        # collection, which stops all connections, no longer walks it (~8 ms each). Before
        # the first listen, so that no connection's objects are frozen with them.
        gc.collect()
        gc.freeze()
        host, port = await ldap.listen(*options.ldap)
        _say(f"listening ldap://{host}:{port}/{settings.suffix}")
        if options.ldaps is not None:
            host, port = await ldap.listen(*options.ldaps, implicit_tls=True)
            _say(f"listening ldaps://{host}:{port}/{settings.suffix}")
        if options.http is not None or options.https is not None:
            app = make_app(controller, authenticator, settings.url, settings.max_addresses,
                           options.cleartext_passwords)
            runner = make_runner(app)
            await runner.setup()
            http_peers = PeerCounts()  # http and https connections per address
            for scheme, where, context in (("http", options.http, None),
                                           ("https", options.https, tls)):
                if where is None:
                    continue
                known = len(runner.addresses)
                await PeerCappedSite(runner, *where, max_per_peer=options.max_per_peer,
                                     counts=http_peers, ssl_context=context,
                                     max_connections=cap).start()
                sock_host, sock_port, *_ = runner.addresses[known]  # this site's first socket
                _say(f"listening {scheme}://{sock_host}:{sock_port}/")
        _say(f"trust anchor SHA-256 {sha256_fingerprint(ca.certificate)}")
        _say("ready")
        await stop.wait()
        log.info("event=shutdown")
    finally:
        gc_watch.uninstall()
        maintenance.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintenance
        await ldap.close()
        if runner is not None:
            await runner.cleanup()
        # nothing issued is lost: a batch in flight finishes first, then the rest, into
        # the store or, locked past the wait, a journal file the next start writes
        issued, audit = controller.take_pending()
        kept = await writer.drain(issued, audit, wait=options.shutdown_store_wait,
                                  retracted=controller.take_retracted())
        await writer.close()
        authenticator.close()
        store.close()
    if not kept:
        raise StoreError("the last batch was neither written nor journaled (event=batch_lost)")


def run(options: ServeOptions) -> int:
    _configure_logging(options.log_level)
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        raise ConfigError(f"cannot serve: {exc.strerror or exc}") from None
    return 0
