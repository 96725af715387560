"""Images embedded in the HTML body as data: URLs -> parts the HTML references by cid:.

Thunderbird's compose editor holds every embedded image (inserted from a file, pasted, or
carried over from the message being answered or forwarded) as a `data:` URL in the HTML
that `compose.getComposeDetails` returns; only its own send code turns them into
multipart/related parts (MessageSend.sys.mjs, `_gatherEmbeddedAttachments`). The add-on
cancels that send, so the host does the same here: many readers (Outlook, Gmail, web
mailers) show no `data:` image in a received mail, so leaving them in place loses them.

Covered like Thunderbird: `<img src>` and the `background` attribute of any element, found
where a browser's tokenizer finds them (`html_tags`: any spelling of the tag, none inside
comments or `<textarea>`). An element marked `moz-do-not-send` with a value other than
"false" is left alone, as Thunderbird does. A `data:` URL that does not decode stays as it
is (never dropped). `srcset` is not rewritten (Thunderbird does not either, and readers that
ignore it fall back to `src`). Remote images the user marked to be attached are reported,
not fetched: the host makes no web requests on the user's behalf.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import secrets
import urllib.parse
from dataclasses import dataclass

from keypost.host.html_tags import attributes, start_tags

# Only tags naming one of these are worth reading attribute by attribute (in any case).
_WORTH_READING = ("data:", "moz-do-not-send")
_REMOTE = re.compile(r"https?://", re.IGNORECASE | re.ASCII)
# What a URL parser drops: leading and trailing C0 controls and spaces, tabs and newlines.
_URL_EDGES = "".join(map(chr, range(0x21)))
_URL_DROPPED = {0x09: None, 0x0A: None, 0x0D: None}
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
            compact = "".join(urllib.parse.unquote(payload).split())  # ~10x re.sub's speed
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


def _url(value: str) -> str:
    """An attribute value as the URL Thunderbird's element.src would parse from it."""
    value = value.strip(_URL_EDGES)
    if "\n" in value or "\t" in value or "\r" in value:  # translate costs ~15 ns a character
        value = value.translate(_URL_DROPPED)
    return value


@dataclass(frozen=True)
class EmbeddedImages:
    """The HTML with cid: references, the parts they name, and remote images left as links."""

    html: str
    images: tuple[InlineImage, ...]
    # http(s) images marked `moz-do-not-send="false"` ("Attach this image to the message"):
    # Thunderbird's own send would fetch and embed them; here they stay links (in order, once).
    remote: tuple[str, ...]


def extract_inline_images(body_html: str, domain: str) -> EmbeddedImages:
    """The HTML with every embedded `data:` image replaced by `cid:<id>`, and the images.

    Only the URL is replaced (as `name="cid:..."`, the name spelt as it was); every other
    byte stays. The same data: URL used twice becomes one part referenced twice.
    Content-IDs are random per call on the sender's `domain` (RFC 2392: globally unique)."""
    images: list[InlineImage] = []
    by_url: dict[str, str] = {}
    remote: dict[str, None] = {}
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

    out: list[str] = []
    done = 0  # body_html[:done] is in out
    for tag in start_tags(body_html, _WORTH_READING):
        attrs = {a.name: a for a in attributes(body_html, tag)}
        flag = attrs["moz-do-not-send"].value if "moz-do-not-send" in attrs else ""
        if flag and flag != "false":
            continue  # the user chose not to send it along (Thunderbird: only "" or "false" may)
        for attr in sorted((attrs[n] for n in ("src", "background") if n in attrs),
                           key=lambda a: a.start):
            if attr.name == "src" and tag.name != "img":
                continue
            url = _url(attr.value)
            content_id = content_id_for(url) if url[:5].lower() == "data:" else None
            if content_id is not None:
                name = body_html[attr.start:attr.start + len(attr.name)]
                out += [body_html[done:attr.start], f'{name}="cid:{content_id}"']
                done = attr.end
            elif (flag == "false" and _REMOTE.match(url)
                  and (attr.name == "src" or tag.name == "body")):
                remote[url] = None  # what Thunderbird's own send would fetch (img, body)
    out.append(body_html[done:])
    return EmbeddedImages("".join(out), tuple(images), tuple(remote))
