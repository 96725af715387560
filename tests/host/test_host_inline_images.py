"""Embedded data: images in the HTML body travel as multipart/related parts (cid:)."""

from __future__ import annotations

import base64
import random
import re
import zlib
from typing import Any

from host_support import parse_mail as parse

from keypost.host.compose import build_message, parse_compose
from keypost.host.inline_images import extract_inline_images


def png(width: int) -> bytes:
    """A real (tiny, grey) PNG, so the bytes are not a stand-in a test could fake."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(b"\0" + random.Random(width).randbytes(width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(
        b"IEND", b"")


LOGO = png(200)
PHOTO = png(40_000)  # base64 lines well over 998 octets in the HTML as composed
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


def data_url(data: bytes, ctype: str = "image/png", extra: str = "") -> str:
    return f"data:{ctype}{extra};base64,{base64.b64encode(data).decode()}"


def params(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"from": "Alice <alice@example.com>", "to": ["bob@example.org"],
                            "subject": "pictures", "body_plain": "see the pictures"}
    base.update(extra)
    return base


def cids(html: str) -> list[str]:
    return re.findall(r'"cid:([^"]+)"', html)


def test_alternative_holds_related_html_with_the_images() -> None:
    html = (f'<body background="{data_url(GIF, "image/gif")}"><p>Logo:</p>'
            f'<img alt="a > b" src="{data_url(LOGO)}" width="200">'
            f"<p>again</p><img src='{data_url(LOGO)}'>"
            f'<img src="{data_url(PHOTO, extra=";filename=holiday.png")}" moz-do-not-send="false">'
            "</body>")
    c = parse_compose(params(body_html=html, attachments=[
        {"name": "a.txt", "content_type": "text/plain", "data_base64": "YQ=="}]))
    data = build_message(c)
    assert max(data) < 128 and all(len(line) <= 998 for line in data.split(b"\r\n"))
    msg = parse(data)
    assert msg.get_content_type() == "multipart/mixed"
    body, attachment = msg.iter_parts()
    assert attachment.get_filename() == "a.txt"
    assert body.get_content_type() == "multipart/alternative"
    plain, related = body.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    root, *images = related.iter_parts()
    assert root.get_content_type() == "text/html"  # RFC 2387: the root comes first
    text = root.get_content()
    assert "data:" not in text
    # The background, the logo twice (one part), the photo: three parts, four references.
    referenced = cids(text)
    assert len(referenced) == 4 and len(set(referenced)) == 3
    assert referenced[1] == referenced[2]
    assert 'alt="a > b"' in text and 'width="200"' in text
    by_cid = {p["Content-ID"]: p for p in images}
    assert sorted(by_cid) == sorted(f"<{cid}>" for cid in set(referenced))
    background, logo, _, photo = (by_cid[f"<{cid}>"] for cid in referenced)
    assert background.get_content_type() == "image/gif" and background.get_content() == GIF
    assert logo.get_content_type() == "image/png" and logo.get_content() == LOGO
    assert photo.get_content() == PHOTO and photo.get_filename() == "holiday.png"
    assert logo.get_filename() == "image2.png"
    for part in images:
        assert part.get_content_disposition() == "inline"
        assert part["Content-ID"].endswith("@example.com>")


def test_html_only_is_related_at_the_top() -> None:
    c = parse_compose(params(body_plain=None, body_html=f'<img src="{data_url(LOGO)}">'))
    msg = parse(build_message(c))
    assert msg.get_content_type() == "multipart/related"
    root, image = msg.iter_parts()
    assert cids(root.get_content()) == [image["Content-ID"].strip("<>")]
    assert image.get_content() == LOGO


def test_without_embedded_images_nothing_changes() -> None:
    html = '<p>remote <img src="https://example.com/x.png"> and <a href="data:,x">link</a></p>'
    c = parse_compose(params(body_html=html))
    assert c.body_html == html and c.inline_images == ()
    _, html_part = parse(build_message(c)).iter_parts()
    assert html_part.get_content_type() == "text/html"


def test_left_alone_not_sent_along_undecodable_and_not_images() -> None:
    kept = [
        f'<img src="{data_url(LOGO)}" moz-do-not-send="true">',  # the user said so
        '<img src="data:image/png;base64,not*base64">',  # stays rather than vanish
        f'<p title="{data_url(LOGO)}">text</p>',  # not an image reference
        f'<script src="{data_url(b"x", "text/javascript")}"></script>',
    ]
    for html in kept:
        found = extract_inline_images(html, "example.com")
        assert (found.html, found.images) == (html, ()), html


def test_percent_encoded_and_entity_encoded_urls() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    html = ('<img src="data:image/svg+xml,%3Csvg%20xmlns=%22http://www.w3.org/2000/svg%22/%3E">'
            f'<img src="{data_url(GIF, "image/gif", ";name=a&amp;b.gif")}">')
    found = extract_inline_images(html, "example.com")
    out, images = found.html, found.images
    assert [i.data for i in images] == [svg, GIF]
    assert [i.content_type for i in images] == ["image/svg+xml", "image/gif"]
    assert images[1].name == "a&b.gif"
    assert cids(out) == [i.content_id for i in images]


def test_content_ids_are_unique_per_message() -> None:
    html = f'<img src="{data_url(LOGO)}">'
    first = extract_inline_images(html, "example.com").images[0].content_id
    second = extract_inline_images(html, "example.com").images[0].content_id
    assert first != second
    assert extract_inline_images(html, "bad domain\r\n").images[0].content_id.endswith(
        "@keypost.invalid")


def test_stray_angle_brackets_do_not_hide_a_later_image() -> None:
    html = f'<p>1 < 2, <b and <a "x</p><img src="{data_url(LOGO)}"><p>"</p>'
    found = extract_inline_images(html, "example.com")
    out, images = found.html, found.images
    assert [i.data for i in images] == [LOGO]
    assert f'<img src="cid:{images[0].content_id}">' in out


def test_a_non_ascii_media_type_becomes_octet_stream() -> None:
    # A str pattern's \w is Unicode: "image/pñg" passed and the part's Content-Type header
    # came out as an RFC 2047 encoded word, which no MIME parser takes for a type.
    odd = ["image/p\u00f1g", "imag\u0435/gif"]  # n with tilde; a Cyrillic e
    html = "".join(f'<img src="{data_url(GIF, ctype)}">' for ctype in odd)
    images = extract_inline_images(html, "example.com").images
    assert [i.content_type for i in images] == ["application/octet-stream"] * 2
    msg = parse(build_message(parse_compose(params(body_plain=None, body_html=html))))
    _, *parts = msg.iter_parts()
    assert [p["Content-Type"] for p in parts] == ["application/octet-stream"] * 2
    assert [p.get_content() for p in parts] == [GIF, GIF]


# Every way HTML lets a document spell an <img src> holding a data: URL; {u} is the URL as
# written, {cid} the Content-ID it must become. Only the URL (with its quotes) may change.
U = data_url(LOGO)  # base64 with '+', '/' and '=': all allowed in an unquoted value
SPELLINGS = [
    ('<img src="{u}">', '<img src="cid:{cid}">'),
    ('<img/src="{u}">', '<img/src="cid:{cid}">'),
    ('<IMG SRC="{u}">', '<IMG SRC="cid:{cid}">'),
    ("<Img sRc='{u}' >", '<Img sRc="cid:{cid}" >'),
    ("<img src={u}>", '<img src="cid:{cid}">'),
    ("<img src={u} alt=x>", '<img src="cid:{cid}" alt=x>'),
    ('<img\n\tsrc\r\n=\f"{u}"\n>', '<img\n\tsrc="cid:{cid}"\n>'),
    ('<img alt="x"src="{u}">', '<img alt="x"src="cid:{cid}">'),
    ('<img alt="x"/src="{u}"/>', '<img alt="x"/src="cid:{cid}"/>'),
    ('<img alt=a"b src="{u}">', '<img alt=a"b src="cid:{cid}">'),
    ('<img alt="<p a=\'>\'>" src="{u}">', '<img alt="<p a=\'>\'>" src="cid:{cid}">'),
    ('<img ="x" src={u}>', '<img ="x" src="cid:{cid}">'),
    ('<img src=" \n{u}\t">', '<img src="cid:{cid}">'),
    ('<img src="{u}" moz-do-not-send="false">', '<img src="cid:{cid}" moz-do-not-send="false">'),
    ('<img moz-do-not-send src="{u}">', '<img moz-do-not-send src="cid:{cid}">'),
    ('<img src="{u}" src="https://example.com/x.png">',
     '<img src="cid:{cid}" src="https://example.com/x.png">'),
    ('<!--><img src="{u}">', '<!--><img src="cid:{cid}">'),  # '<!-->' is a whole comment
    ('<!-- a --><img src="{u}"><!-- b -->', '<!-- a --><img src="cid:{cid}"><!-- b -->'),
    ('<textarea></textarea><img src="{u}">', '<textarea></textarea><img src="cid:{cid}">'),
    ('<p>1 < 2 <img src="{u}">', '<p>1 < 2 <img src="cid:{cid}">'),
    ('<script>"</scripts><img src=x>"</SCRIPT ><img src="{u}">',
     '<script>"</scripts><img src=x>"</SCRIPT ><img src="cid:{cid}">'),
    ('</p title=">"><img src="{u}">', '</p title=">"><img src="cid:{cid}">'),
    # Script data escapes: '<!--<script>' hides one '</script>'; '<!-->' closes at once.
    ('<script><!--<script></script><img src="{u}">--></script><img src="{u}">',
     '<script><!--<script></script><img src="{u}">--></script><img src="cid:{cid}">'),
    ('<script><!--></script><img src="{u}">', '<script><!--></script><img src="cid:{cid}">'),
    ('<a "x</p><img src="{u}">', '<a "x</p><img src="cid:{cid}">'),
]


def test_every_spelling_of_img_src_is_rewritten_and_nothing_else_changes() -> None:
    for written, expected in SPELLINGS:
        html = written.replace("{u}", U)
        found = extract_inline_images(html, "example.com")
        assert [i.data for i in found.images] == [LOGO], written
        want = expected.replace("{u}", U).replace("{cid}", found.images[0].content_id)
        assert found.html == want, written


# Where an img src data: URL is not an image a browser would load: left byte for byte.
NOT_IMAGES = [
    '<!-- <img src="{u}"> -->',
    '<!-- <img src="{u}"> --!>',
    "<textarea><img src='{u}'></textarea>",
    '<TITLE><img src="{u}"></Title >',
    "<script>x = '<img src=\"{u}\">'</script>",
    '<style>/* <img src="{u}"> */</style>',
    '<script><!--<script></script><img src="{u}"></script>',
    '<xmp><img src="{u}"></xmp>',
    '<![CDATA[<img src="{u}">]]>',  # a bogus comment up to the first '>'
    '<?php <img src="{u}"> ?>',
    '</p <img src="{u}">',  # an end tag's attributes
    '<plaintext><img src="{u}">',
    '<p>an unfinished tag at the end: <img src="{u}"',
    '<img alt="x src="{u}">',  # the quote closes alt; what follows are names
    '<img data-src="{u}" xsrc="{u}" alt="src={u}">',
    '<img src="https://example.com/x.png" src="{u}">',  # the first src counts
    '<img srcset="{u} 1x">',
    '<img src="{u}" moz-do-not-send="true">',
    '<img src="{u}" moz-do-not-send="FALSE">',  # Thunderbird compares with "false" exactly
    '<a href="{u}">a link</a>',
]


def test_data_urls_that_are_no_image_stay_byte_for_byte() -> None:
    for written in NOT_IMAGES:
        html = written.replace("{u}", U)
        found = extract_inline_images(html, "example.com")
        assert (found.html, found.images) == (html, ()), written


def test_references_in_the_url_are_resolved_as_in_an_attribute() -> None:
    # '&#43;' is '+'; a legacy name without ';' before '=' or a letter stays text ('&copy=').
    encoded = U.replace("+", "&#43;")
    found = extract_inline_images(f'<img src="{encoded}">', "example.com")
    assert [i.data for i in found.images] == [LOGO]
    svg = "data:image/svg+xml,<svg%20a='?x=1&copy=2&amp;y=&copy;'/>"
    found = extract_inline_images(f'<img src="{svg}">', "example.com")
    assert found.images[0].data == "<svg a='?x=1&copy=2&y=\u00a9'/>".encode()


# Images the user marked "attach" that are links on the web: Thunderbird's own send would
# fetch them (img src, body background); the host reports them and keeps the links.
REMOTE = "https://images.example.net/logo.png"


def test_remote_images_marked_to_be_attached_are_reported_and_left_as_links() -> None:
    cases = [
        (f'<img src="{REMOTE}" moz-do-not-send="false">', (REMOTE,)),
        (f"<IMG MOZ-DO-NOT-SEND=false SRC= {REMOTE} >", (REMOTE,)),
        ('<body background="http://e.example/b.png" moz-do-not-send="false">',
         ("http://e.example/b.png",)),
        (f'<img src="{REMOTE}" moz-do-not-send="false"><img moz-do-not-send="false" '
         f'src="{REMOTE}">', (REMOTE,)),  # once
        (f'<img src="{REMOTE}">', ()),  # Thunderbird sends it as a link too
        (f'<img src="{REMOTE}" moz-do-not-send="true">', ()),
        (f'<td background="{REMOTE}" moz-do-not-send="false">', ()),  # not fetched by TB
        ('<img src="ftp://e.example/x.png" moz-do-not-send="false">', ()),
        (f'<!-- <img src="{REMOTE}" moz-do-not-send="false"> -->', ()),
    ]
    for html, remote in cases:
        found = extract_inline_images(html, "example.com")
        assert found.remote == remote, html
        assert (found.html, found.images) == (html, ()), html
    c = parse_compose(params(body_html=cases[0][0]))
    assert c.remote_images == (REMOTE,) and c.body_html == cases[0][0]
