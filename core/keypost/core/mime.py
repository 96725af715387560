"""MIME plumbing for the S/MIME engine: split headers from bodies, CRLF, base64, entities.

Deliberately small and byte-oriented (no `email` package): the engine must handle 10 MB
messages without copying them more than needed, keep header bytes exactly as written
(signatures cover them), and never fail with anything but SmimeError on hostile input.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import functools
import importlib
import itertools
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keypost.core.errors import SmimeError

CRLF = b"\r\n"
LINE = 76  # RFC 2045 6.8: encoded lines are at most 76 characters
# Multipart (and message/rfc822) levels the recursive walks below descend: no client
# nests this deep, and ~1,000 levels (76 KB of mail) exhausted Python's stack.
MAX_DEPTH = 30


@dataclass(frozen=True)
class Header:
    """One header field exactly as written (folded lines kept), CRLF-normalised, no final CRLF."""

    name: str
    raw: bytes

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> str:
        """The unfolded value (RFC 5322 2.2.3), undecoded; 8-bit bytes read as UTF-8."""
        _, _, rest = self.raw.partition(b":")
        unfolded = rest.replace(b"\r\n", b"").strip()
        return unfolded.decode("utf-8", "replace")


_LINE_PROBES = 64  # lines walked one by one before is_canonical switches to scanning
_BARE_LF = re.compile(rb"\n(?<!\r\n)")  # an LF whose preceding byte is not CR
_SPARSE_LINE = 32  # average line length from which the regex beats a second count
_SEGMENT = 1 << 20  # bytes scanned by count/regex before equal lines are tried again
_LAYOUT_BLOCK = 1 << 16  # bytes of equal lines compared at once
_LAYOUT_PROBE = 16  # lines compared before a whole block is
_MAX_LINE = 1000  # RFC 5322 2.1.1: 998 characters + CRLF
# translate() image of a text: CR and LF stay, every other byte becomes "A".
_LINE_ENDS_ONLY = bytes(b if b in (0x0A, 0x0D) else 0x41 for b in range(256))


def is_canonical(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """Every LF in data[start:end] is part of a CRLF. No copy of the whole. The first lines
    are walked with find() (memchr speed): a header block followed by a body without line
    breaks, or a bare LF early on, is settled after a few microseconds (10 MB without line
    breaks: ~0.4 ms). The rest is scanned in segments, each after a run of equal-length
    lines (see `_equal_lines_end`: 10 MB of 76-column base64 ~10 instead of ~18 ms)."""
    stop = len(data) if end is None else end
    pos = start
    for _ in range(_LINE_PROBES):
        nl = data.find(b"\n", pos, stop)
        if nl < 0:
            return True
        if nl == start or data[nl - 1] != 0x0D:
            return False
        pos = nl + 1
    # From here on data[pos - 1] is always an LF: segments start and end after one.
    while pos < stop:
        pos = _equal_lines_end(data, pos, stop)
        nl = data.find(b"\n", min(pos + _SEGMENT, stop), stop)
        segment_end = stop if nl < 0 else nl + 1
        if not _no_bare_lf(data, pos, segment_end):
            return False
        pos = segment_end
    return True


def _no_bare_lf(data: bytes | bytearray, pos: int, stop: int) -> bool:
    """No bare LF in data[pos:stop], data[pos - 1] being an LF (so the regex's look-behind
    never sees a CR from before). The LFs are counted (~8 ms per 10 MB), then either the
    CRLFs too (~16-20 ms: the two-byte count is slow) or, when the lines average 32 bytes or
    more, the regex above looks for a bare LF (~11 ms per 10 MB of 78-byte lines; its
    per-LF cost makes it 5x slower than the count on blank lines, hence the choice). A
    find() loop, splitlines, translate or replace were all slower."""
    lfs = data.count(b"\n", pos, stop)
    if lfs * _SPARSE_LINE <= stop - pos:
        return _BARE_LF.search(data, pos, stop) is None
    return data.count(b"\r\n", pos, stop) == lfs


@functools.lru_cache(maxsize=16)  # at most 16 x 64 KiB
def _equal_lines(step: int) -> bytes:
    """`_LINE_ENDS_ONLY` image of a block of CRLF lines `step` bytes long (CRLF included)."""
    return (b"A" * (step - 2) + CRLF) * max(1, _LAYOUT_BLOCK // step)


def _equal_lines_end(data: bytes | bytearray, pos: int, stop: int) -> int:
    """Past the whole blocks of CRLF lines as long as the first one at data[pos:stop]
    (`pos` when there are none). Base64 attachments, the bulk of large mail, are such runs:
    one translate() and one comparison per 64 KiB verify every line end in it exactly
    (no other CR or LF, a CR before each LF), ~1 ns per byte where count + regex take ~2.
    A few lines are compared first, so text with uneven lines costs ~1 us per segment."""
    nl = data.find(b"\n", pos, min(stop, pos + _MAX_LINE))
    if nl <= pos:  # no short line here, or an LF right after the previous one (bare)
        return pos
    step = nl + 1 - pos
    pattern = _equal_lines(step)
    probe = step * _LAYOUT_PROBE
    if stop - pos < probe or data[pos : pos + probe].translate(_LINE_ENDS_ONLY) != pattern[:probe]:
        return pos
    size = len(pattern)
    while stop - pos >= size and data[pos : pos + size].translate(_LINE_ENDS_ONLY) == pattern:
        pos += size
    return pos


def to_crlf(data: bytes) -> bytes:
    """Canonical CRLF line ends; returns `data` itself (no copy) when already canonical.
    Converts every line: use `canonical` for entities that may hold binary parts."""
    if is_canonical(data):
        return data
    if data.find(b"\r") < 0:  # pure LF text: one pass instead of two
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


_BINARY_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*binary")


def canonical(entity: bytes) -> bytes:
    """A MIME entity with CRLF line ends, except inside `binary` parts (RFC 3030), which
    are bytes, not lines, and stay exactly as they are. No copy when already canonical."""
    if is_canonical(entity):
        return entity
    if _BINARY_CTE.search(entity) is None:
        return to_crlf(entity)
    return _canonical_parts(entity)


def _too_deep(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise SmimeError(f"MIME parts nested deeper than {MAX_DEPTH} levels")


def _canonical_parts(entity: bytes, depth: int = 0) -> bytes:
    _too_deep(depth)
    headers, view = split_entity(entity)
    head = header_lines(headers) + CRLF
    if is_binary(headers):
        return b"".join((head, view))
    body = bytes(view)
    boundary = content_type_of(headers).param("boundary")
    if content_type_of(headers).mime_type.startswith("multipart/") and boundary:
        split = split_multipart(body, boundary)
        if split.parts:
            parts = [_canonical_parts(p, depth + 1) for p in split.parts]
            return head + join_multipart(to_crlf(split.preamble), parts, boundary)
    return head + to_crlf(body)


def _body_start(data: bytes) -> tuple[int, int]:
    """(end of the header block, start of the body). No blank line: all headers.

    Walks the header lines only: a find() for the blank line over a 10 MB body that has
    none in the other line-end style would scan all of it."""
    pos = 0
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return size, size
        if nl == pos or (nl == pos + 1 and data[pos] == 0x0D):  # empty line ends headers
            return pos, nl + 1
        pos = nl + 1
    return size, size


def parse_headers(block: bytes) -> list[Header]:
    """Header fields of a header block (LF or CRLF). Lines that are neither a field nor a
    continuation are skipped rather than failing: mail in the wild has them."""
    headers: list[Header] = []
    current: list[bytes] = []
    for raw in block.replace(b"\r\n", b"\n").split(b"\n"):
        line = raw.rstrip(b"\r")  # a stray CR before the line end would survive as a bare CR
        if line[:1] in (b" ", b"\t"):
            if current:
                current.append(line)
            continue
        if current:
            headers.append(_header(current))
            current = []
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 4.5.3 obsolete syntax: blanks before ':'
        if colon and name and b" " not in name and b"\t" not in name:
            current = [line]
    if current:
        headers.append(_header(current))
    return headers


def _header(lines: list[bytes]) -> Header:
    name = lines[0].partition(b":")[0].rstrip(b" \t").decode("ascii", "replace")
    return Header(name, b"\r\n".join(lines))


def split_entity_at(data: bytes) -> tuple[list[Header], int]:
    """Headers of a message or MIME entity and the offset where its body starts."""
    end, start = _body_start(data)
    return parse_headers(data[:end]), start


def split_entity(data: bytes) -> tuple[list[Header], memoryview]:
    """Headers and body of a message or MIME entity. The body is a view (no copy) with the
    line ends it had."""
    headers, start = split_entity_at(data)
    return headers, memoryview(data)[start:]


def canonical_entity(headers: Sequence[Header], data: bytes, start: int = 0) -> bytes:
    """Header fields + CRLF + data[start:] as one canonical entity (see `canonical`). The
    fields are CRLF already, so only the body is scanned; a canonical body is copied once,
    in the join."""
    head, body = canonical_entity_parts(headers, data, start)
    if not head:  # body is the whole entity, fixed up: no second copy
        return bytes(body)
    return b"".join((head, body))


def canonical_entity_parts(
    headers: Sequence[Header], data: bytes, start: int = 0
) -> tuple[bytes, bytes | memoryview]:
    """`canonical_entity` as (header block, body) whose concatenation is the entity, for a
    consumer that takes the two apart (the envelope encrypts them in sequence): a canonical
    body comes back as a view of `data`, not copied at all."""
    head = header_lines(headers) + CRLF
    if is_canonical(data, start):
        return head, memoryview(data)[start:]
    return b"", canonical(b"".join((head, memoryview(data)[start:])))


def is_binary(headers: Sequence[Header]) -> bool:
    cte = find_header(headers, "Content-Transfer-Encoding")
    return cte is not None and cte.value.lower() == "binary"


def find_header(headers: Sequence[Header], name: str) -> Header | None:
    key = name.lower()
    for header in headers:
        if header.key == key:
            return header
    return None


def header_lines(headers: Iterable[Header]) -> bytes:
    """Re-emit header fields, each followed by CRLF."""
    return b"".join(h.raw + CRLF for h in headers)


def is_content_header(header: Header) -> bool:
    """Content-* fields describe the entity and travel inside S/MIME; MIME-Version stays out."""
    return header.key.startswith("content-")


# Content-Type and parameters -------------------------------------------------------


@dataclass(frozen=True)
class ContentType:
    mime_type: str  # lower-case "type/subtype"
    params: dict[str, str]  # lower-case names, unquoted values

    def param(self, name: str) -> str | None:
        return self.params.get(name.lower())


def _split_params(value: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == ";" and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_content_type(value: str | None) -> ContentType:
    """RFC 2045 Content-Type; missing or unreadable -> text/plain (RFC 2045 5.2)."""
    if not value:
        return ContentType("text/plain", {})
    parts = _split_params(value)
    mime_type = parts[0].strip().lower()
    if "/" not in mime_type:
        mime_type = "text/plain"
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, raw = part.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name.strip().lower()] = raw
    return ContentType(mime_type, params)


def content_type_of(headers: Sequence[Header]) -> ContentType:
    header = find_header(headers, "Content-Type")
    return parse_content_type(header.value if header else None)


# base64 -------------------------------------------------------------------------------


def _load_fast_base64() -> Any:
    """pybase64 (SIMD) when installed: 4-6x faster base64 decoding and several times faster
    encoding than binascii; same results, same errors (binascii.Error), tested both ways."""
    try:
        return importlib.import_module("pybase64")
    except ImportError:
        return None


_FAST_B64: Any = _load_fast_base64()
BASE64_BACKEND = "pybase64" if _FAST_B64 is not None else "binascii"


_Unpack = Callable[[bytes, int], tuple[bytes, ...]]


def _line_blocks() -> tuple[tuple[int, _Unpack], ...]:
    """(bytes of base64 text, unpack_from) for 1024, 512, ..., 1 lines of 76 columns."""
    return tuple(
        (LINE * count, struct.Struct(f"{LINE}s" * count).unpack_from)
        for count in (1 << bit for bit in range(10, -1, -1))
    )


_LINE_BLOCKS = _line_blocks()


_BLOCK_IN = 57 * 1024  # input bytes of 1024 full lines


def b64_lines(data: bytes | bytearray | memoryview, head: bytes = b"") -> bytes:
    """`head` (empty or ending in CRLF) + base64 of `data` in 76-column CRLF lines.

    Encoded 1024 lines (57 KiB of input) at a time, each block cut into lines by a struct
    that unpacks all 1024 in one C call and joined with CRLF while it is still in the
    cache; the blocks and `head` meet in one final join, and no other buffer as large as
    the text exists. 1.7-1.9x faster than pybase64's own encodebytes + replace(LF, CRLF),
    the previous way (100 KB and 10 MB, alternating in one loop, median of the per-round
    ratios; 10 MB 23-30 vs 40-57 ms at load 1.5). The whole text cut at once (175k bytes
    objects alive together for 10 MB) was slower than encodebytes; smaller blocks pay
    per-call overhead.
    The 137 KB result of a 100 KB input lies over glibc's 128 KiB mmap threshold: in some
    loops it is paged in afresh on every call (0.14-0.15 ms instead of 0.06-0.07 ms)."""
    if head and not head.endswith(CRLF):
        raise ValueError("head must end with CRLF")
    encode = _b64encode
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % _BLOCK_IN
    pieces = [head]
    unpack_block = _LINE_BLOCKS[0][1]
    for at in range(0, whole, _BLOCK_IN):
        pieces.append(CRLF.join(unpack_block(encode(view[at : at + _BLOCK_IN]), 0)))
        pieces.append(CRLF)
    enc = encode(view[whole:])
    full = len(enc) - len(enc) % LINE
    pos = 0
    for step, unpack in _LINE_BLOCKS:  # at most 1024 lines left: one block of each size
        if full - pos >= step:
            pieces.append(CRLF.join(unpack(enc, pos)))
            pieces.append(CRLF)
            pos += step
    if full < len(enc):
        pieces.append(enc[full:])
        pieces.append(CRLF)
    return b"".join(pieces)


def _b64encode(data: memoryview) -> bytes:
    if _FAST_B64 is not None:
        enc: bytes = _FAST_B64.b64encode(data)
        return enc
    return binascii.b2a_base64(data, newline=False)


def b64_decode(data: bytes | memoryview) -> bytes:
    """Decode base64 that may contain line breaks. Raises SmimeError for garbage."""
    try:
        # Non-strict mode skips CR/LF and other non-alphabet bytes (as RFC 2045 asks).
        if _FAST_B64 is not None:
            out: bytes = _FAST_B64.b64decode(data, validate=False)
        else:
            out = binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as exc:
        raise SmimeError("malformed base64 content") from exc
    if not out:
        raise SmimeError("empty base64 content")
    return out


# Dates --------------------------------------------------------------------------------


def parse_date(value: str) -> dt.datetime | None:
    """An RFC 5322 Date as an aware datetime (UTC when the zone is -0000), or None."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


