"""The directory's error tree: operator and peer mistakes, each a one-line message."""

from __future__ import annotations

from keypost.core.errors import KeypostError


class DirectoryError(KeypostError):
    """Base of errors raised by the directory (CLI prints str(e) on one line)."""


class StoreError(DirectoryError):
    """The store refused an operation (unknown domain, duplicate account, bad schema...)."""


class StoreBusy(StoreError):
    """Another process holds the store's write lock (past the wait the store allows)."""


class ConfigError(DirectoryError):
    """The data directory or its settings file is missing or unusable."""


class RequestError(DirectoryError):
    """A client request is malformed (bad address, too many addresses, bad purpose)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
