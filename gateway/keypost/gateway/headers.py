"""Raw header surgery on message bytes: read, add, remove fields without re-serialising.

The gateway keeps the original header bytes (DKIM signatures and odd-but-valid
formatting survive); only the fields it adds or removes change, and a Subject whose sign
tag it takes out of RFC 2047 encoded-words.
"""

from __future__ import annotations

import email.errors
import email.header
import re
from dataclasses import dataclass

_BOUNDARY = re.compile(rb"(\r?\n)\r?\n")


@dataclass(frozen=True)
class Split:
    head: bytes  # header fields, each line ending with its own line break
    body: bytes  # after the blank line (may be empty)
    eol: bytes  # the message's line ending, b"\r\n" or b"\n"


def split(message: bytes) -> Split:
    """Header block and body. A message without a blank line is all header (RFC 5322 allows
    no body)."""
    m = _BOUNDARY.search(message)
    if message.startswith((b"\r\n", b"\n")):
        eol = b"\r\n" if message.startswith(b"\r\n") else b"\n"
        return Split(b"", message[len(eol) :], eol)
    if m is None:
        eol = b"\r\n" if b"\r\n" in message else b"\n"
        head = message if message.endswith(b"\n") or not message else message + eol
        return Split(head, b"", eol)
    eol = m.group(1)
    return Split(message[: m.start() + len(eol)], message[m.end() :], eol)


def join(parts: Split) -> bytes:
    return parts.head + parts.eol + parts.body


def fields(head: bytes) -> list[bytes]:
    """Each header field with its continuation lines, as raw bytes."""
    out: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def _name(field: bytes) -> str:
    """The field's name, lower-cased; "" for a line without a colon, which is no field
    (RFC 5322 2.2) whatever it says: mail in the wild has such lines in its header block,
    and the MTA passes them on."""
    name, colon, _ = field.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if colon else ""


def _value(field: bytes) -> str:
    _, _, value = field.partition(b":")
    return " ".join(value.decode("utf-8", "replace").split())


def get(message: bytes, name: str) -> str | None:
    """The first field's unfolded value, or None."""
    found = values(message, name)
    return found[0] if found else None


def values(message: bytes, name: str) -> list[str]:
    """Every field's unfolded value, in order (a header may be repeated)."""
    wanted = name.lower()
    return [_value(f) for f in fields(split(message).head) if _name(f) == wanted]


def remove(message: bytes, name: str) -> bytes:
    parts = split(message)
    wanted = name.lower()
    head = b"".join(f for f in fields(parts.head) if _name(f) != wanted)
    return join(Split(head, parts.body, parts.eol))


def prepend(message: bytes, name: str, value: str) -> bytes:
    """Add a field at the top (where trace fields go); `value` must be printable ASCII."""
    if not value.isascii() or any(ch in value for ch in "\r\n"):
        raise ValueError("header value must be one line of ASCII")
    parts = split(message)
    line = f"{name}: {value}".encode("ascii") + parts.eol
    return join(Split(line + parts.head, parts.body, parts.eol))


_WSP = (b" ", b"\t")


def strip_subject_tag(message: bytes, tag: str) -> tuple[bytes, bool]:
    """Remove the first occurrence of `tag` (case-insensitive) from the Subject field, with
    the one space that separated it from the rest ("[sign] hi", "hi [sign]" -> "hi")."""
    if not tag:
        return message, False
    parts = split(message)
    out: list[bytes] = []
    found = False
    pattern = re.compile(re.escape(tag.encode()), re.IGNORECASE)
    for f in fields(parts.head):
        if not found and _name(f) == "subject":
            m = pattern.search(f, f.index(b":") + 1)
            if m:
                found = True
                f = f[: _cut_start(f, m.start(), m.end())] + f[_cut_end(f, m.end()) :]
            elif (rewritten := _encoded_without_tag(f, tag, parts.eol)) is not None:
                found, f = True, rewritten
        out.append(f)
    return join(Split(b"".join(out), parts.body, parts.eol)), found


def _encoded_without_tag(field: bytes, tag: str, eol: bytes) -> bytes | None:
    """A Subject field whose tag lies in RFC 2047 encoded-words (a Subject with non-ASCII
    text in it is sent so, and Thunderbird encodes all of it: "[sign]" is "=5bsign=5d"),
    written anew from its decoded text without the tag and the one space that separated
    it; None when the decoded text holds no tag. Only then is the field rewritten."""
    name, _, raw = field.partition(b":")
    if b"=?" not in raw:
        return None
    try:
        text = str(email.header.make_header(email.header.decode_header(
            " ".join(raw.decode("utf-8", "replace").split()))))
    except (email.errors.MessageError, LookupError, ValueError):
        return None  # unreadable words (an unknown charset): no request can be read there
    # a case-blind search in the text itself: lower-casing may change its length ("İ")
    found = re.search(re.escape(tag), text, re.IGNORECASE)
    if found is None:
        return None
    start, end = found.span()
    if text[end : end + 1].isspace():
        end += 1
    elif text[start - 1 : start].isspace():
        start -= 1
    rest = text[:start] + text[end:]
    if not rest:
        return name + b":" + eol
    if rest.isascii() and rest.isprintable() and "=?" not in rest:
        value = rest  # as it reads (a line break, even encoded, must stay encoded)
    else:
        value = email.header.Header(rest, "utf-8", header_name=name.decode("ascii", "replace")
                                    ).encode(linesep=eol.decode("ascii"))
    return name + b": " + value.encode("ascii") + eol


def _cut_end(field: bytes, end: int) -> int:
    """A space after the tag separated it from what follows: it goes with the tag."""
    return end + 1 if field[end : end + 1] in _WSP else end


def _cut_start(field: bytes, start: int, end: int) -> int:
    """A tag ending its line takes the space before it instead, so no trailing space is
    left. That space may be the folding white space opening a continuation line: then the
    line break goes too, or an empty line would end the header block."""
    if field[end : end + 1] in _WSP or field[start - 1 : start] not in _WSP:
        return start
    start -= 1
    if field[start - 1 : start] == b"\n":
        start -= 2 if field[start - 2 : start] == b"\r\n" else 1
    return start
