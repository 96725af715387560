"""The installer's errors: one line each, naming what failed."""

from __future__ import annotations

from keypost.core.errors import KeypostError


class InstallError(KeypostError):
    """An install step cannot succeed or failed (checked before writing, or undone after)."""
