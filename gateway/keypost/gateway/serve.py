"""Builds the gateway from a configuration and runs the aiosmtpd server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from keypost.core.fdlimit import connection_budget, raise_open_files_limit
from keypost.gateway.binding import make_bindings
from keypost.gateway.clients import Network, admits
from keypost.gateway.config import GatewayConfig, HostPort, RecipientBinding, check_addresses
from keypost.gateway.directory import (
    DirectoryClient,
    load_directory_files,
    make_directory,
)
from keypost.gateway.errors import ConfigError
from keypost.gateway.handler import GatewayHandler
from keypost.gateway.kept import FOLDER as KEPT_FOLDER
from keypost.gateway.kept import KeptContainers
from keypost.gateway.keys import DomainKeys, load_all_keys
from keypost.gateway.pipeline import Pipeline
from keypost.gateway.quarantine import Maildir, loose_warning
from keypost.gateway.relay import Relay
from keypost.gateway.scan import Scanner, make_scanner

log = logging.getLogger("keypost.gateway")

WORKERS = 32
# aiosmtpd's loggers: every command (addresses) at INFO, every DATA line (message bodies)
# at DEBUG. The gateway logs one line per message itself.
SMTP_LOGGERS = ("mail.log", "mail.debug")


def quiet_smtp_logging() -> None:
    """Pin aiosmtpd's loggers to WARNING whatever log_level says: neither message content
    nor addresses of each command belong in the gateway's log."""
    for name in SMTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class Sessions:
    """SMTP sessions open at once: of allowed clients (at most `limit`; more get 421), and
    of refused peers waited for until they say QUIT (at most REFUSED_AT_ONCE). Without a
    limit the process ran out of file descriptors and then greeted nobody at all."""

    limit: int
    admitted: int = 0
    refused: int = 0

    def take(self, admitted: bool) -> bool:
        """Count one more session of its kind, if there is room for it."""
        if admitted:
            if self.admitted >= self.limit:
                return False
            self.admitted += 1
        else:
            if self.refused >= REFUSED_AT_ONCE:
                return False
            self.refused += 1
        return True

    def release(self, admitted: bool) -> None:
        if admitted:
            self.admitted -= 1
        else:
            self.refused -= 1


@dataclass(frozen=True)
class Gateway:
    config: GatewayConfig
    keys: dict[str, DomainKeys]
    scanner: Scanner
    directory: DirectoryClient
    pipeline: Pipeline
    handler: GatewayHandler
    kept: KeptContainers | None  # signing containers on disk (None: not kept)
    sessions: Sessions


def build(config: GatewayConfig, keep_state: bool = True) -> Gateway:
    """Load keys and secrets, connect nothing yet. Raises ConfigError. `keep_state` False:
    signing containers are not written to (nor read from) `state_dir` (check-config)."""
    keys = dict(load_all_keys(config))
    scanner = make_scanner(config.scan, config.timeouts.scan)
    # read once: every part below gets the same certificates and the one password
    files = load_directory_files(config.directory)
    kept = (KeptContainers(config.state_dir / KEPT_FOLDER)
            if keep_state and config.directory.url is not None else None)
    directory = make_directory(config.directory, config.timeouts.directory, files, kept)
    pipeline = Pipeline(
        keys,
        config.policy,
        scanner,
        directory,
        directory_issuers=[c.subject for c in files.trust_anchors],
        scan_plain=config.scan.scan_plain,
        max_message_size=config.max_message_size,
        # a signature taken off to decrypt is checked against every CA the gateway trusts
        signature_anchors=[*files.trust_anchors, *files.genuine_roots],
        bindings=(make_bindings(config.directory, files.password, config.timeouts.directory)
                  if config.policy.recipient_binding is RecipientBinding.ENFORCE else None),
    )
    quarantine = Maildir(config.quarantine_dir)  # created on first use (or by `run`)
    problem = quarantine.problem()
    if problem is not None:
        raise ConfigError(f"quarantine_dir: {problem}")
    handler = GatewayHandler(
        pipeline.process,
        Relay(config.next_hop, config.timeouts.next_hop, config.hostname),
        quarantine,
        config.hostname,
        config.timeouts.processing,
        lmtp=config.protocol == "lmtp",
        max_recipients=config.max_recipients,
    )
    return Gateway(config, keys, scanner, directory, pipeline, handler, kept,
                   Sessions(config.max_connections))


def start_kept(kept: KeptContainers) -> None:
    """Create the state folder and drop what is of no more use. A folder that cannot be
    made costs a warning, not the start: signing works, only a restart forgets more."""
    try:
        kept.ensure()
    except OSError as exc:
        log.warning("state_dir: cannot create %s (%s): the previous signing containers of "
                    "senders will be forgotten at each restart", kept.folder,
                    exc.strerror or exc)
        return
    kept.prune(dt.datetime.now(dt.UTC))


def smtp_kwargs(cfg: GatewayConfig) -> dict[str, Any]:
    """aiosmtpd SMTP settings: raw bytes (no decoding), SIZE limit, SMTPUTF8, idle timeout."""
    return {
        "hostname": cfg.hostname,
        "ident": "keypost gateway",
        "data_size_limit": cfg.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "timeout": cfg.timeouts.smtp_session,
    }