def format_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC).replace(microsecond=0))


# multipart ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Multipart:
    preamble: bytes
    parts: list[bytes]  # each body part exactly as between its delimiters (RFC 2046 5.1.1)
    closed: bool  # a close-delimiter was found


def split_multipart(body: bytes, boundary: str) -> Multipart:
    """Split a multipart body. The line break before each delimiter belongs to the
    delimiter (RFC 2046 5.1.1), so a part's bytes are exactly what a detached signature
    covers. CRLF is expected; bare LF line breaks are tolerated."""
    dash = b"\n--" + boundary.encode("ascii", "replace")
    data = b"\r\n" + body
    marks: list[tuple[int, int, bool]] = []  # (delimiter start, next line start, closing)
    pos = 0
    while True:
        i = data.find(dash, pos)
        if i < 0:
            break
        after = i + len(dash)
        eol = data.find(b"\n", after)
        tail = data[after : eol if eol >= 0 else len(data)]
        closing = tail.startswith(b"--")
        if closing or not tail.strip(b" \t\r"):
            start = i - 1 if data[i - 1] == 0x0D else i
            marks.append((start, eol + 1 if eol >= 0 else len(data), closing))
            if closing:
                break
        pos = after
    if not marks:
        return Multipart(body, [], False)
    parts = [data[a[1] : b[0]] for a, b in itertools.pairwise(marks)]
    return Multipart(data[2 : marks[0][0]] if marks[0][0] >= 2 else b"", parts, marks[-1][2])


