"""README.md's contents list is current and every link inside it lands on a heading."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from readme_toc import README, headings  # noqa: E402


def test_contents_list_is_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts/readme_toc.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_every_in_page_link_lands_on_a_heading() -> None:
    text = README.read_text(encoding="utf-8")
    anchors = {a for _, _, a in headings(text)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "no in-page links found: the pattern is wrong"
    assert sorted({a for a in links if a not in anchors}) == []