# After its 554 greeting a refused peer may still say QUIT (RFC 5321 3.1: the server waits
# for it and answers anything else with 503); these bound what it costs the gateway.
REFUSED_COMMANDS = 5
REFUSED_WAIT = 10.0  # seconds, for each of them
# Refused peers waited for at once; any more are hung up on after the 554 greeting.
REFUSED_AT_ONCE = 16


# GatewaySMTP hooks aiosmtpd's private session coroutine: were it renamed in a later
# aiosmtpd, the override would never run and every peer would be served. Fail at import
# instead (the tests of allowed_clients would fail too, but only where they run).
# The same for _timeout_cb, which GatewaySMTP extends to drop clients that read nothing,
# and _cb_client_connected, which it hands to the reader it installs (SessionInput); and
# _call_handler_hook and _reset_timeout, around which it stops the session timer.
for _hook in ("_handle_client", "_timeout_cb", "_cb_client_connected", "_call_handler_hook",
              "_reset_timeout"):
    if not callable(getattr(SMTP, _hook, None)):  # pragma: no cover
        raise ImportError(f"this aiosmtpd has no SMTP.{_hook}, which keypost's gateway "
                          "hooks: use aiosmtpd 1.4")


class EndOfInput(ConnectionResetError):
    """The client's input ended where the session needed more of it. A ConnectionResetError
    because aiosmtpd's session loop ends the session on one (closing the connection once
    the replies already written are sent), wherever it is raised, in DATA too."""


class SessionInput(asyncio.StreamReader):
    """The reader of one session's input, under which the end of input ends the session
    only once a read needs more than was received: everything before it is handled."""

    async def readuntil(self, separator: Any = b"\n") -> bytes:  # Any: 3.13 takes tuples
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError:
            # a command line or a message cut off (or nothing left): the end has come
            # where nothing can complete it. aiosmtpd would take this for a fault of the
            # command and answer it with a 500 (then read again, and again).
            raise EndOfInput("end of input") from None


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP server, but a peer outside `allowed_clients` is greeted with 554 and
    never gets to a transaction. The check sits where aiosmtpd itself turns away a
    connection before the greeting (a failed PROXY handshake): the start of the session.

    And a client that half-closes (shuts its sending side once its commands are sent) gets
    a reply to each of them: see eof_received."""

    def __init__(self, handler: Any, *, allowed_clients: tuple[Network, ...],
                 sessions: Sessions, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd made a plain StreamReader; the protocol feeds the reader it is given,
        # so it is set up again with one of ours (as aiosmtpd did, before any connection)
        asyncio.StreamReaderProtocol.__init__(
            self, SessionInput(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.allowed_clients = allowed_clients
        self.sessions = sessions
        self.counted: bool | None = None  # counted in `sessions` as admitted (True) or not

    async def _handle_client(self) -> None:
        assert self.session is not None and self.transport is not None
        # kept: connection_lost sets self.transport to None (and cancels this coroutine)
        transport = self.transport
        peer = self.session.peer
        host = peer[0] if isinstance(peer, tuple) and peer else None
        admitted = admits(self.allowed_clients, host)
        counted = self.sessions.take(admitted)
        if counted:
            self.counted = admitted
        if admitted:
            if counted:
                with contextlib.suppress(EndOfInput):  # the session's normal end
                    await super()._handle_client()
                return
            log.warning("refused a connection from %s: %d sessions open (max_connections)",
                        host, self.sessions.limit)
            with contextlib.suppress(ConnectionError):
                await self.push(f"421 4.3.2 {self.hostname} has too many connections, "
                                "try again later")
            transport.close()
            return
        log.warning("refused a connection from %s: not in allowed_clients", host)
        try:
            await self.push(f"554 5.7.1 {self.hostname} takes no mail from {host}: "
                            "not in allowed_clients")
            for _ in range(REFUSED_COMMANDS if counted else 0):
                line = await asyncio.wait_for(self._reader.readline(), REFUSED_WAIT)
                if not line:
                    break
                if line.strip().upper() == b"QUIT":
                    await self.push("221 2.0.0 Bye")
                    break
                await self.push("503 5.5.1 Bad sequence of commands: only QUIT")
        except (TimeoutError, ValueError, ConnectionError):
            pass  # silent, over-long (ValueError) or gone: hang up all the same
        finally:
            transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        """RFC 1870 4: the SIZE limit counts the message, not the dots that quote its lines
        in DATA. aiosmtpd counts what arrives, dots included, so a message of the advertised
        size whose lines began with dots got 552. What arrives is at most a third more than
        the message (a line "." comes as ".."): aiosmtpd's count stops only that, and the
        pipeline refuses a message over the limit itself (554 5.3.4)."""
        limit = self.data_size_limit
        if limit:
            self.data_size_limit = limit + -(-limit // 3)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.data_size_limit = limit

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """`smtp_session` bounds the client's silence, not the gateway's own work: while
        the handler works on the message the client sent (scan, directory, next hop: each
        bounded by its own timeout), the session timer is stopped, and it starts again,
        whole, once the reply is ready. aiosmtpd's ran on: a slow scan or next hop closed
        the connection before the reply, and a copy already relayed was sent again."""
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            if self.transport is not None:
                self._reset_timeout()

    def eof_received(self) -> bool | None:
        """The client shut its sending side. aiosmtpd cancels the session here: a message
        being handled was relayed (the work in the worker thread runs on) without its 250
        reaching the client, which kept it and sent it again; pipelined commands behind
        the EOF went unanswered. Here the reader is only told that the input ended: the
        session answers what was received, in order, and the first read that needs more
        ends it (SessionInput), the connection closing once the replies are sent. A
        client that does not read them is dropped by the session timeout (_timeout_cb)."""
        asyncio.StreamReaderProtocol.eof_received(self)  # the reader sees the end of input
        # True keeps the socket open for our replies. A TLS connection cannot stay
        # half-open (asyncio's TLS transport closes at the end of input, and warns at
        # True); the gateway offers no STARTTLS anyway (aiosmtpd answers 454).
        return self.session is None or self.session.ssl is None

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self.counted is not None:
            self.sessions.release(self.counted)
            self.counted = None

    def _timeout_cb(self) -> None:
        """The session timeout closes the connection, and a close waits until every reply
        is sent: a client that reads none of them (pipelined commands; aiosmtpd then
        stops reading) held its connection for ever. Replies it has left unread for a
        whole session timeout are dropped with the connection."""
        transport = self.transport
        super()._timeout_cb()  # type: ignore[no-untyped-call]
        if isinstance(transport, asyncio.Transport) and transport.get_write_buffer_size():
            log.info("dropped a client that reads no replies")
            transport.abort()


class GatewayLMTP(GatewaySMTP, LMTP):
    """The same for LMTP: its greeting is SMTP's (RFC 2033 4.1)."""