def join_multipart(preamble: bytes, parts: Sequence[bytes], boundary: str) -> bytes:
    delim = b"--" + boundary.encode("ascii")
    out = [preamble + CRLF] if preamble else []
    for part in parts:
        out += [delim, CRLF, part, CRLF]
    out += [delim, b"--", CRLF]
    return b"".join(out)


# transport safety for signed content --------------------------------------------------

_MAX_LINE = 998  # RFC 5322 2.1.1


def _seven_bit_safe(body: bytes) -> bool:
    """Would this body cross any MTA unchanged? ASCII, no NUL, bare CR or LF, lines <= 998,
    no trailing blanks (some relays strip them), no 'From ' line (mbox escaping)."""
    if not body.isascii() or b"\x00" in body:
        return False
    if b" \r\n" in body or b"\t\r\n" in body or body.endswith((b" ", b"\t")):
        return False
    crlf = body.count(b"\r\n")
    if body.count(b"\r") != crlf or body.count(b"\n") != crlf:  # a bare CR or LF
        return False
    if b"\nFrom " in body or body.startswith(b"From "):
        return False
    return all(len(line) <= _MAX_LINE for line in body.split(b"\r\n"))


_BARE_CR = re.compile(rb"\r(?!\n)")


def transport_safe(entity: bytes, depth: int = 0) -> bytes:
    """Re-encode a CRLF entity so that transport cannot alter it (RFC 8551 3.1.2): unsafe
    text leaves become quoted-printable, other unsafe leaves base64; multiparts recurse.
    Safe entities come back unchanged, and so does a multipart/signed: a byte changed
    inside it would break the signature it carries."""
    _too_deep(depth)
    headers, view = split_entity(entity)
    ctype = content_type_of(headers)
    if ctype.mime_type == "multipart/signed":
        return entity
    body = bytes(view)
    boundary = ctype.param("boundary")
    if ctype.mime_type.startswith("multipart/") and boundary:
        split = split_multipart(body, boundary)
        if not split.parts:
            return entity
        parts = [transport_safe(p, depth + 1) for p in split.parts]
        if parts == split.parts and split.closed:
            return entity
        preamble = split.preamble if _seven_bit_safe(split.preamble) else b""
        return header_lines(headers) + CRLF + join_multipart(preamble, parts, boundary)
    cte = find_header(headers, "Content-Transfer-Encoding")
    encoding = cte.value.lower() if cte else "7bit"
    if encoding in ("base64", "quoted-printable") or _seven_bit_safe(body):
        return entity
    new_cte, encoded = _safe_body(ctype.mime_type, body, depth)
    kept = [h for h in headers if h.key != "content-transfer-encoding"]
    field = f"Content-Transfer-Encoding: {new_cte}".encode()
    kept.append(Header("Content-Transfer-Encoding", field))
    return header_lines(kept) + CRLF + encoded


def _safe_body(mime_type: str, body: bytes, depth: int) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body) for a leaf that transport could alter."""
    if mime_type == "message/rfc822":
        # RFC 2046 5.2.1: no base64 or quoted-printable for an attached message; its own
        # parts are made safe instead. An 8-bit header block inside cannot be (RFC 2047
        # would change it): base64 then, which readers still open, rather than 8-bit mail.
        inner = transport_safe(body, depth + 1)
        if _seven_bit_safe(inner):
            return "7bit", inner
    if not mime_type.startswith("text/"):
        return "base64", b64_lines(body)
    encoded = binascii.b2a_qp(body, istext=True)
    # b2a_qp leaves a bare CR as it is; a relay or mailbox would turn it into a line
    # break and break the signature, so it is encoded like any other control byte.
    encoded = _BARE_CR.sub(b"=0D", to_crlf(encoded))
    encoded = encoded.replace(b"\r\nFrom ", b"\r\n=46rom ")
    if encoded.startswith(b"From "):
        encoded = b"=46" + encoded[1:]
    if encoded.endswith((b" ", b"\t")):
        encoded += b"=" + CRLF
    return "quoted-printable", encoded
