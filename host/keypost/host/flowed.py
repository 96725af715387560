"""The text/plain body as Thunderbird sends it: RFC 3676 format=flowed, delsp=no, 72 columns.

Thunderbird (defaults `mailnews.send_plaintext_flowed` true, `mailnews.wraplength` 72)
writes plain text through Gecko's nsPlainTextSerializer with OutputFormatFlowed: a line
wider than 72 columns (+4 of grace) breaks at the last ASCII space (or tab) at or before
column 72, else at the first one after it; the soft break keeps one trailing space; a hard
line end loses its trailing spaces (but the signature separator "-- "); a line starting
with a space, '>', U+00A0 or "From " is space-stuffed; quoted lines are not rewrapped.
Widths count East Asian wide characters 2 and positions are UTF-16 code units, as in Gecko;
CJK text without spaces is never split. The serializer gets a line in fragments and wraps
after each; where a fragment ends decides some breaks, so `_Serializer` takes them as
Gecko cuts them. tests/data/thunderbird_plaintext.json holds what Thunderbird 153 and 140
really send; tests/host/test_plaintext_thunderbird.py compares.

Two inputs (see the compose API, ext-compose.js getComposeDetails):
- a message written as plain text: `plainTextBody` is the editor's text, unwrapped ->
  `flow_plain` wraps it as Thunderbird's send does;
- an HTML message: `plainTextBody` is already Thunderbird's flowed rendering of the HTML
  (the same serializer call as its send), but for links whose text is their address: the
  send marks them (MessageSend.sys.mjs _isLinkFreeText) so the address is written once,
  the compose API does not ("https://x <https://x>") -> `drop_self_link_addresses`.
"""

from __future__ import annotations

import bisect
import html
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from keypost.host.html_tags import attributes, start_tags

WRAP = 72  # mailnews.wraplength
_GRACE = 4  # nsPlainTextSerializer: no wrap for lines only a few columns too long (wrap > 20)
_BREAKS = " \t\n\r"  # nsCRT::IsAsciiSpace: where a line may break
_NBSP = "\u00a0"
_SIGNATURE_SEPARATORS = ("-- ", "- -- ")  # RFC 3676 4.3, and its OpenPGP dash-escaped form


def _char_width(ch: str) -> int:
    """Columns of one character as Gecko's serializer counts them: East Asian Wide and
    Fullwidth (CJK, most emoji) 2, combining marks and format characters 0, a control
    character 1. (Checked against Thunderbird's own output: U+1F642 counts 2, U+2764 and
    U+1D400 count 1, U+0301 none.)"""
    if unicodedata.category(ch) in ("Mn", "Me", "Cf") and ch != "\u00ad":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    if text.isascii():
        return len(text)  # every ASCII character counts one column
    return sum(_char_width(ch) for ch in text)


def _stuffable(text: str, at: int = 0) -> bool:
    """RFC 3676 4.4 (Gecko's IsSpaceStuffable): text a flowed line must not start with."""
    return text.startswith((" ", ">", _NBSP, "From "), at)


def _utf16_offsets(text: str) -> list[int] | None:
    """The UTF-16 offset of each character (Gecko's string positions), None when they are
    the character indexes (no character beyond U+FFFF)."""
    if text.isascii() or max(text) <= "\uffff":
        return None
    offsets: list[int] = []
    at = 0
    for ch in text:
        offsets.append(at)
        at += 2 if ord(ch) > 0xFFFF else 1
    return offsets


