"""The directory password in the OS keyring (service "keypost"), and nowhere else."""

from __future__ import annotations

import keyring
import keyring.backend
import keyring.errors

from keypost.host.errors import KeyringUnavailable

SERVICE = "keypost"


def _backend() -> keyring.backend.KeyringBackend:
    """The keyring's backend. keyring loads the one PYTHON_KEYRING_BACKEND or keyringrc.cfg
    names on first use, and a name it cannot load escapes as a bare ImportError or
    ValueError (an empty name): reported as the keyring being unavailable instead."""
    try:
        return keyring.get_keyring()
    except (ImportError, ValueError, AttributeError, TypeError) as exc:
        raise KeyringUnavailable(
            f"the OS keyring backend cannot be loaded ({type(exc).__name__}: {exc}); "
            "check PYTHON_KEYRING_BACKEND or keyringrc.cfg"
        ) from None


def backend_name() -> str:
    kr = _backend()
    return f"{type(kr).__module__}.{type(kr).__name__}"


def get_password(username: str) -> str | None:
    try:
        value: str | None = _backend().get_password(SERVICE, username)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the OS keyring cannot be read: {type(exc).__name__}") from None
    return value


def set_password(username: str, password: str) -> None:
    try:
        _backend().set_password(SERVICE, username, password)
    except keyring.errors.KeyringError as exc:
        # The exception text could in principle echo what was stored: report the type only.
        raise KeyringUnavailable(
            f"the password could not be stored in the OS keyring: {type(exc).__name__}"
        ) from None


def delete_password(username: str) -> None:
    try:
        _backend().delete_password(SERVICE, username)
    except keyring.errors.PasswordDeleteError:
        pass  # nothing stored: already the wanted state
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(
            f"the password could not be removed from the OS keyring: {type(exc).__name__}"
        ) from None
