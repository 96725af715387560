"""The setting a mistyped name most likely meant, for one-line configuration errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` for the closest known name, or "" when none is close."""
    meant = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {meant[0]}?)" if meant else ""
