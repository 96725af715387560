"""The directory password in the OS keyring (service "keypost"), and nowhere else."""

from __future__ import annotations

import os

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.core
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


def _name(kr: keyring.backend.KeyringBackend) -> str:
    return f"{type(kr).__module__}.{type(kr).__name__}"


def backend_name() -> str:
    return _name(_backend())


def _os_keyring() -> keyring.backend.KeyringBackend:
    """The backend to keep the password in. With no OS keyring running, keyring falls back
    on its own to the best of the rest, e.g. keyrings.alt's PlaintextKeyring (a base64 file
    in the home folder) when that package is installed, as the test extra installs it:
    such a backend (one keyring does not recommend) is used only when named on purpose."""
    kr = _backend()
    named = bool(os.environ.get("PYTHON_KEYRING_BACKEND")) or keyring.core.load_config()
    if named or keyring.core.recommended(kr) or isinstance(kr, keyring.backends.fail.Keyring):
        return kr  # the fail backend speaks for itself (NoKeyringError)
    raise KeyringUnavailable(
        f"no OS keyring is running, and keyring's fallback {_name(kr)} is not one (keyrings.alt's"
        " file backends keep the password in a plain file): start GNOME Keyring or KWallet,"
        " or name a backend in PYTHON_KEYRING_BACKEND to use it anyway"
    )


def get_password(username: str) -> str | None:
    try:
        value: str | None = _os_keyring().get_password(SERVICE, username)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the OS keyring cannot be read: {type(exc).__name__}") from None
    return value


def set_password(username: str, password: str) -> None:
    try:
        _os_keyring().set_password(SERVICE, username, password)
    except keyring.errors.KeyringError as exc:
        # The exception text could in principle echo what was stored: report the type only.
        raise KeyringUnavailable(
            f"the password could not be stored in the OS keyring: {type(exc).__name__}"
        ) from None


def delete_password(username: str) -> None:
    try:
        # any backend: a purge also removes what an older host kept in a fallback file
        _backend().delete_password(SERVICE, username)
    except keyring.errors.PasswordDeleteError:
        pass  # nothing stored: already the wanted state
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(
            f"the password could not be removed from the OS keyring: {type(exc).__name__}"
        ) from None
