"""Start tags and attributes where the HTML tokenizer finds them, with exact offsets."""

from __future__ import annotations

from keypost.host.html_tags import attribute_value, attributes, start_tags


def test_attribute_spans_are_the_source_text() -> None:
    doc = "<p>x</p><IMG/SRC = 'a b'\talt=c=d\nsrc=\"second\" =e title=\"x>y\" ismap/>"
    (tag,) = start_tags(doc, ("src",))
    assert (tag.name, doc[tag.start:tag.end]) == ("img", doc[8:])
    found = attributes(doc, tag)
    assert [(a.name, a.value) for a in found] == [
        ("src", "a b"), ("alt", "c=d"), ("=e", ""), ("title", "x>y"), ("ismap", "")]
    assert [doc[a.start:a.end] for a in found] == [
        "SRC = 'a b'", "alt=c=d", "=e", 'title="x>y"', "ismap"]


def test_only_tags_holding_a_needle_are_reported_in_any_case() -> None:
    doc = '<a href="x"><b Data-X="1"></b><i title="DATA:">'
    assert [t.name for t in start_tags(doc, ("data",))] == ["b", "i"]
    # A needle in the tag's name alone does not count; one in its attributes does.
    assert [t.name for t in start_tags("<data-x><data-y data-z>", ("data",))] == ["data-y"]
    # A needle in text, a comment or an end tag names no tag.
    assert list(start_tags('data <!-- <b data> --> </b data>', ("data",))) == []


def test_non_ascii_text_keeps_the_offsets() -> None:
    # U+0130 lower-cases to two characters; the search must not shift past it.
    doc = "\u0130\u0130\u0130<img src=x data-a=1>"
    (tag,) = start_tags(doc, ("data-a",))
    assert doc[tag.start:tag.end] == "<img src=x data-a=1>"


def test_attribute_values_resolve_references_as_the_tokenizer_does() -> None:
    cases = {
        "a&amp;b": "a&b", "&#43;&#x2B;&#X2b": "+++", "&lt;&gt;&quot;": '<>"',
        "&copy;": "\u00a9", "&copy ": "\u00a9 ", "?a=1&copy=2": "?a=1&copy=2",
        "&copyx": "&copyx", "&hellip": "&hellip", "&#0;": "\ufffd", "&nosuch;": "&nosuch;",
    }
    for raw, value in cases.items():
        assert attribute_value(raw) == value, raw
