"""The core's error tree: every error a user or peer can cause has one class and one message."""

from __future__ import annotations


class KeypostError(Exception):
    """Base of every error keypost raises on purpose; str(e) is a one-line user message."""


class AddressError(KeypostError):
    """A mail address is malformed or cannot be represented in a certificate."""


class ContainerError(KeypostError):
    """A key container (or a key/certificate given to build one) is unusable."""


class PolicyError(KeypostError):
    """The issuance policy refuses a request (e.g. a gateway asking for a foreign sender)."""


class SmimeError(KeypostError):
    """An S/MIME operation failed (malformed input, unsupported algorithm, ...)."""


class DecryptError(SmimeError):
    """Decryption failed. Deliberately uniform: never says which key or check failed."""

    def __init__(self) -> None:
        super().__init__("message could not be decrypted with any of the gateway's keys")


class UnsupportedCipherError(SmimeError):
    """The content is encrypted with an algorithm keypost does not decrypt (3DES, ...).
    Read from the message's clear structure before any key is used, so naming it reveals
    nothing about the keys."""


class SignatureError(SmimeError):
    """A signed message does not verify."""
