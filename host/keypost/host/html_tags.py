"""Start tags of an HTML document where the HTML standard's tokenizer finds them, with offsets.

Why not `html.parser`: it reports a tag's position as (line, column) and its attributes
without positions, so a rewrite would need a second scan of each tag anyway; and its
handling of comments, `<title>`/`<textarea>` text and odd attribute spellings has changed
between Python releases (3.11.7 still reads tags inside `<textarea>`). Here a few regular
expressions follow the tokenizer's states (WHATWG HTML 13.2.5) that decide where markup
is: comments, bogus comments (`<!...>`, `<?...>`, `</ ...>`), end tags, and the text-only
content of `<script>`, `<style>`, `<textarea>`, `<title>` and kin, so an `<img>` written
inside any of those is text, as in a browser. A start tag and its attributes are read as
the tokenizer reads them: any of space, tab, LF, FF, CR or `/` between attributes, quoted
or unquoted values, names in any case, a later duplicate attribute ignored.

Not modelled (no effect outside those corners): CDATA sections and the missing text-only
switch inside `<svg>`/`<math>`, and the scripting flag (`<noscript>` is read as markup, as in
Thunderbird's compose editor, which runs no scripts).
"""

from __future__ import annotations

import bisect
import html
import html.entities
import re
from collections.abc import Iterator
from dataclasses import dataclass

