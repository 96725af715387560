"""flow_plain on text no one types but anyone may paste: its work grows with the text.

Gecko never wraps a line again once its only ASCII blank within the wrap column is its
first character (FindWrapIndexForContent answers 0, which MaybeWrapAndOutputCompleteLines
does not take), so the rest of that line is one output line whatever follows. The host
must write the same, without searching the whole line again per word: a pasted megabyte
took minutes. The work is counted in characters the serializer's scans are handed (no
timed assertion)."""

from __future__ import annotations

import pytest

from keypost.host import flowed


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Characters handed to the serializer's whole-line scans, per call."""
    seen: list[int] = []
    offsets = flowed._utf16_offsets

    def counting(text: str) -> list[int] | None:
        seen.append(len(text))
        return offsets(text)

    monkeypatch.setattr(flowed, "_utf16_offsets", counting)
    return seen


@pytest.mark.parametrize("word", ["x" * 300, "é" * 300, "\U0001F642" * 300])
def test_a_line_stuck_at_its_first_blank_is_written_as_gecko_does(word: str) -> None:
    # 72 columns, two blanks: the soft break takes the first, the next line starts with
    # the second (stuffed) and a word wider than the column, then many short words.
    line = "a" * 72 + "  " + word + " " + "b " * 50 + "end"
    assert flowed.flow_plain(line).split("\n") == [
        "a" * 72 + " ", "  " + word + " " + "b " * 50 + "end"]


@pytest.mark.parametrize("word", ["x" * 20_000, "é" * 20_000, "\U0001F642" * 20_000])
def test_words_after_a_stuck_line_cost_no_scan_of_it(scanned: list[int], word: str) -> None:
    line = "a" * 72 + "  " + word + " " + "b " * 2_000
    flowed.flow_plain(line)
    assert sum(scanned) <= 4 * len(line)


def test_long_lines_and_combining_marks_are_scanned_once(scanned: list[int]) -> None:
    for line in ("x" * 200_000, "a" + "\u0301" * 200_000, ("\u4e2d" * 100 + " ") * 2_000):
        scanned.clear()
        flowed.flow_plain(line)
        assert sum(scanned) <= 4 * len(line), line[:3]


class _CountingPattern:
    """flowed._ANCHOR_END, counting the characters its searches are handed."""

    def __init__(self, scanned: list[int]) -> None:
        self.pattern = flowed._ANCHOR_END
        self.scanned = scanned

    def search(self, text: str, pos: int = 0) -> object:
        self.scanned.append(len(text) - pos)
        return self.pattern.search(text, pos)

    def finditer(self, text: str, pos: int = 0) -> object:
        self.scanned.append(len(text) - pos)
        return self.pattern.finditer(text, pos)


def test_links_without_an_end_tag_cost_one_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each <a> looked for its </a> from where it starts, to the end of the document when
    none follows: quadratic in the links of HTML that does not close them."""
    scanned: list[int] = []
    monkeypatch.setattr(flowed, "_ANCHOR_END", _CountingPattern(scanned))
    document = '<a href="https://x.example/">' * 2_000 + '<a href="https://y.example/">' \
        'https://y.example/</a>'
    assert flowed.self_links(document) == [("https://y.example/", "https://y.example/")]
    assert sum(scanned) <= 2 * len(document)
