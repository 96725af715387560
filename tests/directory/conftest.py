"""Fixtures for the directory tests; helpers live in dir_support (importable by name,
unlike conftest, which several test folders have)."""

from dir_support import directory

__all__ = ["directory"]
