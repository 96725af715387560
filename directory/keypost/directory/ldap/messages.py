"""LDAPv3 messages (RFC 4511) as frozen values, with their BER encoding and decoding.

Covers what a certificate directory serves: bind, unbind, search (requests, entries,
done), abandon, extended operations (StartTLS, Notice of Disconnection) and, for the
operations it refuses (modify, add, delete, modify DN, compare), just enough to answer
them with the right response tag. Responses decode too, for tests and clients.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from keypost.directory.ldap import ber
from keypost.directory.ldap.ber import ProtocolError
from keypost.directory.ldap.filters import (
    Filter,
    FilterTooComplex,
    check_filter_size,
    decode_filter,
    encode_filter,
)

MAX_INT = 2**31 - 1  # RFC 4511 maxInt
OID_START_TLS = "1.3.6.1.4.1.1466.20037"
OID_NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"


class ResultCode(enum.IntEnum):
    """LDAP result codes (RFC 4511 4.1.9 and Appendix A)."""

    SUCCESS = 0
    OPERATIONS_ERROR = 1
    PROTOCOL_ERROR = 2
    TIME_LIMIT_EXCEEDED = 3
    SIZE_LIMIT_EXCEEDED = 4
    COMPARE_FALSE = 5
    COMPARE_TRUE = 6
    AUTH_METHOD_NOT_SUPPORTED = 7
    STRONGER_AUTH_REQUIRED = 8
    REFERRAL = 10
    ADMIN_LIMIT_EXCEEDED = 11
    UNAVAILABLE_CRITICAL_EXTENSION = 12
    CONFIDENTIALITY_REQUIRED = 13
    SASL_BIND_IN_PROGRESS = 14
    NO_SUCH_ATTRIBUTE = 16
    UNDEFINED_ATTRIBUTE_TYPE = 17
    INAPPROPRIATE_MATCHING = 18
    CONSTRAINT_VIOLATION = 19
    ATTRIBUTE_OR_VALUE_EXISTS = 20
    INVALID_ATTRIBUTE_SYNTAX = 21
    NO_SUCH_OBJECT = 32
    ALIAS_PROBLEM = 33
    INVALID_DN_SYNTAX = 34
    ALIAS_DEREFERENCING_PROBLEM = 36
    INAPPROPRIATE_AUTHENTICATION = 48
    INVALID_CREDENTIALS = 49
    INSUFFICIENT_ACCESS_RIGHTS = 50
    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53
    LOOP_DETECT = 54
    NAMING_VIOLATION = 64
    OBJECT_CLASS_VIOLATION = 65
    NOT_ALLOWED_ON_NON_LEAF = 66
    NOT_ALLOWED_ON_RDN = 67
    ENTRY_ALREADY_EXISTS = 68
    OBJECT_CLASS_MODS_PROHIBITED = 69
    AFFECTS_MULTIPLE_DSAS = 71
    OTHER = 80


class Scope(enum.IntEnum):
    BASE = 0
    ONE = 1
    SUB = 2
    SUBORDINATE = 3  # draft-sermersheim-ldap-subordinate-scope; sent by `ldapsearch -s children`


class DerefAliases(enum.IntEnum):
    NEVER = 0
    IN_SEARCHING = 1
    FINDING_BASE = 2
    ALWAYS = 3


class OpTag(enum.IntEnum):
    """Tag octets of the protocolOp CHOICE ([APPLICATION n], constructed unless noted)."""

    BIND_REQUEST = 0x60
    BIND_RESPONSE = 0x61
    UNBIND_REQUEST = 0x42  # primitive NULL
    SEARCH_REQUEST = 0x63
    SEARCH_RESULT_ENTRY = 0x64
    SEARCH_RESULT_DONE = 0x65
    SEARCH_RESULT_REFERENCE = 0x73
    MODIFY_REQUEST = 0x66
    MODIFY_RESPONSE = 0x67
    ADD_REQUEST = 0x68
    ADD_RESPONSE = 0x69
    DEL_REQUEST = 0x4A  # primitive LDAPDN
    DEL_RESPONSE = 0x6B
    MODIFY_DN_REQUEST = 0x6C
    MODIFY_DN_RESPONSE = 0x6D
    COMPARE_REQUEST = 0x6E
    COMPARE_RESPONSE = 0x6F
    ABANDON_REQUEST = 0x50  # primitive MessageID
    EXTENDED_REQUEST = 0x77
    EXTENDED_RESPONSE = 0x78
    INTERMEDIATE_RESPONSE = 0x79


# Requests the directory refuses, and the response tag each refusal must carry.
REFUSED_REQUESTS: dict[int, OpTag] = {
    OpTag.MODIFY_REQUEST: OpTag.MODIFY_RESPONSE,
    OpTag.ADD_REQUEST: OpTag.ADD_RESPONSE,
    OpTag.DEL_REQUEST: OpTag.DEL_RESPONSE,
    OpTag.MODIFY_DN_REQUEST: OpTag.MODIFY_DN_RESPONSE,
    OpTag.COMPARE_REQUEST: OpTag.COMPARE_RESPONSE,
}
_Decoder = Callable[[bytes, int, int], "ProtocolOp"]
_CONTROLS = 0xA0
_REFERRAL = 0xA3
_SERVER_SASL_CREDS = 0x87
_SIMPLE = 0x80
_SASL = 0xA3


@dataclass(frozen=True)
class Control:
    oid: str
    critical: bool = False
    value: bytes | None = None


@dataclass(frozen=True)
class LDAPResult:
    code: ResultCode
    matched_dn: str = ""
    diagnostic: str = ""
    referral: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SaslCredentials:
    mechanism: str
    credentials: bytes | None = None


@dataclass(frozen=True)
class OtherAuthentication:
    """An AuthenticationChoice this server does not know (e.g. Microsoft's Sicily)."""

    tag: int
    value: bytes


@dataclass(frozen=True)
class BindRequest:
    version: int
    name: str
    authentication: bytes | SaslCredentials | OtherAuthentication  # bytes: simple password

    def __repr__(self) -> str:  # never let a password reach a log through repr()
        auth = "<password>" if isinstance(self.authentication, bytes) else self.authentication
        return f"BindRequest(version={self.version}, name={self.name!r}, authentication={auth})"


@dataclass(frozen=True)
class BindResponse:
    result: LDAPResult
    server_sasl_creds: bytes | None = None


@dataclass(frozen=True)
class UnbindRequest:
    pass


@dataclass(frozen=True)
class SearchRequest:
    base: str
    scope: Scope
    deref: DerefAliases
    size_limit: int
    time_limit: int
    types_only: bool
    filter: Filter
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class PartialAttribute:
    type: str
    values: tuple[bytes, ...]


@dataclass(frozen=True)
class SearchResultEntry:
    dn: str
    attributes: tuple[PartialAttribute, ...]


@dataclass(frozen=True)
class SearchResultDone:
    result: LDAPResult


@dataclass(frozen=True)
class AbandonRequest:
    message_id: int


@dataclass(frozen=True)
class ExtendedRequest:
    name: str
    value: bytes | None = None


@dataclass(frozen=True)
class ExtendedResponse:
    result: LDAPResult
    name: str | None = None
    value: bytes | None = None


@dataclass(frozen=True)
class RefusedRequest:
    """Modify, add, delete, modify DN or compare: parsed only as far as its tag."""

    tag: OpTag

    @property
    def response_tag(self) -> OpTag:
        return REFUSED_REQUESTS[self.tag]


@dataclass(frozen=True)
class GenericResponse:
    """The LDAPResult-only responses (modify, add, delete, modify DN, compare)."""

    tag: OpTag
    result: LDAPResult


ProtocolOp = (
    BindRequest
    | BindResponse
    | UnbindRequest
    | SearchRequest
    | SearchResultEntry
    | SearchResultDone
    | AbandonRequest
    | ExtendedRequest
    | ExtendedResponse
    | RefusedRequest
    | GenericResponse
)


@dataclass(frozen=True)
class LDAPMessage:
    message_id: int
    op: ProtocolOp
    controls: tuple[Control, ...] = ()


# --------------------------------------------------------------------------- decoding


def decode_message(data: bytes) -> LDAPMessage:
    """Decode exactly one complete LDAPMessage (as framed by ber.frame_length)."""
    end = len(data)
    start, mend = ber.expect(data, 0, end, ber.SEQUENCE, "LDAPMessage")
    if mend != end:
        raise ProtocolError("trailing bytes after LDAPMessage")
    message_id, p = ber.take_int(data, start, mend)
    if not 0 <= message_id <= MAX_INT:
        raise ProtocolError("messageID out of range")
    tag, s, e = ber.read_header(data, p, mend)
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ProtocolError(f"unknown LDAP operation (tag 0x{tag:02x})")
    try:
        op = decoder(data, s, e)
    except FilterTooComplex as exc:
        exc.message_id = message_id  # the search is answered, not the connection closed
        raise
    controls: tuple[Control, ...] = ()
    if e < mend:
        cs, ce = ber.expect(data, e, mend, _CONTROLS, "controls")
        if ce != mend:
            raise ProtocolError("trailing data in LDAPMessage")
        controls = _decode_controls(data, cs, ce)
    return LDAPMessage(message_id, op, controls)


def _uint(value: int, what: str) -> int:
    if not 0 <= value <= MAX_INT:
        raise ProtocolError(f"{what} out of range")
    return value


def _done(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise ProtocolError(f"trailing data in {what}")


def _decode_controls(data: bytes, s: int, e: int) -> tuple[Control, ...]:
    controls = []
    p = s
    while p < e:
        cs, ce = ber.expect(data, p, e, ber.SEQUENCE, "control")
        oid, q = ber.take_str(data, cs, ce)
        critical = False
        value = None
        if q < ce and data[q] == ber.BOOLEAN:
            critical, q = ber.take_bool(data, q, ce)
        if q < ce:
            value, q = ber.take_octets(data, q, ce)
        _done(q, ce, "control")
        controls.append(Control(oid, critical, value))
        p = ce
    return tuple(controls)


def _decode_bind_request(data: bytes, s: int, e: int) -> BindRequest:
    version, p = ber.take_int(data, s, e)
    if not 1 <= version <= 127:
        raise ProtocolError("bind version out of range")
    name, p = ber.take_str(data, p, e)
    tag, as_, ae = ber.read_header(data, p, e)
    _done(ae, e, "BindRequest")
    auth: bytes | SaslCredentials | OtherAuthentication
    if tag == _SIMPLE:
        auth = data[as_:ae]
    elif tag == _SASL:
        mechanism, q = ber.take_str(data, as_, ae)
        credentials = None
        if q < ae:
            credentials, q = ber.take_octets(data, q, ae)
        _done(q, ae, "SaslCredentials")
        auth = SaslCredentials(mechanism, credentials)
    elif tag & 0xC0 == ber.CLASS_CONTEXT:
        auth = OtherAuthentication(tag, data[as_:ae])
    else:
        raise ProtocolError(f"bad authentication choice (tag 0x{tag:02x})")
    return BindRequest(version, name, auth)


_RESULT_CODES = {c.value: c for c in ResultCode}


def _decode_result(data: bytes, s: int, e: int) -> tuple[LDAPResult, int]:
    code, p = ber.take_int(data, s, e, ber.ENUMERATED)
    result_code = _RESULT_CODES.get(code)
    if result_code is None:
        raise ProtocolError(f"unknown LDAP result code {code}")
    matched, p = ber.take_str(data, p, e)
    diagnostic, p = ber.take_str(data, p, e)
    referral = None
    if p < e and data[p] == _REFERRAL:
        rs, p = ber.expect(data, p, e, _REFERRAL, "referral")
        uris = []
        q = rs
        while q < p:
            uri, q = ber.take_str(data, q, p)
            uris.append(uri)
        referral = tuple(uris)
    return LDAPResult(result_code, matched, diagnostic, referral), p


def _decode_bind_response(data: bytes, s: int, e: int) -> BindResponse:
    result, p = _decode_result(data, s, e)
    creds = None
    if p < e:
        creds, p = ber.take_octets(data, p, e, _SERVER_SASL_CREDS)
    _done(p, e, "BindResponse")
    return BindResponse(result, creds)


def _decode_unbind(data: bytes, s: int, e: int) -> UnbindRequest:
    _done(s, e, "UnbindRequest")
    return UnbindRequest()


_SCOPES = tuple(Scope)
_DEREFS = tuple(DerefAliases)


# scope, derefAliases, sizeLimit, timeLimit, typesOnly as nearly every client sends them:
# five short elements with one-octet contents, i.e. 15 octets with fixed tags and lengths.


def _decode_search_request(data: bytes, s: int, e: int) -> SearchRequest:
    base, p = ber.take_str(data, s, e)
    head = data[p : p + 15]
    if (
        len(head) == 15
        and head[0:2] == b"\x0a\x01"
        and head[3:5] == b"\x0a\x01"
        and head[6:8] == b"\x02\x01"
        and head[9:11] == b"\x02\x01"
        and head[12:14] == b"\x01\x01"
        and head[8] < 0x80
        and head[11] < 0x80
    ):
        # The fast path: one slice and a few comparisons instead of five header reads.
        scope, deref, size_limit, time_limit = head[2], head[5], head[8], head[11]
        types_only = head[14] != 0
        p += 15
    else:
        scope, deref, size_limit, time_limit, types_only, p = _decode_search_head(data, p, e)
    if scope >= len(_SCOPES) or deref >= len(_DEREFS):
        raise ProtocolError("search scope or derefAliases out of range")
    check_filter_size(data, p, e)
    filt, p = decode_filter(data, p, e)
    as_, ae = ber.expect(data, p, e, ber.SEQUENCE, "attributes")
    _done(ae, e, "SearchRequest")
    attributes = []
    q = as_
    while q < ae:
        name, q = ber.take_str(data, q, ae)
        attributes.append(name)
    return SearchRequest(
        base,
        _SCOPES[scope],
        _DEREFS[deref],
        size_limit,
        time_limit,
        types_only,
        filt,
        tuple(attributes),
    )


def _decode_search_head(data: bytes, p: int, e: int) -> tuple[int, int, int, int, bool, int]:
    scope, p = ber.take_int(data, p, e, ber.ENUMERATED)
    deref, p = ber.take_int(data, p, e, ber.ENUMERATED)
    if scope < 0 or deref < 0:
        raise ProtocolError("search scope or derefAliases out of range")
    size_limit, p = ber.take_int(data, p, e)
    time_limit, p = ber.take_int(data, p, e)
    types_only, p = ber.take_bool(data, p, e)
    return (
        scope,
        deref,
        _uint(size_limit, "sizeLimit"),
        _uint(time_limit, "timeLimit"),
        types_only,
        p,
    )


def _decode_entry(data: bytes, s: int, e: int) -> SearchResultEntry:
    dn, p = ber.take_str(data, s, e)
    ls, le = ber.expect(data, p, e, ber.SEQUENCE, "attributes")
    _done(le, e, "SearchResultEntry")
    attributes = []
    q = ls
    while q < le:
        ps, pe = ber.expect(data, q, le, ber.SEQUENCE, "PartialAttribute")
        name, r = ber.take_str(data, ps, pe)
        vs, ve = ber.expect(data, r, pe, ber.SET, "attribute values")
        _done(ve, pe, "PartialAttribute")
        values = []
        while vs < ve:
            value, vs = ber.take_octets(data, vs, ve)
            values.append(value)
        attributes.append(PartialAttribute(name, tuple(values)))
        q = pe
    return SearchResultEntry(dn, tuple(attributes))


def _decode_search_done(data: bytes, s: int, e: int) -> SearchResultDone:
    result, p = _decode_result(data, s, e)
    _done(p, e, "SearchResultDone")
    return SearchResultDone(result)


def _decode_abandon(data: bytes, s: int, e: int) -> AbandonRequest:
    return AbandonRequest(_uint(ber.decode_int(data, s, e), "abandon messageID"))


def _decode_extended_request(data: bytes, s: int, e: int) -> ExtendedRequest:
    name, p = ber.take_str(data, s, e, 0x80)
    value = None
    if p < e:
        value, p = ber.take_octets(data, p, e, 0x81)
    _done(p, e, "ExtendedRequest")
    return ExtendedRequest(name, value)


def _decode_extended_response(data: bytes, s: int, e: int) -> ExtendedResponse:
    result, p = _decode_result(data, s, e)
    name = value = None
    if p < e and data[p] == 0x8A:
        name, p = ber.take_str(data, p, e, 0x8A)
    if p < e:
        value, p = ber.take_octets(data, p, e, 0x8B)
    _done(p, e, "ExtendedResponse")
    return ExtendedResponse(result, name, value)


def _refused(tag: OpTag) -> _Decoder:
    def decode(data: bytes, s: int, e: int) -> RefusedRequest:
        return RefusedRequest(tag)

    return decode


def _generic_response(tag: OpTag) -> _Decoder:
    def decode(data: bytes, s: int, e: int) -> GenericResponse:
        result, p = _decode_result(data, s, e)
        _done(p, e, "LDAPResult")
        return GenericResponse(tag, result)

    return decode


_DECODERS: dict[int, _Decoder] = {
    OpTag.BIND_REQUEST: _decode_bind_request,
    OpTag.BIND_RESPONSE: _decode_bind_response,
    OpTag.UNBIND_REQUEST: _decode_unbind,
    OpTag.SEARCH_REQUEST: _decode_search_request,
    OpTag.SEARCH_RESULT_ENTRY: _decode_entry,
    OpTag.SEARCH_RESULT_DONE: _decode_search_done,
    OpTag.ABANDON_REQUEST: _decode_abandon,
    OpTag.EXTENDED_REQUEST: _decode_extended_request,
    OpTag.EXTENDED_RESPONSE: _decode_extended_response,
}
for _request, _response in REFUSED_REQUESTS.items():
    _DECODERS[_request] = _refused(OpTag(_request))
    _DECODERS[_response] = _generic_response(_response)


# --------------------------------------------------------------------------- encoding


def frame(message_id: int, op: bytes) -> bytes:
    """An LDAPMessage around an already encoded protocolOp (the server's hot path)."""
    return ber.tlv(ber.SEQUENCE, ber.encode_int(message_id) + op)


def encode_message(msg: LDAPMessage) -> bytes:
    """The BER form of a message."""
    body = ber.encode_int(msg.message_id) + encode_op(msg.op)
    if msg.controls:
        body += ber.encode_seq((_encode_control(c) for c in msg.controls), _CONTROLS)
    return ber.tlv(ber.SEQUENCE, body)


def _encode_control(c: Control) -> bytes:
    parts = [ber.encode_str(c.oid)]
    if c.critical:  # DEFAULT FALSE: omitted when false
        parts.append(ber.encode_bool(True))
    if c.value is not None:
        parts.append(ber.encode_octets(c.value))
    return ber.encode_seq(parts)


def encode_result(result: LDAPResult) -> bytes:
    """The LDAPResult components (without the enclosing tag)."""
    out = (
        ber.encode_int(result.code, ber.ENUMERATED)
        + ber.encode_str(result.matched_dn)
        + ber.encode_str(result.diagnostic)
    )
    if result.referral is not None:
        out += ber.encode_seq((ber.encode_str(u) for u in result.referral), _REFERRAL)
    return out


def encode_attribute(name: str, values: tuple[bytes, ...] | list[bytes]) -> bytes:
    """One PartialAttribute: type and SET OF values (in the order given)."""
    return ber.tlv(
        ber.SEQUENCE,
        ber.encode_str(name) + ber.encode_seq((ber.encode_octets(v) for v in values), ber.SET),
    )


def encode_op(op: ProtocolOp) -> bytes:
    """The BER form of a protocolOp."""
    if isinstance(op, SearchResultEntry):
        attrs = b"".join(encode_attribute(a.type, a.values) for a in op.attributes)
        return ber.tlv(
            OpTag.SEARCH_RESULT_ENTRY, ber.encode_str(op.dn) + ber.tlv(ber.SEQUENCE, attrs)
        )
    if isinstance(op, SearchResultDone):
        return ber.tlv(OpTag.SEARCH_RESULT_DONE, encode_result(op.result))
    if isinstance(op, SearchRequest):
        return ber.tlv(
            OpTag.SEARCH_REQUEST,
            b"".join(
                (
                    ber.encode_str(op.base),
                    ber.encode_int(op.scope, ber.ENUMERATED),
                    ber.encode_int(op.deref, ber.ENUMERATED),
                    ber.encode_int(op.size_limit),
                    ber.encode_int(op.time_limit),
                    ber.encode_bool(op.types_only),
                    encode_filter(op.filter),
                    ber.encode_seq(ber.encode_str(a) for a in op.attributes),
                )
            ),
        )
    if isinstance(op, BindRequest):
        auth = op.authentication
        if isinstance(auth, bytes):
            enc_auth = ber.encode_octets(auth, _SIMPLE)
        elif isinstance(auth, SaslCredentials):
            sasl = ber.encode_str(auth.mechanism)
            if auth.credentials is not None:
                sasl += ber.encode_octets(auth.credentials)
            enc_auth = ber.tlv(_SASL, sasl)
        else:
            enc_auth = ber.tlv(auth.tag, auth.value)
        return ber.tlv(
            OpTag.BIND_REQUEST,
            ber.encode_int(op.version) + ber.encode_str(op.name) + enc_auth,
        )
    if isinstance(op, BindResponse):
        body = encode_result(op.result)
        if op.server_sasl_creds is not None:
            body += ber.encode_octets(op.server_sasl_creds, _SERVER_SASL_CREDS)
        return ber.tlv(OpTag.BIND_RESPONSE, body)
    if isinstance(op, UnbindRequest):
        return bytes((OpTag.UNBIND_REQUEST, 0))
    if isinstance(op, AbandonRequest):
        return ber.encode_int(op.message_id, OpTag.ABANDON_REQUEST)
    if isinstance(op, ExtendedRequest):
        body = ber.encode_str(op.name, 0x80)
        if op.value is not None:
            body += ber.encode_octets(op.value, 0x81)
        return ber.tlv(OpTag.EXTENDED_REQUEST, body)
    if isinstance(op, ExtendedResponse):
        body = encode_result(op.result)
        if op.name is not None:
            body += ber.encode_str(op.name, 0x8A)
        if op.value is not None:
            body += ber.encode_octets(op.value, 0x8B)
        return ber.tlv(OpTag.EXTENDED_RESPONSE, body)
    if isinstance(op, GenericResponse):
        return ber.tlv(op.tag, encode_result(op.result))
    raise TypeError(f"cannot encode {type(op).__name__}: parsed by tag only")
