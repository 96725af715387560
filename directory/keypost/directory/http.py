"""The HTTP API (aiohttp, on the LDAP server's event loop): containers, trust anchor, health,
metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from keypost.core.address import Address, parse_address
from keypost.core.bindings import parse_serial_hex, serial_hex
from keypost.core.containers import to_pem
from keypost.core.errors import AddressError
from keypost.core.netaddr import is_loopback_host
from keypost.core.types import Purpose
from keypost.directory.accounts import Authenticator, PasswordChecksBusy
from keypost.directory.cleartext import CleartextPolicy, password_allowed
from keypost.directory.controller import Answer, Controller, requestor_of
from keypost.directory.errors import RequestError
from keypost.directory.peer_counts import PeerCounts
from keypost.directory.store import AccountRecord, AccountRole

log = logging.getLogger("keypost.directory.http")

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller", Controller)
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)
SETTINGS: web.AppKey[dict[str, object]] = web.AppKey("settings", dict)
CLEARTEXT: web.AppKey[CleartextPolicy] = web.AppKey("cleartext", CleartextPolicy)
REALM = 'Basic realm="keypost directory", charset="UTF-8"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# An HTTP connection with no request in progress is closed after this long, also one
# that never sent a request (aiohttp's default of 3630 s let idle sockets pile up).
IDLE_SECONDS = 15.0
# A request still waiting after this long (a throttled login, queued password checks) is
# answered 504 `timeout`: the LDAP server's cap on one backend call (Limits.operation_timeout).
REQUEST_SECONDS = 30.0


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with a stable code; no traceback reaches a client. A
    handler gets SETTINGS' `request_seconds`; it can run out only where the handler waits
    (the controller's own work does not), and the waits are made to be left early: a
    password check still running frees its slot when it ends (Authenticator)."""
    metrics = request.app[CONTROLLER].metrics
    budget = request.app[SETTINGS]["request_seconds"]
    assert isinstance(budget, float)
    timer = asyncio.timeout(budget)
    try:
        async with timer:
            return await handler(request)
    except TimeoutError:
        if not timer.expired():
            raise  # a TimeoutError of the handler's own: an internal error, below
        # the path alone: the query holds addresses, the headers credentials
        log.warning("event=timeout protocol=http path=%s source=%s seconds=%g",
                    request.path, request.remote, budget)
        metrics.request("http", "timeout")
        return _error(504, "timeout", f"no answer within {budget:g} s: retry later")
    except RequestError as exc:
        metrics.request("http", "bad_request")
        return _error(400, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status == 404:
            # The root URL is what `start` and `serve` print: say where the API is.
            return _error(404, "not_found", f"no such resource: {request.path} (the API is"
                          " GET /v1/containers?address=..., /v1/ca, /healthz, /metrics;"
                          " described in /openapi.json)")
        if exc.status == 405:  # RFC 9110 15.5.6: a 405 names the methods there are
            return _error(405, "method_not_allowed", f"{request.method} is not allowed here",
                          {"Allow": exc.headers["Allow"]})
        raise
    except Exception:
        log.exception("internal error answering %s", request.path)
        metrics.request("http", "error")
        return _error(500, "internal", "internal error")


async def _requestor_account(request: web.Request) -> AccountRecord | web.Response | None:
    """The account of valid Basic credentials, None when absent, or the error response
    (401; 403 tls_required; 503 busy when too many password checks are queued)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    unauthorized = _error(401, "invalid_credentials", "invalid credentials",
                          {"WWW-Authenticate": REALM})
    if scheme.lower() != "basic":
        return unauthorized
    try:
        name, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        user = name.decode("utf-8")
    except ValueError:  # not base64 (binascii.Error; non-ASCII text) or not UTF-8
        raise RequestError("bad_credentials", "malformed Basic credentials") from None
    if not sep or not user or not password:
        return unauthorized
    peer = request.remote or "unknown"
    if not (request.secure or password_allowed(request.app[CLEARTEXT], peer)):
        # As for LDAP binds (keypost.directory.cleartext): the password is not checked.
        log.info("event=auth_refused reason=cleartext_password source=%s", peer)
        request.app[CONTROLLER].metrics.request("http", "tls_required")
        return _error(403, "tls_required", "a password needs TLS here: use https://")
    try:
        account = await request.app[AUTHENTICATOR].verify(user, password, peer, "http")
    except PasswordChecksBusy as exc:
        request.app[CONTROLLER].metrics.request("http", "busy")
        return _error(503, "busy", str(exc), {"Retry-After": "1"})
    if account is None:
        request.app[CONTROLLER].metrics.request("http", "unauthorized")
        return unauthorized
    return account


def _check_query(request: web.Request) -> None:
    """The query must be UTF-8 once percent-decoded: aiohttp makes each escape that is not
    (`%ff`) U+FFFD, so `a%ff@example.com` was answered for a\ufffd@example.com, an
    address nobody asked for."""
    try:
        urllib.parse.unquote_to_bytes(request.rel_url.raw_query_string).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("malformed_request",
                           "the query is not UTF-8 once percent-decoded") from None


def _addresses(request: web.Request, max_addresses: int) -> list[tuple[str, Address]]:
    """The address= parameters, each as asked (stripped) and parsed."""
    # whitespace around an address is none of it (LDAP's filter reading drops it too); kept,
    # it made each padding an answer cache key of its own, of up to ~8 KB
    addresses = [a.strip() for a in request.query.getall("address", [])]
    if not addresses:
        raise RequestError("missing_address", "give at least one address=")
    if len(addresses) > max_addresses:
        raise RequestError("too_many_addresses", f"at most {max_addresses} addresses per request")
    parsed: list[tuple[str, Address]] = []
    for text in addresses:
        try:
            parsed.append((text, parse_address(text)))
        except AddressError as exc:
            raise RequestError("invalid_address", str(exc)) from None
    return parsed


def _parse_query(request: web.Request, max_addresses: int) -> tuple[list[str], Purpose]:
    addresses = [text for text, _ in _addresses(request, max_addresses)]
    purposes = request.query.getall("purpose", ["encrypt"])
    if len(purposes) != 1 or purposes[0] not in {p.value for p in Purpose}:
        raise RequestError("invalid_purpose", "purpose must be encrypt or sign")
    return addresses, Purpose(purposes[0])


def _result(answer: Answer, directory_url: str) -> dict[str, object]:
    result: dict[str, object] = {
        "address": answer.address,
        "containers": [
            {
                "role": c.role.value,
                "format": "x509",
                "pem": ssl.DER_cert_to_PEM_cert(c.der),
                "not_after": c.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "gateway": c.gateway,
                "directory": (directory_url or None) if c.gateway is not None else None,
            }
            for c in answer.containers
        ],
    }
    if answer.refused:
        result["refused"] = answer.refused
    return result


async def containers(request: web.Request) -> web.StreamResponse:
    """GET /v1/containers?address=A[&address=B...]&purpose=encrypt|sign"""
    _check_query(request)
    settings = request.app[SETTINGS]
    max_addresses = settings["max_addresses"]
    assert isinstance(max_addresses, int)
    addresses, purpose = _parse_query(request, max_addresses)
    account = await _requestor_account(request)
    if isinstance(account, web.Response):
        return account
    # an anonymous requestor is its peer's address: the cache serves it only its own
    answers = request.app[CONTROLLER].answer(
        requestor_of(account, request.remote), addresses, purpose, "http")
    url = str(settings["url"])
    return web.json_response({"results": [_result(a, url) for a in answers]})


def _serials(request: web.Request, max_serials: int) -> list[int]:
    texts = request.query.getall("serial", [])
    if not texts:
        raise RequestError("missing_serial", "give at least one serial= (hex)")
    if len(texts) > max_serials:
        raise RequestError("too_many_serials", f"at most {max_serials} serials per request")
    serials: list[int] = []
    for text in texts:
        serial = parse_serial_hex(text.strip())
        if serial is None:
            raise RequestError("invalid_serial",
                               "a serial is a positive number of at most 40 hex digits")
        serials.append(serial)
    return serials


async def bindings(request: web.Request) -> web.StreamResponse:
    """GET /v1/bindings?serial=HEX[&serial=...]&address=A[&address=...]: for every pair,
    was that container issued for that address (Controller.bindings)? Gateway accounts only:
    the gateway's recipient_binding policy asks it for the mail it decrypted."""
    _check_query(request)
    max_addresses = request.app[SETTINGS]["max_addresses"]
    assert isinstance(max_addresses, int)
    serials = _serials(request, max_addresses)
    addresses = _addresses(request, max_addresses)
    account = await _requestor_account(request)
    if isinstance(account, web.Response):
        return account
    if account is None or account.role is not AccountRole.GATEWAY:
        request.app[CONTROLLER].metrics.request("http", "forbidden")
        return _error(403, "forbidden", "bindings are answered to gateway accounts only")
    rows = request.app[CONTROLLER].bindings(account, serials, [a for _, a in addresses])
    return web.json_response({"results": [
        {"serial": serial_hex(serial), "address": text, "binding": binding.value}
        for serial, row in zip(serials, rows, strict=True)
        for (text, _), binding in zip(addresses, row, strict=True)
    ]})


async def trust_anchor(request: web.Request) -> web.StreamResponse:
    pem = to_pem(request.app[CONTROLLER].ca.certificate)
    return web.Response(body=pem, content_type="application/x-pem-file")


async def healthz(request: web.Request) -> web.StreamResponse:
    version = request.app[CONTROLLER].store.schema_version()
    return web.json_response({"status": "ok", "schema_version": version})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Request volumes and cache hits tell whether an address was just looked up: only
    loopback peers (a local Prometheus agent) or a gateway account may read them."""
    if not is_loopback_host(request.remote or ""):
        account = await _requestor_account(request)
        if isinstance(account, web.Response):
            return account
        if account is None or account.role is not AccountRole.GATEWAY:
            return _error(403, "forbidden",
                          "metrics are for loopback peers and gateway accounts")
    text = request.app[CONTROLLER].metrics.render()
    return web.Response(text=text, content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})


def openapi_document() -> dict[str, object]:
    """The hand-written OpenAPI 3.1 description shipped as package data."""
    text = importlib.resources.files("keypost.directory").joinpath("openapi.json").read_text(
        encoding="utf-8")
    doc: dict[str, object] = json.loads(text)
    return doc


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/v1/containers", containers),
    ("/v1/bindings", bindings),
    ("/v1/ca", trust_anchor),
    ("/healthz", healthz),
    ("/metrics", metrics),
    ("/openapi.json", openapi),
)


def make_app(controller: Controller, authenticator: Authenticator, url: str,
             max_addresses: int,
             cleartext_passwords: CleartextPolicy = CleartextPolicy.LOOPBACK,
             request_seconds: float = REQUEST_SECONDS) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[CONTROLLER] = controller
    app[AUTHENTICATOR] = authenticator
    app[SETTINGS] = {"url": url, "max_addresses": max_addresses,
                     "request_seconds": float(request_seconds)}
    app[CLEARTEXT] = cleartext_passwords
    for path, handler in ROUTES:
        app.router.add_get(path, handler)
    return app


# --------------------------------------------------------------------------- connections

def _busy_response(message: str) -> bytes:
    body = json.dumps({"error": {"code": "busy", "message": message}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


_BUSY_PEER = _busy_response("too many connections from your address")
_BUSY_ALL = _busy_response("too many connections")
# Connections of all addresses together, as for LDAP (Limits.max_connections); `serve`
# lowers it to fit the open files limit.
MAX_CONNECTIONS = 4096


class _UnparsableRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (400) itself and logs the error with the
    bytes it choked on: a header line (an Authorization header is a password in base64) or
    the request line (the addresses asked for). Such a record becomes one line without
    them, at info level like the LDAP server's protocol errors: a client's fault, not ours.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message is "Error handling request from %s" with the peer's address
        source = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "event=unparsable_request protocol=http source=%s error=%s"
        record.args = (source, type(exc).__name__)
        record.exc_info = None
        record.exc_text = None
        record.levelno = min(record.levelno, logging.INFO)
        record.levelname = logging.getLevelName(record.levelno)
        return server_log.isEnabledFor(record.levelno)


# aiohttp's server logger for our runners (its default is "aiohttp.server")
server_log = logging.getLogger("keypost.directory.http.server")
server_log.addFilter(_UnparsableRequests())


# _JsonErrors reads these of aiohttp's handler to tell whether it is between requests
# (eof_received); were they renamed, half-closing clients would lose their answers again.
for _slot in ("_waiter", "_messages"):
    if _slot not in web.RequestHandler.__slots__:  # pragma: no cover
        raise ImportError(f"aiohttp's RequestHandler has no {_slot}, which keypost's "
                          "directory reads: use aiohttp 3.9 to 3.14")


class _JsonErrors(web.RequestHandler):
    """aiohttp's handler of one connection, answering what never reaches the app as the
    API answers its errors: JSON `{"error": {"code", "message"}}`.

    A request aiohttp cannot parse (and, were one to escape errors_middleware, an
    exception or a timeout) is answered by the handler's `handle_error`, in text/plain
    with the parser's message, i.e. bytes of the request; no middleware sees it (aiohttp
    offers no other hook: aio-libs/aiohttp#3287). The base method still logs the error
    (through _UnparsableRequests) and refuses to answer once a response has begun; its
    text answer is replaced, and the connection is closed as it would have been.
    """

    __slots__ = ("_input_ended",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._input_ended = False

    # aiohttp annotates it `-> None`; asyncio.Protocol's is `bool | None`, and True is
    # what keeps the socket open for the answers.
    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client shut down its sending side (`nc -N`, scripts). aiohttp closed the
        connection here, so what it had not answered yet was dropped: every login (a
        password check), any pipelined request. Now each request received is answered, in
        order, and then the connection closes. Idle (aiohttp waiting for a request, none
        queued), or over TLS (asyncio's TLS transport cannot stay half-open), it closes at
        once as before: held open, it would keep its slot of the per-address cap until the
        idle timeout."""
        waiting = self._waiter is not None and not self._waiter.done()
        if (waiting and not self._messages) or self.transport is None or \
                self.transport.get_extra_info("sslcontext") is not None:
            return None
        self._input_ended = True
        if not self._messages:
            self.close()  # after the request in hand is answered (aiohttp's own meaning)
        return True

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if self._input_ended and not self._messages:
            self.close()  # the last request received before the end of input is answered
        return answered

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)
        if status == 400:  # the parser's; the exception's name holds no request bytes
            kind = type(exc).__name__ if exc is not None else "BadHttpMessage"
            answer = _error(400, "malformed_request", f"malformed HTTP request ({kind})")
        else:
            answer = _error(500, "internal", "internal error")
        answer.force_close()
        return answer


