"""The README's contents list, made from its ## and ### headings (GitHub's anchors).

`python scripts/readme_toc.py` rewrites the block between the contents markers;
`--check` exits 1 when it is out of date (tests/test_readme.py runs it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- contents: made by scripts/readme_toc.py -->", "<!-- /contents -->"


def anchor(title: str, seen: dict[str, int]) -> str:
    """GitHub's heading anchor: lower case, punctuation but - and _ dropped, spaces to -,
    a repeated one numbered (-1, -2, ...)."""
    base = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def headings(text: str) -> list[tuple[int, str, str]]:
    """(level, title, anchor) of every heading outside code blocks (anchors count all
    levels: a repeated title is numbered across them)."""
    out: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6}) (.+)$", line)
        if m:
            out.append((len(m.group(1)), m.group(2), anchor(m.group(2), seen)))
    return out


def contents(text: str) -> str:
    lines = [f"{'  ' * (level - 2)}- [{title.replace('`', '')}](#{a})"
             for level, title, a in headings(text) if level in (2, 3)]
    return "\n".join([BEGIN, "**Contents**", "", *lines, END])


def main() -> int:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + contents(text) + text[end:]
    if "--check" in sys.argv[1:]:
        if new != text:
            print("README.md's contents list is out of date: run python scripts/readme_toc.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