def smtp_factory(gw: Gateway) -> SMTP:
    """The protocol object for one incoming connection (`loop.create_server`'s factory)."""
    server_class = GatewayLMTP if gw.config.protocol == "lmtp" else GatewaySMTP
    return server_class(gw.handler, allowed_clients=gw.config.allowed_clients,
                        sessions=gw.sessions, **smtp_kwargs(gw.config))


def check_bound_ports(config: GatewayConfig, ports: list[int]) -> None:
    """`listen` on port 0: the kernel may hand out the next hop's port when nothing listens
    there (one in the ephemeral range), and relaying to ourselves would loop every message.
    Raises ConfigError, as the same setting written out would at load."""
    for port in ports:
        check_addresses(HostPort(config.listen.host, port), config.next_hop,
                        clients_listed=True)


# Descriptors one session may hold at once: its connection, the next hop's, the
# directory's, a scan command's three pipes.
FILES_PER_SESSION = 6


def fit_open_files(sessions: Sessions) -> None:
    """Raise the open files limit, and lower `sessions.limit` (max_connections) to what
    fits in it, with a warning: past the limit nobody gets a greeting at all."""
    files = raise_open_files_limit()
    fits = max(1, connection_budget(files, 1) // FILES_PER_SESSION - REFUSED_AT_ONCE)
    if sessions.limit > fits:
        log.warning("max_connections %d does not fit the open files limit (%d): at most %d "
                    "sessions at once (raise the limit, e.g. LimitNOFILE in a systemd unit)",
                    sessions.limit, files, fits)
        sessions.limit = fits


async def run(gw: Gateway, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT. Prints `listening smtp://HOST:PORT` lines, then `ready`
    (what `keypost start` waits for)."""
    quiet_smtp_logging()
    fit_open_files(gw.sessions)
    gw.handler.quarantine.ensure()  # a quarantine that cannot be created stops the start
    for folder, mode in gw.handler.quarantine.loose_folders():
        # Not tightened: an existing folder's mode is the administrator's choice (e.g. a
        # review group); but held mail is decrypted, so it must not pass unremarked.
        log.warning("%s", loose_warning(folder, mode))
    if gw.kept is not None:
        start_kept(gw.kept)
    loop = asyncio.get_running_loop()
    # Worker threads mostly wait on the next hop, the directory or a scanner process;
    # the default pool (cores + 4) would queue concurrent sessions behind a few of them.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WORKERS))
    server = await loop.create_server(
        lambda: smtp_factory(gw), host=gw.config.listen.host, port=gw.config.listen.port
    )
    try:
        check_bound_ports(gw.config, [sock.getsockname()[1] for sock in server.sockets])
    except ConfigError:
        server.close()
        raise
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        print(f"listening smtp://{host}:{port}", flush=True)
    log.info("keypost gateway up, next hop %s", gw.config.next_hop)
    print(f"next hop smtp://{gw.config.next_hop}", flush=True)
    print("ready", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    server.close()  # no new sessions; messages in hand get their reply first
    await gw.handler.drain(gw.config.timeouts.processing + gw.config.timeouts.next_hop)
    await server.wait_closed()
    log.info("keypost gateway stopped")