class ApiRunner(web.AppRunner):
    """The HTTP API's runner. Its sites (PeerCappedSite) make each connection's handler
    themselves, a _JsonErrors with `handler_options`, the options the runner hands
    aiohttp's own handlers (so that they stay one set)."""

    def __init__(self, app: web.Application, idle_seconds: float = IDLE_SECONDS) -> None:
        self.handler_options: dict[str, Any] = {
            "keepalive_timeout": idle_seconds, "logger": server_log, "access_log": None}
        super().__init__(app, handle_signals=False, **self.handler_options)


def make_runner(app: web.Application, idle_seconds: float = IDLE_SECONDS) -> ApiRunner:
    return ApiRunner(app, idle_seconds)


class PeerCappedSite(web.TCPSite):
    """A TCPSite whose peers may hold at most `max_per_peer` connections each; `counts`
    may be shared by several sites (http and https).

    aiohttp has no hook before a connection is handed to its handler, so each handler
    is wrapped (`_PeerCapped`) in the listener's protocol factory; the handler is a
    _JsonErrors (see there), made with the runner's options.
    """

    def __init__(self, runner: ApiRunner, host: str, port: int, *, max_per_peer: int,
                 counts: PeerCounts, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        self.api_runner = runner
        self.max_per_peer = max_per_peer
        self.max_connections = max_connections
        self.counts = counts

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers with the runner; TCPSite.start listens
        manager = self.api_runner.server
        assert manager is not None
        options = self.api_runner.handler_options
        loop = asyncio.get_running_loop()

        def handler() -> _PeerCapped:
            inner = _JsonErrors(manager, loop=loop, **options)
            return _PeerCapped(inner, self.counts, self.max_per_peer,
                               options["keepalive_timeout"], self.max_connections)

        self._server = await loop.create_server(
            handler,
            self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]


class _PeerCapped(asyncio.Protocol):
    """Counts its peer's connections; beyond the cap, or the cap on all connections (of
    every site sharing `counts`), answers 503 busy and hangs up before aiohttp's handler
    sees the connection, else passes everything through.

    A client that reads nothing is dropped, which aiohttp does not do: it waits for its
    write buffer to drain, and a closing connection for its last bytes to be sent,
    without a limit (a connection, and a slot of the cap, held for ever). A check every
    `stall_seconds` drops a connection that was closing, or could not be written to, at
    two checks in a row.
    """

    def __init__(self, inner: asyncio.Protocol, counts: PeerCounts, cap: int,
                 stall_seconds: float, max_connections: int = MAX_CONNECTIONS) -> None:
        self.inner, self.counts, self.cap = inner, counts, cap
        self.max_connections = max_connections
        self.stall_seconds = stall_seconds
        self.host: str | None = None  # set while counted
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.stalled = False  # closing or paused at the last check
        self.check: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        refusal = None
        if self.counts.total >= self.max_connections:
            refusal = "too_many_connections", _BUSY_ALL
        elif not self.counts.admit(host, self.cap):
            refusal = "too_many_from_peer", _BUSY_PEER
        if refusal is not None:
            log.warning("event=refused reason=%s source=%s", refusal[0], host)
            transport.write(refusal[1])
            transport.close()
            return
        self.host = host
        self.transport = transport
        self._arm()
        self.inner.connection_made(transport)

    def _arm(self) -> None:
        self.check = asyncio.get_running_loop().call_later(self.stall_seconds, self._check)

    def _check(self) -> None:
        transport = self.transport
        if transport is None:
            return
        stalled = transport.is_closing() or self.write_paused
        if stalled and self.stalled:
            log.info("event=stalled_reader protocol=http source=%s", self.host)
            transport.abort()
            return
        self.stalled = stalled
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.host is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.host is not None else None

    def pause_writing(self) -> None:
        if self.host is not None:
            self.write_paused = True
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.host is not None:
            self.write_paused = self.stalled = False
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        host, self.host = self.host, None
        self.transport = None
        if self.check is not None:
            self.check.cancel()
        if host is None:
            return
        self.counts.release(host)
        self.inner.connection_lost(exc)