_WS = "\t\n\f\r "
# An attribute: a name (its first character may be '='), then a value after '=' or no '='
# at all. When a value's closing quote never comes, nothing matches, so the tag fails, as
# the tokenizer reads to the end of the document there.
_ATTRIBUTE = (
    rf"[^{_WS}/>][^{_WS}/>=]*+[{_WS}]*+"
    rf"(?:=[{_WS}]*+(?:\"[^\"]*+\"|'[^']*+'|[^{_WS}>\"'][^{_WS}>]*+|(?=>))|(?!=))"
)
_ATTRIBUTES = rf"(?:[{_WS}/]++|{_ATTRIBUTE})*+"
# One token of the tokenizer's data state: text, a '<' that opens no markup, a comment
# ('<!-->' and '<!--->' included), a bogus comment ('<!x', '<?x', '</ x', up to the first
# '>'), '</>', an end tag (attributes and all, so a quoted '>' in one does not end it), or a
# start tag (groups 1 and 2: its name and attribute run).
_TOKENS = (
    r"[^<]++|<(?![A-Za-z/!?])"
    r"|<!--(?:-?>|(?s:.*?)--!?>)|<!(?!--)[^>]*+>|<\?[^>]*+>"
    rf"|</[A-Za-z][^{_WS}/>]*+{_ATTRIBUTES}>|</(?:[^A-Za-z>][^>]*+)?>"
)
_TOKEN = re.compile(rf"{_TOKENS}|<([A-Za-z][^{_WS}/>]*+)({_ATTRIBUTES})>")
# Elements whose content the tokenizer reads as text up to their own end tag.
_TEXT_ONLY = ("script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title")
# A run of tokens needing no Python step: all but the start tags of the elements above and
# of <plaintext>. It ends before a token it does not take, a token that would reach past
# its endpos, or a comment or tag the document ends in (which the tokenizer never emits).
_RUN = re.compile(
    rf"(?:{_TOKENS}|<(?!(?:{'|'.join(_TEXT_ONLY)}|plaintext)[{_WS}/>])"
    rf"[A-Za-z][^{_WS}/>]*+{_ATTRIBUTES}>)*+",
    re.IGNORECASE | re.ASCII,
)
# One attribute inside a tag's attribute run, with the parts a rewrite needs.
_ATTR = re.compile(
    rf"(?P<name>[^{_WS}/>][^{_WS}/>=]*+)"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"(?P<dq>[^\"]*+)\"|'(?P<sq>[^']*+)'"
    rf"|(?P<bare>[^{_WS}>\"'][^{_WS}>]*+)|(?=>|$)))?"
)
# Their content ends at the first end tag of the same name ('</NAME' then a space, '/' or '>').
_CLOSING = {
    name: re.compile(rf"</{name}[{_WS}/>]", re.IGNORECASE | re.ASCII) for name in _TEXT_ONLY
}
# The script data states and what moves each on: data ('<!--', the end tag), escaped
# ('-->', '<script', the end tag) and double escaped ('-->', '</script').
_SCRIPT_DATA, _SCRIPT_ESCAPED, _SCRIPT_DOUBLE = range(3)
_SCRIPT_MARKS = [
    re.compile(rf"<!--|</script[{_WS}/>]", re.IGNORECASE | re.ASCII),
    re.compile(rf"-->|</?script[{_WS}/>]", re.IGNORECASE | re.ASCII),
    re.compile(rf"-->|</script[{_WS}/>]", re.IGNORECASE | re.ASCII),
]
_DASHES_THEN_GT = re.compile(r"-*>")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_REFERENCE = re.compile(r"&(?:#[xX][0-9A-Fa-f]+;?|#[0-9]+;?|[A-Za-z0-9]+;?)")


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute as written: `name` lower-cased, `value` with references resolved."""

    name: str
    value: str
    start: int  # offset of the name's first character in the document
    end: int  # offset just after the value (after its closing quote, if quoted)


@dataclass(frozen=True, slots=True)
class StartTag:
    """A start tag at document[start:end]; its attribute run is document[attrs_at:end-1]."""

    name: str  # lower-cased
    start: int
    end: int
    attrs_at: int


def start_tags(document: str, needles: tuple[str, ...]) -> Iterator[StartTag]:
    """The start tags the HTML tokenizer emits for `document`, in order, whose attribute
    run holds one of `needles` (lower-case ASCII) in any case.

    Only the needles' places and the text-only elements cost Python steps: between them
    _RUN consumes the document inside the regex engine."""
    hits = _places(document, needles)
    next_hit = 0
    at = 0
    end = len(document)
    while at < end:
        while next_hit < len(hits) and hits[next_hit] < at:
            next_hit += 1
        limit = hits[next_hit] if next_hit < len(hits) else end
        if document[limit - 1:limit] == "<":
            limit -= 1  # cut right after a '<', the run would take it for text
        run = _RUN.match(document, at, limit)
        assert run is not None  # _RUN matches the empty string
        at = run.end()
        token = _TOKEN.match(document, at)
        if token is None:
            return  # the document ends inside a comment or tag here (or at is the end)
        at = token.end()
        written = token.group(1)
        if written is None:
            continue  # text, a comment or an end tag that reached past the limit
        name = ascii_lower(written)
        first = bisect.bisect_left(hits, token.start(2), next_hit)  # not one in the tag's name
        if first < len(hits) and hits[first] < token.end(2):
            yield StartTag(name, token.start(), at, token.start(2))
        if name == "plaintext":
            return  # everything after it is text
        if name == "script":
            script_end = _script_end(document, at)
            if script_end is None:
                return
            at = script_end
            continue
        closing = _CLOSING.get(name)
        if closing is not None:
            found = closing.search(document, at)
            if found is None:
                return
            at = found.start()


def _script_end(document: str, at: int) -> int | None:
    """Where a script's text ends (its end tag's '<'), None when at the document's end.

    The script data states: '<!--' escapes, where '<script' (then a space, '/' or '>')
    double-escapes until '</script'; '-->' leaves both; '</script' ends the text unless
    double-escaped. So `<script><!--<script></script>-->...</script>` is one script."""
    state = _SCRIPT_DATA
    while True:
        found = _SCRIPT_MARKS[state].search(document, at)
        if found is None:
            return None
        mark = found.group(0)
        at = found.end()
        if mark == "<!--":
            state = _SCRIPT_ESCAPED
            dashes = _DASHES_THEN_GT.match(document, at)  # '<!-->' and '<!--->' close again
            if dashes is not None:
                state, at = _SCRIPT_DATA, dashes.end()
        elif mark == "-->":
            state = _SCRIPT_DATA
        elif mark[1] != "/":
            state = _SCRIPT_DOUBLE  # '<script' inside '<!--'
        elif state == _SCRIPT_DOUBLE:
            state = _SCRIPT_ESCAPED
        else:
            return found.start()


def _places(document: str, needles: tuple[str, ...]) -> list[int]:
    """Sorted offsets of the needles in `document`, ignoring ASCII case. str.find on a
    lower-cased copy: ~50x faster than an IGNORECASE regex search over 10 MB. Each
    non-ASCII character becomes one '?' first, so the copy's offsets are the document's
    (str.lower would turn e.g. U+0130 into two characters)."""
    folded = document if document.isascii() else document.encode("ascii", "replace").decode()
    folded = folded.lower()
    places: list[int] = []
    for needle in needles:
        at = folded.find(needle)
        while at >= 0:
            places.append(at)
            at = folded.find(needle, at + 1)
    return sorted(places)


def attributes(document: str, tag: StartTag) -> list[Attribute]:
    """The tag's attributes in source order; a later duplicate of a name is dropped, as the
    tokenizer drops it (the element has the first one's value)."""
    out: list[Attribute] = []
    seen: set[str] = set()
    run_end = tag.end - 1
    at = tag.attrs_at
    while at < run_end:
        if document[at] in _WS or document[at] == "/":
            at += 1
            continue
        attr = _ATTR.match(document, at, run_end)
        if attr is None:  # cannot happen for a run _TOKEN accepted; never loop forever
            break
        at = attr.end()
        name = ascii_lower(attr.group("name"))
        if name in seen:
            continue
        seen.add(name)
        raw = attr.group("dq") or attr.group("sq") or attr.group("bare") or ""
        out.append(Attribute(name, attribute_value(raw), attr.start(), attr.end()))
    return out


def ascii_lower(text: str) -> str:
    """Lower case as HTML folds names: ASCII letters only (str.lower maps e.g. the Kelvin
    sign to 'k')."""
    return text.translate(_ASCII_LOWER)


def attribute_value(raw: str) -> str:
    """An attribute value with character references resolved as the tokenizer resolves them
    inside attributes: a legacy name without ';' (`&copy`) stays text when a letter, digit
    or '=' follows it (`?a=1&copy=2` keeps its '&copy='), where html.unescape replaces it."""
    if "&" not in raw:
        return raw

    def one(ref: re.Match[str]) -> str:
        text = ref.group(0)
        if text.endswith(";") or text[1] == "#":
            return html.unescape(text)
        following = raw[ref.end():ref.end() + 1]
        legacy = html.entities.html5.get(text[1:])
        return legacy if legacy is not None and following != "=" else text

    return _REFERENCE.sub(one, raw)
