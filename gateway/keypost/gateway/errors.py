"""The gateway's error tree: each error maps to one SMTP reply (code, enhanced status, text)."""

from __future__ import annotations

from keypost.core.errors import KeypostError


class GatewayError(KeypostError):
    """Base of the gateway's own errors."""


class ConfigError(GatewayError):
    """The configuration (or a key file it names) is unusable; the gateway refuses to start."""


class ReleaseRefused(GatewayError):
    """A held message cannot leave the quarantine as asked; it stays held."""


class SmtpFailure(GatewayError):
    """An error that answers the sending MTA with a specific SMTP reply."""

    code = 451
    enhanced = "4.3.0"

    def __init__(self, text: str, enhanced: str | None = None) -> None:
        super().__init__(text)
        if enhanced is not None:
            self.enhanced = enhanced

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self}"


class TempFailure(SmtpFailure):
    """Try again later (451): the sending MTA keeps the mail and retries."""

    code = 451
    enhanced = "4.3.0"


class DirectoryUnavailable(TempFailure):
    """The directory could not be reached or answered with an error."""

    enhanced = "4.4.3"


class NextHopUnavailable(TempFailure):
    """The next hop refused the connection, timed out or answered 4xx."""

    enhanced = "4.4.1"


class PermFailure(SmtpFailure):
    """A permanent refusal (5xx) with a clear reason."""

    code = 554
    enhanced = "5.6.0"
