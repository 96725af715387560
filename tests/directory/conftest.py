"""Fixtures for the directory tests; helpers live in dir_support (importable by name,
unlike conftest, which several test folders have)."""

from dir_support import directory
from test_directory_controller import ca, controller, keys

__all__ = ["ca", "controller", "directory", "keys"]
