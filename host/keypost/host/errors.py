"""The host's error tree: each class carries one stable protocol code from PROTOCOL.md."""

from __future__ import annotations

import enum
from typing import Any

from keypost.core.errors import KeypostError


class ErrorCode(enum.IntEnum):
    """Stable wire codes (PROTOCOL.md, "Error codes"). Never change a value, only append."""

    BAD_REQUEST = 1
    UNKNOWN_ACTION = 2
    VERSION_MISMATCH = 3
    MESSAGE_TOO_LARGE = 4
    NOT_CONFIGURED = 5
    KEYRING_UNAVAILABLE = 6
    DIRECTORY_UNREACHABLE = 7
    AUTHENTICATION_FAILED = 8
    TRUST_ANCHOR_MISMATCH = 9
    NO_VALID_CONTAINER = 10
    ENCRYPTION_FAILED = 11
    INTERNAL = 12
    DIRECTORY_ERROR = 13

    @property
    def wire_name(self) -> str:
        return self.name.lower()


class HostError(KeypostError):
    """An error the add-on is told about: a code, a one-line message, optional details."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": int(self.code),
            "name": self.code.wire_name,
            "message": str(self),
        }
        if self.details:
            error["details"] = self.details
        return error


class BadRequest(HostError):
    code = ErrorCode.BAD_REQUEST


class UnknownAction(HostError):
    code = ErrorCode.UNKNOWN_ACTION


class VersionMismatch(HostError):
    code = ErrorCode.VERSION_MISMATCH


class MessageTooLarge(HostError):
    code = ErrorCode.MESSAGE_TOO_LARGE


class NotConfigured(HostError):
    code = ErrorCode.NOT_CONFIGURED


class KeyringUnavailable(HostError):
    code = ErrorCode.KEYRING_UNAVAILABLE


class DirectoryUnreachable(HostError):
    code = ErrorCode.DIRECTORY_UNREACHABLE


class AuthenticationFailed(HostError):
    code = ErrorCode.AUTHENTICATION_FAILED


class TrustAnchorMismatch(HostError):
    code = ErrorCode.TRUST_ANCHOR_MISMATCH


class NoValidContainer(HostError):
    code = ErrorCode.NO_VALID_CONTAINER


class EncryptionFailed(HostError):
    code = ErrorCode.ENCRYPTION_FAILED


class InternalError(HostError):
    code = ErrorCode.INTERNAL


class DirectoryFailure(HostError):
    """The directory answered with an error or unreadable data (code directory_error)."""

    code = ErrorCode.DIRECTORY_ERROR


class DirectoryBusy(DirectoryFailure):
    """The directory still answered busy after the host's retries (code directory_error:
    the message tells the user to try again, the add-on needs no code of its own)."""