@dataclass
class _Serializer:
    """nsPlainTextSerializer's current line, for one block of text at one quote depth."""

    depth: int = 0  # cite quote level: lines start with '>' * depth + ' ', never stuffed
    wrap: int = WRAP
    content: str = ""
    width: int = 0  # of content
    stuffed: bool = False
    lines: list[str] = field(default_factory=list)
    # The fragments after `content` once its one break within the wrap column is its first
    # character: Gecko never takes that break, and text added at the end cannot move it,
    # so the rest of the line is one output line. Kept apart rather than joined and
    # searched again per fragment (quadratic: minutes for a pasted megabyte).
    stuck: list[str] | None = None

    def _prefix_width(self) -> int:
        return (self.depth + 1 if self.depth else 0) + int(self.stuffed)

    def add(self, text: str, start: int, end: int) -> None:
        """AddToLine of text[start:end] (Gecko checks the text on from there for "From ",
        past the fragment's end)."""
        if start == end:
            return
        if self.stuck is not None:
            self.stuck.append(text[start:end])
            return
        if not self.content:
            self.stuffed = _stuffable(text, start) and self.depth == 0
        fragment = text[start:end]
        self.content += fragment
        self.width += _width(fragment)
        self._wrap_complete_lines()

    def _break_at(self) -> int | None:
        """FindWrapIndexForContent without the line breaker (OutputDisallowLineBreaking):
        the index (in characters) of the break, None when there is none yet, or 0 when
        there never will be on this line (the break found is the first character and the
        search window is full)."""
        content = self.content
        prefix = self._prefix_width()
        offsets = _utf16_offsets(content)
        length = len(content) if offsets is None else offsets[-1] + 2 - (content[-1] <= "\uffff")
        found = -1
        if self.wrap >= prefix:
            last = min(self.wrap - prefix, length - 1)  # a UTF-16 offset
            limit = last + 1 if offsets is None else bisect.bisect_right(offsets, last)
            found = max(content.rfind(ch, 0, limit) for ch in _BREAKS)
            if found == 0 and last == self.wrap - prefix:
                return 0
        if found < 0:
            first = 1 if prefix > self.wrap else self.wrap - prefix
            begin = first if offsets is None else bisect.bisect_left(offsets, first)
            hits = [i for i in (content.find(ch, begin) for ch in _BREAKS) if i >= 0]
            found = min(hits, default=-1)
        return found if found > 0 else None

    def _wrap_complete_lines(self) -> None:
        prefix = self._prefix_width()
        while self.content and self.width + prefix > self.wrap + _GRACE:
            index = self._break_at()
            if index is None:
                return  # no place to break yet: perhaps after more text
            if index == 0:
                self.stuck = []
                return
            rest = self.content[index + 1:]
            self.content = self.content[:index]
            self.end_line(soft=True)
            self.stuffed = bool(rest) and _stuffable(rest) and self.depth == 0
            self.content = rest
            self.width = _width(rest)

    def end_line(self, soft: bool) -> None:
        """EndLine: a soft break keeps one trailing space (delsp=no), a hard one none,
        except on a signature separator."""
        text = self.content + "".join(self.stuck or ())
        self.stuck = None
        if soft or text not in _SIGNATURE_SEPARATORS:
            text = text.rstrip(" ")
        if soft:
            text += " "
        quote = ">" * self.depth + (" " if self.depth and text else "")
        self.lines.append(quote + (" " if self.stuffed else "") + text)
        self.content = ""
        self.width = 0
        self.stuffed = False


# How Gecko's Write hands text to AddToLine. Pre-formatted text (the plain-text editor's
# pre-wrap body): each word with the one blank after it, any further blank on its own.
# HTML text (blanks collapsed): a word, then the space after it, separately.
_PRE_FRAGMENT = re.compile(r"[^ \t\n\r]*[ \t\n\r]|[^ \t\n\r]+")
_HTML_FRAGMENT = re.compile(r"[^ ]+| ")


def _wrap_line(line: str, depth: int = 0, pre: bool = True) -> list[str]:
    serializer = _Serializer(depth)
    for fragment in (_PRE_FRAGMENT if pre else _HTML_FRAGMENT).finditer(line):
        serializer.add(line, fragment.start(), fragment.end())
    serializer.end_line(soft=False)
    return serializer.lines


def flow_plain(text: str) -> str:
    """The editor's text of a message written as plain text -> the flowed text Thunderbird
    sends (LF line ends). A line starting with '>' is taken for quoted text (as a reply's
    quote is held) and kept exactly as it is, trailing spaces too, as Thunderbird keeps a
    quotation: the compose API does not say whether such a line was typed, which
    Thunderbird would space-stuff and wrap instead."""
    out: list[str] = []
    for line in text.split("\n"):
        if line.startswith(">"):
            out.append(line)
        elif line:
            out.extend(_wrap_line(line))
        else:
            out.append("")
    return "\n".join(out)


# ---- links whose text is their address (HTML messages) -----------------------------------

_ANCHOR_END = re.compile(r"</a[\t\n\f\r />]", re.IGNORECASE)


# URL schemes whose URLs the URL standard calls special: their host is lower-cased and an
# empty path becomes "/".
_SPECIAL_SCHEMES = ("http", "https", "ftp", "ws", "wss", "file")


def _dom_href(href: str) -> str | None:
    """The link's `href` property (what Thunderbird compares) for the attribute as written,
    as far as an ASCII absolute URL goes; None for any other, whose property (percent-
    encoded, punycode, resolved against the document) no link text would equal."""
    href = href.strip()
    if not href.isascii() or any(ch <= " " for ch in href):
        return None
    try:
        parts = urlsplit(href)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or href[: len(scheme) + 1].lower() != f"{scheme}:":
        return None  # relative
    if scheme not in _SPECIAL_SCHEMES:
        return scheme + href[len(scheme):]
    if not parts.netloc:
        return None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = userinfo + at + hostport.lower()
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, parts.fragment))


