"""The directory password in the OS keyring (service "keypost"), and nowhere else."""

from __future__ import annotations

import keyring
import keyring.errors

from keypost.host.errors import KeyringUnavailable

SERVICE = "keypost"


def backend_name() -> str:
    kr = keyring.get_keyring()
    return f"{type(kr).__module__}.{type(kr).__name__}"


def get_password(username: str) -> str | None:
    try:
        value: str | None = keyring.get_password(SERVICE, username)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the OS keyring cannot be read: {type(exc).__name__}") from None
    return value


def set_password(username: str, password: str) -> None:
    try:
        keyring.set_password(SERVICE, username, password)
    except keyring.errors.KeyringError as exc:
        # The exception text could in principle echo what was stored: report the type only.
        raise KeyringUnavailable(
            f"the password could not be stored in the OS keyring: {type(exc).__name__}"
        ) from None


def delete_password(username: str) -> None:
    try:
        keyring.delete_password(SERVICE, username)
    except keyring.errors.PasswordDeleteError:
        pass  # nothing stored: already the wanted state
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(
            f"the password could not be removed from the OS keyring: {type(exc).__name__}"
        ) from None
