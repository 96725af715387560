"""The server side of one LDAP connection, sans-IO: bytes in, typed events out (h11 style).

`ServerConnection.receive_data()` takes bytes as they arrive (b"" = end of stream);
`next_event()` returns the next complete event or None when more bytes are needed.
The connection frames and decodes messages and applies the protocol rules that need no
I/O: LDAPv3 only, simple binds, which operations exist, critical controls. The encoder
functions below build the responses. A malformed PDU yields `ProtocolViolation`, after
which the connection yields nothing more: the server must send `notice_of_disconnection`
and close (RFC 4511 4.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from keypost.directory.ldap import ber
from keypost.directory.ldap.ber import ProtocolError
from keypost.directory.ldap.cache import FifoCache
from keypost.directory.ldap.filters import FilterTooComplex
from keypost.directory.ldap.messages import (
    OID_NOTICE_OF_DISCONNECTION,
    OID_START_TLS,
    AbandonRequest,
    BindRequest,
    ExtendedRequest,
    OpTag,
    RefusedRequest,
    ResultCode,
    SearchRequest,
    UnbindRequest,
    decode_message,
    frame,
)
from keypost.directory.ldap.paging import PageRequest, decode_page_request

OID_PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696; Outlook and AD tools send it
OID_MANAGE_DSA_IT = "2.16.840.1.113730.3.4.2"  # RFC 3296; a no-op here: there are no referrals
SUPPORTED_CONTROLS = (OID_PAGED_RESULTS, OID_MANAGE_DSA_IT)


@dataclass(frozen=True)
class Bind:
    """A simple bind. Both `name` and `password` empty = anonymous (RFC 4513 5.1.1)."""

    message_id: int
    name: str
    password: bytes

    def __repr__(self) -> str:  # never let a password reach a log through repr()
        return f"Bind(message_id={self.message_id}, name={self.name!r})"

    @property
    def anonymous(self) -> bool:
        return not self.name and not self.password


@dataclass(frozen=True)
class BindRefused:
    """A bind the server answers without the backend (SASL, LDAPv2, unauthenticated)."""

    message_id: int
    code: ResultCode
    diagnostic: str


@dataclass(frozen=True)
class Search:
    message_id: int
    request: SearchRequest
    paging: PageRequest | None = None  # the client's paged results control (RFC 2696)
    small: bool = False  # a small request kept in the SearchCache: fine to memoise by

    @property
    def paged(self) -> bool:
        """The client sent the paged results control: the done carries the response one."""
        return self.paging is not None


@dataclass(frozen=True)
class Unbind:
    pass


@dataclass(frozen=True)
class Abandon:
    message_id: int
    target: int  # the messageID of the operation to abandon


@dataclass(frozen=True)
class StartTLSRequested:
    message_id: int


@dataclass(frozen=True)
class UnsupportedOperation:
    """An operation answered at once with `code` in a response carrying `response_tag`."""

    message_id: int
    response_tag: OpTag
    code: ResultCode
    diagnostic: str


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer broke the protocol: send notice_of_disconnection(PROTOCOL_ERROR) and close."""

    reason: str


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side of the stream."""


Event = (
    Bind
    | BindRefused
    | Search
    | Unbind
    | Abandon
    | StartTLSRequested
    | UnsupportedOperation
    | ProtocolViolation
    | ConnectionClosed
)


class SearchCache:
    """Decoded search requests keyed by their encoding after the messageID, prefixed by
    the connection's `cache_scope` (its peer's address).

    Clients repeat the same search with a new messageID (a mail client re-checking its
    recipients, a gateway looking up the same addresses): a hit skips the decoding,
    which is most of the protocol cost of a cached lookup. Decoded requests are frozen
    values, so one connection's request can be handed to another of the same peer; not to
    another peer: a hit is faster, and would tell it that somebody else had just sent that
    search (looked that address up). Only searches are kept (never a bind: it carries a
    password), only small ones, and a bounded number.
    """

    MAX_KEY = 512
    MAX_ENTRIES = 1024

    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self._items: FifoCache[bytes, tuple[SearchRequest, PageRequest | None]] = FifoCache(
            size
        )

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> tuple[SearchRequest, PageRequest | None] | None:
        return self._items.get(key)

    def put(self, key: bytes, request: SearchRequest, paging: PageRequest | None) -> bool:
        """Keep a decoded request; False when it is too large to keep."""
        if len(key) > self.MAX_KEY:
            return False
        self._items.put(key, (request, paging))
        return True


_ANONYMOUS_BIND = bytes.fromhex("6007020103040080" "00")  # BindRequest v3, "", simple ""
_UNBIND = bytes.fromhex("4200")


def _split_message_id(raw: bytes) -> tuple[int, bytes] | None:
    """(messageID, the bytes after it) for the usual short encodings, else None."""
    h = 2 + (raw[1] & 0x7F if raw[1] & 0x80 else 0)
    if len(raw) < h + 3 or raw[h] != ber.INTEGER or not 1 <= raw[h + 1] <= 4:
        return None
    end = h + 2 + raw[h + 1]
    message_id = int.from_bytes(raw[h + 2 : end], "big", signed=True)
    if message_id < 0:
        return None
    return message_id, raw[end:]


class ServerConnection:
    """Protocol state of one LDAP connection, without any I/O."""

    def __init__(
        self,
        max_message_size: int = ber.DEFAULT_MAX_MESSAGE,
        search_cache: SearchCache | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        self.search_cache = search_cache
        # Prefixed to this connection's keys in the shared search_cache: the peer's address
        # (server: set once it is known) and a NUL, which no address holds. A memo shared by
        # all peers made a search someone else had just sent ~13 us faster to decode: a
        # timing oracle for "that address was just looked up" (SearchCache).
        self.cache_scope = b"\0"
        # Usually one request arrives per read: keep that `bytes` as is (no copy) and
        # switch to a bytearray only when a message spans reads.
        self._buf: bytes | bytearray = b""
        self._eof = False
        self._finished = False

    @property
    def finished(self) -> bool:
        """No more events will come: after ConnectionClosed, Unbind or a violation."""
        return self._finished

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buf)

    def discard_input(self) -> None:
        """Forget what was received and end the connection's events (the server hangs up)."""
        self._buf = b""
        self._finished = True

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; b"" means the peer closed the stream."""
        if not data:
            self._eof = True
        elif not self._buf:
            self._buf = data
        elif isinstance(self._buf, bytearray):
            self._buf += data
        else:
            self._buf = bytearray(self._buf) + data

    def next_event(self) -> Event | None:
        """The next event, or None until more data arrives."""
        buf = self._buf
        if self._finished or (not buf and not self._eof):
            return None
        try:
            n = ber.frame_length(buf, self.max_message_size)
        except ProtocolError as exc:
            return self._violation(str(exc))
        if n is None:
            if self._eof:
                self._finished = True
                return ConnectionClosed()
            return None
        if n == len(buf):
            raw = buf if isinstance(buf, bytes) else bytes(buf)
            self._buf = b""
        else:
            raw = bytes(buf[:n])
            if isinstance(buf, bytearray):
                del buf[:n]  # amortised O(1): CPython moves the start of a bytearray
            else:
                self._buf = buf[n:]
        cache = self.search_cache
        split = _split_message_id(raw) if cache is not None else None
        key = b""
        if split is not None and cache is not None:
            key = self.cache_scope + split[1]
            hit = cache.get(key)
            if hit is not None:
                return Search(split[0], hit[0], hit[1], True)
            # The PDUs of a bind+search+unbind session, recognised without decoding.
            if split[1] == _ANONYMOUS_BIND:
                return Bind(split[0], "", b"")
            if split[1] == _UNBIND:
                self._finished = True
                return Unbind()
        try:
            msg = decode_message(raw)
        except FilterTooComplex as exc:
            # Well-formed, so no protocolError (RFC 4511 4.1.1): a refusal by policy.
            return UnsupportedOperation(
                exc.message_id, OpTag.SEARCH_RESULT_DONE, ResultCode.UNWILLING_TO_PERFORM, str(exc)
            )
        except ProtocolError as exc:
            return self._violation(str(exc))
        op = msg.op
        mid = msg.message_id
        paging = None
        for control in msg.controls:
            if control.oid == OID_PAGED_RESULTS and isinstance(op, SearchRequest):
                try:
                    paging = decode_page_request(control.value)
                except ProtocolError as exc:  # the search fails, the connection goes on
                    return UnsupportedOperation(
                        mid, OpTag.SEARCH_RESULT_DONE, ResultCode.PROTOCOL_ERROR, str(exc)
                    )
            elif control.critical and control.oid not in SUPPORTED_CONTROLS:
                refusal = self._critical_control(mid, op, control.oid)
                if refusal is not None:
                    return refusal
        if isinstance(op, SearchRequest):
            if split is not None and cache is not None and cache.put(key, op, paging):
                return Search(mid, op, paging, True)
            return Search(mid, op, paging)
        if isinstance(op, BindRequest):
            return self._bind(mid, op)
        if isinstance(op, UnbindRequest):
            self._finished = True
            return Unbind()
        if isinstance(op, AbandonRequest):
            return Abandon(mid, op.message_id)
        if isinstance(op, ExtendedRequest):
            if op.name == OID_START_TLS:
                return StartTLSRequested(mid)
            # RFC 4511 4.12: an unrecognised request name gets protocolError.
            return UnsupportedOperation(
                mid,
                OpTag.EXTENDED_RESPONSE,
                ResultCode.PROTOCOL_ERROR,
                f"unsupported extended operation {op.name}",
            )
        if isinstance(op, RefusedRequest):
            return UnsupportedOperation(
                mid, op.response_tag, ResultCode.UNWILLING_TO_PERFORM, "the directory is read-only"
            )
        return self._violation(f"a client may not send {type(op).__name__}")

    def _violation(self, reason: str) -> ProtocolViolation:
        self._finished = True
        self._buf = b""
        return ProtocolViolation(reason)

    def _critical_control(self, mid: int, op: object, oid: str) -> Event | None:
        # RFC 4511 4.1.11: do not perform the operation; answer if it has a response.
        diagnostic = f"critical control {oid} is not supported"
        code = ResultCode.UNAVAILABLE_CRITICAL_EXTENSION
        if isinstance(op, SearchRequest):
            return UnsupportedOperation(mid, OpTag.SEARCH_RESULT_DONE, code, diagnostic)
        if isinstance(op, BindRequest):
            return BindRefused(mid, code, diagnostic)
        if isinstance(op, ExtendedRequest):
            return UnsupportedOperation(mid, OpTag.EXTENDED_RESPONSE, code, diagnostic)
        if isinstance(op, RefusedRequest):
            return UnsupportedOperation(mid, op.response_tag, code, diagnostic)
        return None  # unbind still ends the session; an abandon is moot either way

    @staticmethod
    def _bind(mid: int, op: BindRequest) -> Bind | BindRefused:
        if op.version != 3:
            return BindRefused(mid, ResultCode.PROTOCOL_ERROR, "only LDAPv3 is supported")
        auth = op.authentication
        if not isinstance(auth, bytes):
            return BindRefused(
                mid, ResultCode.AUTH_METHOD_NOT_SUPPORTED, "only simple binds are supported"
            )
        if op.name and not auth:
            # RFC 4513 5.1.2: an "unauthenticated bind" (name, no password) is refused, so
            # that a client with a forgotten password does not silently run anonymous.
            return BindRefused(
                mid, ResultCode.UNWILLING_TO_PERFORM, "unauthenticated bind is not allowed"
            )
        if auth and not op.name:
            return BindRefused(mid, ResultCode.INVALID_CREDENTIALS, "invalid credentials")
        return Bind(mid, op.name, auth)


# --------------------------------------------------------------------------- encoders


def result_op(
    tag: int, code: ResultCode, diagnostic: str = "", matched_dn: str = "", extra: bytes = b""
) -> bytes:
    """A response protocolOp carrying an LDAPResult (plus `extra` encoded components)."""
    return ber.tlv(
        tag,
        ber.encode_int(code, ber.ENUMERATED)
        + ber.encode_str(matched_dn)
        + ber.encode_str(diagnostic)
        + extra,
    )


def result_message(
    message_id: int, tag: int, code: ResultCode, diagnostic: str = "", matched_dn: str = ""
) -> bytes:
    """A complete response message with an LDAPResult."""
    return frame(message_id, result_op(tag, code, diagnostic, matched_dn))


SEARCH_DONE_SUCCESS = result_op(OpTag.SEARCH_RESULT_DONE, ResultCode.SUCCESS)


def paged_done_controls(total: int = 0, cookie: bytes = b"") -> bytes:
    """The controls of a SearchResultDone answering a paged search (RFC 2696):
    realSearchControlValue with the result size estimate (0 = unknown) and the cookie
    for the next page (empty = no more pages)."""
    value = ber.encode_seq([ber.encode_int(total), ber.encode_octets(cookie)])
    return ber.encode_seq(
        [ber.encode_seq([ber.encode_str(OID_PAGED_RESULTS), ber.encode_octets(value)])], 0xA0
    )


_PAGED_DONE_CONTROLS = paged_done_controls()


def search_done(
    message_id: int,
    code: ResultCode = ResultCode.SUCCESS,
    diagnostic: str = "",
    matched_dn: str = "",
    paged: bool = False,
    controls: bytes = b"",
) -> bytes:
    """SearchResultDone; with `paged`, the paged results response control ending the
    paging, unless `controls` (from paged_done_controls) says otherwise."""
    if code == ResultCode.SUCCESS and not diagnostic and not matched_dn:
        op = SEARCH_DONE_SUCCESS
    else:
        op = result_op(OpTag.SEARCH_RESULT_DONE, code, diagnostic, matched_dn)
    msg = ber.encode_int(message_id) + op
    if controls:
        msg += controls
    elif paged:
        msg += _PAGED_DONE_CONTROLS
    return ber.tlv(ber.SEQUENCE, msg)


def bind_response(message_id: int, code: ResultCode, diagnostic: str = "") -> bytes:
    return result_message(message_id, OpTag.BIND_RESPONSE, code, diagnostic)


def extended_response(
    message_id: int, code: ResultCode, diagnostic: str = "", name: str | None = None
) -> bytes:
    extra = ber.encode_str(name, 0x8A) if name is not None else b""
    return frame(message_id, result_op(OpTag.EXTENDED_RESPONSE, code, diagnostic, extra=extra))


def notice_of_disconnection(
    code: ResultCode = ResultCode.PROTOCOL_ERROR, diagnostic: str = ""
) -> bytes:
    """The unsolicited notification (messageID 0) sent before the server closes (RFC 4511 4.4.1)."""
    return extended_response(0, code, diagnostic, OID_NOTICE_OF_DISCONNECTION)