def _is_free_text(inner_html: str, href: str) -> bool:
    """MessageSend.sys.mjs _isLinkFreeText: the link's innerHTML equals its address."""
    href = href.strip()
    if href.startswith("mailto:"):
        return _is_free_text(inner_html, href[len("mailto:"):])
    text = inner_html.strip()
    return (text == href or (text.endswith("/") and text[:-1] == href)
            or (href.endswith("/") and href[:-1] == text))


def self_links(document: str) -> list[tuple[str, str]]:
    """(text as the plain text shows it, href as written) of each link whose text is its
    address, in document order."""
    found: list[tuple[str, str]] = []
    # every end tag's place, found in one pass: searched from each <a> instead, links
    # that are not closed cost a scan to the end of the document each
    ends = [(end.start(), end) for end in _ANCHOR_END.finditer(document)]
    for tag in start_tags(document, ("href",)):
        if tag.name != "a":
            continue
        attrs = {a.name: a.value for a in attributes(document, tag)}
        href = attrs.get("href", "")
        at = bisect.bisect_left(ends, tag.end, key=lambda pair: pair[0])
        end = ends[at][1] if at < len(ends) else None
        if not href or end is None or attrs.get("class", "").lower().startswith("moz-txt"):
            continue  # a link Thunderbird made of typed text: written without its address
        inner = document[tag.end:end.start()]
        if "<" in inner:
            continue  # markup inside: the innerHTML is no address
        resolved = _dom_href(href)
        if resolved is not None and _is_free_text(inner, resolved):
            found.append((html.unescape(inner).strip(), href))
    return found


@dataclass
class _Paragraph:
    """Flowed lines joined (RFC 3676 4.2): quote depth, text with the soft spaces kept."""

    depth: int
    text: str
    lines: list[str]  # as written
    indented: bool  # a list item's or indented block's line (`text` is the whole line)


def _paragraphs(text: str) -> list[_Paragraph]:
    """HTML text as the serializer writes it: blanks inside a paragraph are collapsed, so
    two blanks at the start of an unquoted line are indentation (a list, an indented
    block), which Gecko writes without soft breaks; one blank is space-stuffing."""
    paragraphs: list[_Paragraph] = []
    open_: _Paragraph | None = None
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        indented = not depth and body.startswith(" ") and not (
            _stuffable(body[1:]) and not body.startswith("  "))
        if body.startswith(" ") and (depth or not indented):
            body = body[1:]  # the space after the quote marks, or the stuffing
        if indented:
            paragraphs.append(_Paragraph(0, line, [line], True))
            open_ = None
            continue
        if open_ is not None and open_.depth == depth:
            open_.text += body
            open_.lines.append(line)
        else:
            open_ = _Paragraph(depth, body, [line], False)
            paragraphs.append(open_)
        if not body.endswith(" ") or body in _SIGNATURE_SEPARATORS:
            open_ = None  # a hard line end
    return paragraphs


def _drop_addresses(text: str, pending: list[tuple[str, str]]) -> str:
    """Remove " <href>" after each pending link's text, in order; the found leave `pending`."""
    at = 0
    for link in list(pending):
        shown, href = link
        found = text.find(f"{shown} <{href}>", at)
        if found < 0:
            continue
        at = found + len(shown)
        text = text[:at] + text[at + len(href) + 3:]
        pending.remove(link)
    return text


def _keeps_its_lines(paragraph: _Paragraph) -> bool:
    """Lines Gecko did not wrap as flowed text: an indented block's (a list item's), or a
    preformatted one's (`<pre>`: a line wider than the wrap that has a space to break at)."""
    if paragraph.indented:
        return True
    (line, *more) = paragraph.lines
    return not more and _width(line) > WRAP + _GRACE and " " in line.strip(" ")


def drop_self_link_addresses(plain: str, document: str) -> str:
    """The compose API's plain text of an HTML message as Thunderbird's send writes it:
    without the " <address>" after a link whose text is that address, each paragraph that
    had one wrapped anew. Lines Gecko did not wrap as flowed text (a list item, `<pre>`) only
    lose the address, as in Thunderbird's send; but where a list item's paragraph ends is
    not in the text, so one with a self-link is not wrapped anew as Thunderbird's would be."""
    pending = self_links(document)
    if not pending:
        return plain
    out: list[str] = []
    for paragraph in _paragraphs(plain):
        if _keeps_its_lines(paragraph):
            out.extend(_drop_addresses(line, pending) for line in paragraph.lines)
            continue
        text = _drop_addresses(paragraph.text, pending)
        if text == paragraph.text:
            out.extend(paragraph.lines)
        else:
            out.extend(_wrap_line(text, paragraph.depth, pre=False))
    return "\n".join(out)
