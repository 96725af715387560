"""Images embedded in the HTML body as data: URLs -> parts the HTML references by cid:.

Thunderbird's compose editor holds every embedded image (inserted from a file, pasted, or
carried over from the message being answered or forwarded) as a `data:` URL in the HTML
that `compose.getComposeDetails` returns; only its own send code turns them into
multipart/related parts (MessageSend.sys.mjs, `_gatherEmbeddedAttachments`). The add-on
cancels that send, so the host does the same here: many readers (Outlook, Gmail, web
mailers) show no `data:` image in a received mail, so leaving them in place loses them.

Covered like Thunderbird: `<img src>` and the `background` attribute of any element. An
element marked `moz-do-not-send` (other than "false") is left alone, as Thunderbird does.
A `data:` URL that does not decode stays as it is (never dropped).
"""

from __future__ import annotations

import base64
import binascii
import html
import mimetypes
import re
import secrets
import urllib.parse
from dataclasses import dataclass

# A start tag; quoted attribute values may hold '>' and '<'. An unquoted '<' ends the try
# and the group is possessive, so text full of stray '<' costs linear time, not quadratic.
_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)((?:[^<>\"']|\"[^\"]*\"|'[^']*')*+)>")
# One attribute of a start tag, its value whole (so nothing inside a value is taken for
# an attribute).
_ATTR = re.compile(
    r"(?P<lead>\s+)(?P<name>[^\s\"'>/=]+)"
    r"(?:(?P<eq>\s*=\s*)(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<bare>[^\s\"'=<>`]+)))?"
)
# ASCII only (re.ASCII: a str pattern's \w is Unicode): the type goes into a Content-Type
# header as it is, and a non-ASCII one came out as an RFC 2047 word no reader parses.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+", re.ASCII)
_NAME_PARAMS = ("filename", "name")


@dataclass(frozen=True)
class InlineImage:
    """One embedded image: the body of a part with `Content-ID: <content_id>`."""

    content_id: str  # without angle brackets, as the HTML's cid: URL names it
    content_type: str
    name: str
    data: bytes


@dataclass(frozen=True)
class _DataUrl:
    content_type: str
    name: str | None
    data: bytes


def _parse_data_url(url: str) -> _DataUrl | None:
    """RFC 2397 `data:[<mediatype>][;base64],<data>`; None when it does not decode."""
    if url[:5].lower() != "data:" or "," not in url:
        return None
    header, _, payload = url[5:].partition(",")
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params.pop()
    media_type = params[0].lower() if params and params[0] else "text/plain"
    name = None
    for param in params[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() in _NAME_PARAMS and value:
            name = urllib.parse.unquote(value.strip().strip('"'))
    try:
        if is_base64:
            compact = re.sub(r"\s+", "", urllib.parse.unquote(payload))
            data = base64.b64decode(compact, validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None
    return _DataUrl(media_type_or_default(media_type), name, data)


def media_type_or_default(value: str) -> str:
    """`value` when it is a bare type/subtype a Content-Type header can carry as it is,
    else application/octet-stream (parameters, spaces and non-ASCII would corrupt it)."""
    return value if _MEDIA_TYPE.fullmatch(value) else "application/octet-stream"


def _file_name(given: str | None, content_type: str, number: int) -> str:
    """A printable file name: the data URL's own, else image<n> with the type's extension."""
    if given:
        cleaned = "".join(ch for ch in given if ch.isprintable()).strip()
        cleaned = cleaned.replace("/", "_").replace("\\", "_")
        if cleaned:
            return cleaned[:200]
    extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return f"image{number}{extension}"


def _value(attr: re.Match[str]) -> str:
    """An attribute's value with character references resolved ("" when it has none)."""
    return html.unescape(attr.group("dq") or attr.group("sq") or attr.group("bare") or "")


def extract_inline_images(body_html: str, domain: str) -> tuple[str, tuple[InlineImage, ...]]:
    """The HTML with every embedded `data:` image replaced by `cid:<id>`, and the images.

    The same data: URL used twice becomes one part referenced twice. Content-IDs are
    random per call on the sender's `domain` (RFC 2392: globally unique)."""
    images: list[InlineImage] = []
    by_url: dict[str, str] = {}
    token = secrets.token_hex(8)
    domain = domain if domain and re.fullmatch(r"[A-Za-z0-9.-]+", domain) else "keypost.invalid"

    def content_id_for(url: str) -> str | None:
        if url in by_url:
            return by_url[url]
        parsed = _parse_data_url(url)
        if parsed is None:
            return None
        number = len(images) + 1
        content_id = f"part{number}.{token}@{domain}"
        images.append(InlineImage(
            content_id, parsed.content_type,
            _file_name(parsed.name, parsed.content_type, number), parsed.data,
        ))
        by_url[url] = content_id
        return content_id

    def rewrite_tag(tag: re.Match[str]) -> str:
        element, attributes = tag.group(1).lower(), tag.group(2)
        if "data:" not in attributes.lower():
            return tag.group(0)
        found = list(_ATTR.finditer(attributes))
        for attr in found:
            if attr.group("name").lower() == "moz-do-not-send" and _value(attr).lower() != "false":
                return tag.group(0)  # the user chose not to send it along, as in Thunderbird
        out, end = [], 0
        for attr in found:
            name = attr.group("name").lower()
            url = _value(attr).strip()
            wanted = name == "background" or (name == "src" and element == "img")
            content_id = content_id_for(url) if wanted and url[:5].lower() == "data:" else None
            if content_id is not None:
                out += [attributes[end:attr.start()], attr.group("lead"), attr.group("name"),
                        f'="cid:{content_id}"']
                end = attr.end()
        return f"<{tag.group(1)}{''.join(out)}{attributes[end:]}>"

    rewritten = _TAG.sub(rewrite_tag, body_html)
    return rewritten, tuple(images)
