"""Thin asyncio glue: listeners, connections and the backend calls around the sans-IO core.

`LdapServer(backend, tls=ctx)` serves any number of listeners (`listen(host, port)`
for ldap:// with StartTLS when a TLS context is given, `implicit_tls=True` for ldaps://).
Protocol decisions live in `connection` (what a PDU means) and `answers` (what a search
returns); this module adds sockets, tasks, limits and timeouts. Abuse limits: a cap on
connections overall and per peer address (the excess gets a Notice of Disconnection
`busy`), on outstanding operations per connection (reading pauses), on message size, a
deadline for a connection's first complete request, an idle timeout, and a time limit
on every backend call. A failing backend call fails that operation only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from keypost.directory.cleartext import CleartextPolicy, password_allowed
from keypost.directory.ldap import ber
from keypost.directory.ldap.answers import (
    EntryCache,
    PlanKind,
    SearchPlan,
    plan_search,
    root_dse,
    suffix_entry,
)
from keypost.directory.ldap.backend import AddressEntry, BackendBusy, LdapBackend
from keypost.directory.ldap.cache import FifoCache
from keypost.directory.ldap.connection import (
    Abandon,
    Bind,
    BindRefused,
    ConnectionClosed,
    Event,
    ProtocolViolation,
    Search,
    SearchCache,
    ServerConnection,
    StartTLSRequested,
    Unbind,
    UnsupportedOperation,
    bind_response,
    extended_response,
    notice_of_disconnection,
    paged_done_controls,
    result_message,
    search_done,
)
from keypost.directory.ldap.dn import parse_dn, reduce_bind_name
from keypost.directory.ldap.messages import ResultCode, SearchRequest, frame
from keypost.directory.ldap.paging import Page, plan_page
from keypost.directory.peer_counts import PeerCounts

log = logging.getLogger("keypost.directory.ldap")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Limits:
    """Abuse limits; the defaults suit a directory serving mail clients and gateways."""

    max_connections: int = 4096
    # Per peer address (loopback too): one source cannot take the whole table. A mail
    # client holds one or two connections, a gateway a pool; 64 leaves room for NAT.
    max_per_peer: int = 64
    max_outstanding: int = 32  # operations in progress per connection before reading pauses
    max_message_size: int = ber.DEFAULT_MAX_MESSAGE
    # Bytes of requests not yet complete, all connections together. Each connection may
    # hold a request of up to max_message_size in the making, so without this 4096
    # openers declaring 1 MiB each and sending slowly would hold 4 GiB until their idle
    # timeout. Past it the connection holding the most is dropped: the openers, since a
    # mail client's requests are a few KiB and arrive whole.
    max_unfinished_bytes: int = 64 << 20
    max_addresses: int = 100  # addresses taken from one filter
    idle_timeout: float = 300.0  # seconds without a request before the server closes
    # A new connection must complete its first request within this; openers that send
    # nothing (or a byte at a time) are dropped long before the idle timeout.
    first_request_timeout: float = 10.0
    operation_timeout: float = 30.0  # cap on one backend call
    tls_handshake_timeout: float = 10.0
    # Closing waits this long for the last answers to be sent (a Notice of Disconnection,
    # the answers before an unbind), then drops the connection: a client that reads
    # nothing held it for ever.
    close_timeout: float = 10.0


class LdapServer:
    """An LDAPv3 server answering certificate lookups from an `LdapBackend`."""

    def __init__(
        self,
        backend: LdapBackend,
        *,
        tls: ssl.SSLContext | None = None,
        max_addresses: int | None = None,
        limits: Limits | None = None,
        cleartext_passwords: CleartextPolicy = CleartextPolicy.LOOPBACK,
        on_bind_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_bind_refused(reason)` is told of each bind the server refuses without an
        answer from the backend ("tls_required": a password without TLS that
        `cleartext_passwords` forbids; "busy": the backend raised BackendBusy), e.g. to
        count it."""
        limits = limits or Limits()
        if max_addresses is not None:
            limits = dataclasses.replace(limits, max_addresses=max_addresses)
        self.backend = backend
        self.tls = tls
        self.limits = limits
        self.cleartext_passwords = cleartext_passwords
        self.on_bind_refused = on_bind_refused
        self.suffix = backend.suffix
        self.suffix_dn = parse_dn(backend.suffix)
        self.entries = EntryCache(backend.suffix)
        self.searches = SearchCache()
        # by (peer address, request), as `searches` are keyed: see SearchCache
        self._plans: FifoCache[tuple[str, SearchRequest], SearchPlan] = FifoCache(
            SearchCache.MAX_ENTRIES)
        self._servers: list[asyncio.Server] = []
        self._connections: set[_LdapProtocol] = set()
        self._per_peer = PeerCounts()  # peer address -> its connections
        self._held = 0  # bytes all connections hold unhandled (Limits.max_unfinished_bytes)

    async def listen(self, host: str, port: int, *, implicit_tls: bool = False) -> tuple[str, int]:
        """Start a listener (port 0 = any free port); return the address it is bound to.

        Plain listeners offer StartTLS when the server has a TLS context; `implicit_tls`
        makes an ldaps:// listener (TLS from the first byte) and needs the context.
        """
        if implicit_tls and self.tls is None:
            raise ValueError("an ldaps listener needs a TLS context")
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _LdapProtocol(self, tls_active=implicit_tls),
            host,
            port,
            ssl=self.tls if implicit_tls else None,
            ssl_handshake_timeout=self.limits.tls_handshake_timeout if implicit_tls else None,
            reuse_address=True,
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def plan(self, request: SearchRequest, small: bool, peer_host: str = "") -> SearchPlan:
        """plan_search, memoised for small requests of each peer address: clients repeat
        them, and no peer may tell by the time that another sent one (see SearchCache)."""
        if not small:
            return plan_search(request, self.suffix_dn, self.limits.max_addresses)
        key = (peer_host, request)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_search(request, self.suffix_dn, self.limits.max_addresses)
            self._plans.put(key, plan)
        return plan

    def _shed_unfinished(self) -> None:
        """Over Limits.max_unfinished_bytes: drop the connections holding the most until
        under it. A scan of all connections, but only when a flood is on."""
        while self._held > self.limits.max_unfinished_bytes:
            largest = max(self._connections, key=lambda c: c.held, default=None)
            if largest is None or not largest.held:
                return
            largest.drop_unfinished()

    @property
    def unfinished_bytes(self) -> int:
        """Bytes the connections hold unhandled, all together."""
        return self._held

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection (operations in progress are cancelled)."""
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.abort_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> LdapServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_READ_SIZE = 16384  # requests are small; a large one simply takes several reads


class _LdapProtocol(asyncio.BufferedProtocol):
    """One client connection: feeds the sans-IO connection and acts on its events.

    A BufferedProtocol: asyncio reads into one buffer per connection instead of
    allocating 256 KiB per read (which glibc serves with mmap/mremap/munmap: three
    system calls per request).
    """

    def __init__(self, server: LdapServer, tls_active: bool) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()  # cached: get_running_loop() calls getpid()
        self.read_buffer = memoryview(bytearray(_READ_SIZE))
        self.limits = server.limits
        self.conn = ServerConnection(server.limits.max_message_size, server.searches)
        self.tls_active = tls_active
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = ""  # unknown: never counts as loopback
        self.principal: object | None = None
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.blocked = False  # a bind or StartTLS is in progress: no new operations
        self.paused = False  # reading is paused
        self.write_paused = False  # asyncio's write buffer is full: the client reads slowly
        self.closing = False
        self.last_activity = 0.0  # of the last complete request, or the client reading
        self.idle_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.counted = False  # in the server's per-peer count
        self.requests = 0  # complete requests received (only whether any is read)
        self.eof = False  # the client shut down its write side
        self.held = 0  # this connection's share of server._held

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = self.peer_host = str(peer[0])
            self.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
            self.conn.cache_scope = host.encode() + b"\0"
        server = self.server
        if len(server._connections) >= self.limits.max_connections:
            self._refuse("too_many_connections", "too many connections")
            return
        if not server._per_peer.admit(self.peer_host, self.limits.max_per_peer):
            self._refuse("too_many_from_peer", "too many connections from your address")
            return
        server._connections.add(self)
        self.counted = True
        self.last_activity = self.loop.time()
        # The idle check starts once the first request is in (see _check_first).
        first = min(self.limits.first_request_timeout, self.limits.idle_timeout)
        self.idle_timer = self.loop.call_later(first, self._check_first)

    def _refuse(self, reason: str, diagnostic: str) -> None:
        log.warning("event=refused reason=%s peer=%s", reason, self.peer)
        assert self.transport is not None
        self.transport.write(notice_of_disconnection(ResultCode.BUSY, diagnostic))
        self.closing = True
        self._close_transport()

    def drop_unfinished(self) -> None:
        """Hang up on a connection for the unfinished input it holds (_shed_unfinished);
        its requests in progress are answered no more."""
        self._refuse("unfinished_input", "too much unfinished input: send requests whole")
        self._hold(0)
        self.conn.discard_input()  # freed now, not once the notice is sent

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        self.conn.receive_data(self.read_buffer[:nbytes].tobytes())
        self._pump()

    def eof_received(self) -> bool | None:
        """The client half-closed: answer every request received before the EOF, then
        close (see _handle). RFC 4511 5.3 would let the server abandon them; slapd answers
        them, and so do we, whether or not they were answered at once. TLS transports
        cannot stay half-open (asyncio closes them), so there the rule is moot."""
        if not self.eof:
            self.eof = True
            self.conn.receive_data(b"")
            self._pump()
        return None if self.closing or self.tls_active else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._connections.discard(self)
        self._hold(0)
        if self.counted:
            self.counted = False
            self.server._per_peer.release(self.peer_host)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.close_timer is not None:
            self.close_timer.cancel()
        for task in self.tasks.values():
            task.cancel()

    def pause_writing(self) -> None:
        """The client does not read its answers: answer nothing more and read no more
        requests until it has (_pump stops), so what it costs stays one buffer."""
        self.write_paused = True
        self._set_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_activity = self.loop.time()  # reading its answers is no idleness
        self._pump()

    # -- event handling ------------------------------------------------------------

    def _pump(self) -> None:
        """Handle what can be handled, then account for the bytes left over."""
        self._handle_events()
        held = self.conn.buffered
        if held != self.held:
            self._hold(held)
            if self.server._held > self.limits.max_unfinished_bytes:
                self.server._shed_unfinished()

    def _hold(self, held: int) -> None:
        """This connection now holds `held` bytes unhandled (server._held is their sum)."""
        self.server._held += held - self.held
        self.held = held

    def _handle_events(self) -> None:
        """Handle events until more data is needed or a limit stops us. Reading resumes
        only here, once every request read is handled and the client reads its answers."""
        while not self.closing:
            # A bind or StartTLS in progress, answers the client has not read, or the
            # cap on operations: requests wait in the socket, not in our memory.
            if self.blocked or self.write_paused or len(self.tasks) >= self.limits.max_outstanding:
                self._set_paused(True)
                return
            event = self.conn.next_event()
            if event is None:
                self._set_paused(False)
                return
            self._handle(event)

    def _handle(self, event: Event) -> None:
        # The idle timeout counts from here: bytes of a request not yet complete do not
        # count, or a client sending one byte a minute would keep its connection for ever.
        self.last_activity = self.loop.time()
        self.requests += 1
        if isinstance(event, Search):
            self._search(event)
        elif isinstance(event, Bind):
            cleartext = not (event.anonymous or self.tls_active or password_allowed(
                self.server.cleartext_passwords, self.peer_host))
            if event.anonymous or cleartext:  # no backend call
                self._bind_without_backend(event, cleartext)
                return
            self.blocked = True  # RFC 4511 4.2.1: nothing else runs during a bind
            self._start(event.message_id, self._bind(event))
        elif isinstance(event, BindRefused):
            self._bind_without_backend(event)
        elif isinstance(event, Abandon):
            task = self.tasks.pop(event.target, None)
            if task is not None:
                task.cancel()  # an abandoned operation gets no response (RFC 4511 4.11)
        elif isinstance(event, UnsupportedOperation):
            self._write(
                result_message(
                    event.message_id, event.response_tag, event.code, event.diagnostic
                )
            )
        elif isinstance(event, StartTLSRequested):
            self._start_tls(event.message_id)
        elif isinstance(event, Unbind):
            self.abort_all()
        elif isinstance(event, ConnectionClosed):  # every request before it is handled
            self._close_when_answered()
        elif isinstance(event, ProtocolViolation):
            log.info("event=protocol_error peer=%s reason=%s", self.peer, event.reason)
            self._write(notice_of_disconnection(ResultCode.PROTOCOL_ERROR, event.reason))
            self.abort_all()

    def _start(self, message_id: int, coro: Coroutine[Any, Any, None]) -> None:
        if message_id in self.tasks:  # RFC 4511 4.1.1.1: IDs of outstanding ops are unique
            coro.close()
            self._write(notice_of_disconnection(ResultCode.PROTOCOL_ERROR, "messageID in use"))
            self.abort_all()
            return
        task = self.loop.create_task(coro)
        self.tasks[message_id] = task
        task.add_done_callback(lambda t: self._finished(message_id, t))

    def _finished(self, message_id: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(message_id) is task:
            del self.tasks[message_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("event=internal_error peer=%s", self.peer, exc_info=task.exception())
        if not self.closing:
            self._pump()
            self._close_when_answered()

    def _close_when_answered(self) -> None:
        """After the client's EOF, close once the operations before it have answered."""
        if self.eof and not self.tasks and not self.closing and self.conn.finished:
            self.abort_all()

    def _bind_without_backend(self, event: Bind | BindRefused, cleartext: bool = False) -> None:
        """An anonymous bind or one the server refuses itself: at once when nothing runs,
        else after the operations before it, like any bind (RFC 4511 4.2.1; OpenLDAP
        abandons them instead). Either way the response follows theirs."""
        if not self.tasks:
            self._answer_without_backend(event, cleartext)
            return
        self.blocked = True
        self._start(event.message_id, self._bind_after_others(event, cleartext))

    async def _bind_after_others(self, event: Bind | BindRefused, cleartext: bool) -> None:
        try:
            await self._others_done(event.message_id)
            self._answer_without_backend(event, cleartext)
        finally:
            self.blocked = False

    async def _others_done(self, message_id: int) -> None:
        """Let operations already running finish under the old identity."""
        others = [t for mid, t in self.tasks.items() if mid != message_id]
        if others:
            await asyncio.wait(others)

    def _answer_without_backend(self, event: Bind | BindRefused, cleartext: bool) -> None:
        self.principal = None  # anonymous, and a failed bind leaves the connection so
        if isinstance(event, BindRefused):
            self._write(bind_response(event.message_id, event.code, event.diagnostic))
        elif not cleartext:
            self._write(bind_response(event.message_id, ResultCode.SUCCESS))
        else:
            # The password has crossed the network in clear already; refusing it tells
            # the client to fix its setup before it does so for real.
            log.info("event=bind_refused reason=cleartext_password peer=%s", self.peer)
            if self.server.on_bind_refused is not None:
                self.server.on_bind_refused("tls_required")
            self._write(bind_response(
                event.message_id, ResultCode.CONFIDENTIALITY_REQUIRED,
                "a password needs TLS here: use StartTLS or ldaps://"))

    async def _bind(self, event: Bind) -> None:
        try:
            await self._others_done(event.message_id)
            self.principal = None
            name = reduce_bind_name(event.name)
            diagnostic = ""
            try:
                async with asyncio.timeout(self.limits.operation_timeout):
                    principal = await self.server.backend.authenticate(
                        name, event.password, self.peer
                    )
            except BackendBusy as exc:
                code, diagnostic = ResultCode.BUSY, str(exc)
                if self.server.on_bind_refused is not None:
                    self.server.on_bind_refused("busy")
            except Exception:
                log.exception("event=backend_error op=bind peer=%s", self.peer)
                code = ResultCode.UNAVAILABLE
            else:
                self.principal = principal
                code = ResultCode.SUCCESS if principal is not None else (
                    ResultCode.INVALID_CREDENTIALS
                )
            self._write(bind_response(event.message_id, code, diagnostic))
        finally:
            self.blocked = False

    def _search(self, event: Search) -> None:
        """Answer a search; the backend call runs eagerly and only becomes a Task if it waits.

        A cached lookup completes without ever suspending, and then costs no Task, no
        timer and no extra loop iteration (Python 3.12's eager tasks, by hand for 3.11).
        """
        request = event.request
        mid = event.message_id
        plan = self.server.plan(request, event.small, self.peer_host)
        if plan.kind is PlanKind.ROOT_DSE:
            op = root_dse(
                self.server.suffix,
                request.attributes,
                self.server.tls is not None and not self.tls_active,
                request.types_only,
            )
            self._write(frame(mid, op) + search_done(mid, paged=event.paged))
            return
        if plan.kind is PlanKind.SUFFIX:
            op = suffix_entry(self.server.suffix, request.attributes, request.types_only)
            self._write(frame(mid, op) + search_done(mid, paged=event.paged))
            return
        if plan.kind is PlanKind.RESULT:
            self._write(
                search_done(mid, plan.code, plan.diagnostic, plan.matched_dn, event.paged)
            )
            return
        addresses = plan.addresses
        page = None
        if event.paging is not None:
            page = plan_page(request, addresses, event.paging)
            if page is None:  # RFC 2696 3: cannot resume; the paged search is over
                self._write(search_done(mid, ResultCode.UNWILLING_TO_PERFORM,
                                        "paged results cookie not from this search", paged=True))
                return
            if not page.addresses:  # the client ended the paged search
                self._write(search_done(mid, controls=paged_done_controls(page.total)))
                return
            addresses = page.addresses
        lookup = self.server.backend.lookup(self.principal, addresses, self.peer)
        try:
            pending = lookup.send(None)
        except StopIteration as stop:
            self._send_entries(event, stop.value, page)
            return
        except Exception:
            log.exception("event=backend_error op=search peer=%s", self.peer)
            self._write(search_done(mid, ResultCode.OTHER, "lookup failed", paged=event.paged))
            return
        self._start(mid, self._search_later(event, lookup, pending, page))

    async def _search_later(
        self,
        event: Search,
        lookup: Coroutine[Any, Any, Sequence[AddressEntry]],
        pending: object,
        page: Page | None,
    ) -> None:
        request = event.request
        timeout = self.limits.operation_timeout
        if request.time_limit:
            timeout = min(timeout, request.time_limit)
        try:
            async with asyncio.timeout(timeout):
                found = await _resume(lookup, pending)
        except TimeoutError:
            code = ResultCode.TIME_LIMIT_EXCEEDED if request.time_limit else ResultCode.UNAVAILABLE
            self._write(
                search_done(event.message_id, code, "lookup took too long", paged=event.paged)
            )
            return
        except Exception:
            log.exception("event=backend_error op=search peer=%s", self.peer)
            self._write(
                search_done(event.message_id, ResultCode.OTHER, "lookup failed", paged=event.paged)
            )
            return
        self._send_entries(event, found, page)

    def _send_entries(
        self, event: Search, found: Sequence[AddressEntry], page: Page | None
    ) -> None:
        request = event.request
        mid = event.message_id
        encode = self.server.entries.encode
        requested = request.attributes
        limit = (request.size_limit or None) if page is None else page.size_limit
        out = []
        code = ResultCode.SUCCESS
        for n, entry in enumerate(found):
            if limit is not None and n >= limit:
                code = ResultCode.SIZE_LIMIT_EXCEEDED
                break
            out.append(frame(mid, encode(entry, requested, request.types_only)))
        controls = b""
        if page is not None:  # a page cut short by the size limit is the last
            controls = paged_done_controls(page.total, page.cookie if not code else b"")
        out.append(search_done(mid, code, paged=event.paged, controls=controls))
        self._write(b"".join(out))

    def _start_tls(self, message_id: int) -> None:
        if self.server.tls is None:
            self._write(
                extended_response(message_id, ResultCode.PROTOCOL_ERROR, "StartTLS not offered")
            )
            return
        if self.tls_active or self.tasks:
            # RFC 4511 4.14.1: TLS already on, or operations outstanding.
            self._write(
                extended_response(
                    message_id, ResultCode.OPERATIONS_ERROR, "StartTLS not possible now"
                )
            )
            return
        if self.conn.buffered:
            self._handle(ProtocolViolation("data sent after a StartTLS request"))
            return
        self._write(extended_response(message_id, ResultCode.SUCCESS))
        self.blocked = True
        task = self.loop.create_task(self._upgrade())
        self.tasks[message_id] = task
        task.add_done_callback(lambda t: self._finished(message_id, t))

    async def _upgrade(self) -> None:
        transport = self.transport
        assert transport is not None and self.server.tls is not None
        try:
            new = await self.loop.start_tls(
                transport,
                self,
                self.server.tls,
                server_side=True,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("event=tls_failed peer=%s reason=%s", self.peer, exc)
            self.closing = True
            transport.abort()
            return
        if new is None:
            self.closing = True
            return
        self.transport = new
        self.tls_active = True
        self.blocked = False

    # -- helpers ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused or self.transport is None or self.closing:
            return
        self.paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _check_first(self) -> None:
        """The first-request deadline: bytes alone (a slow or partial PDU) do not count."""
        if self.requests == 0 and not self.tasks:
            log.info("event=first_request_timeout peer=%s", self.peer)
            self.abort_all()
            return
        self._check_idle()

    def _check_idle(self) -> None:
        loop = self.loop
        idle = loop.time() - self.last_activity
        if idle >= self.limits.idle_timeout and not self.tasks:
            log.info("event=idle_timeout peer=%s", self.peer)
            self.abort_all()
            return
        # Re-arm rather than reset a timer on every request: cheaper on the hot path.
        delay = max(self.limits.idle_timeout - idle, 1.0)
        self.idle_timer = loop.call_later(delay, self._check_idle)

    def abort_all(self) -> None:
        """Cancel outstanding operations and close after what is already written."""
        self.closing = True
        for task in self.tasks.values():
            task.cancel()
        self._close_transport()

    def _close_transport(self) -> None:
        """Close after what is written is sent, or drop the connection once
        `close_timeout` has passed without the client reading it."""
        transport = self.transport
        if transport is None or self.close_timer is not None:
            return
        transport.close()
        self.close_timer = self.loop.call_later(self.limits.close_timeout, transport.abort)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, _T], pending: object) -> Generator[Any, Any, _T]:
    """Go on driving `coro`, which has already yielded `pending`, as `await coro` would."""
    to_yield = pending
    while True:
        try:
            sent = yield to_yield
        except BaseException as exc:  # e.g. CancelledError from abandon or a timeout
            try:
                to_yield = coro.throw(exc)
            except StopIteration as stop:
                return cast(_T, stop.value)
        else:
            try:
                to_yield = coro.send(sent)
            except StopIteration as stop:
                return cast(_T, stop.value)
