"""The content scan hook: a Protocol, an external-command scanner and entry-point loading."""

from __future__ import annotations

import enum
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from keypost.gateway.config import ScanConfig
from keypost.gateway.errors import ConfigError, TempFailure

log = logging.getLogger("keypost.gateway.scan")

ENTRY_POINT_GROUP = "keypost.gateway.scanners"
MAX_REASON = 200  # characters of a scanner's stdout put into an SMTP reply


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class ScanResult:
    verdict: Verdict
    reason: str = ""


class Scanner(Protocol):
    """Looks at a clear message. Raises TempFailure when it cannot decide (answered 451)."""

    def scan(self, message: bytes, mail_from: str, recipients: Sequence[str]) -> ScanResult: ...


class NullScanner:
    """Accepts everything (no scan hook configured)."""

    def scan(self, message: bytes, mail_from: str, recipients: Sequence[str]) -> ScanResult:
        return ScanResult(Verdict.ACCEPT)


def _reason(text: bytes) -> str:
    # One printable line: it goes into an SMTP reply, where CR/LF would break the protocol.
    line = " ".join(text.decode("utf-8", "replace").split())
    clean = "".join(ch if ch.isprintable() and ch.isascii() else "?" for ch in line)
    return clean[:MAX_REASON]


class CommandScanner:
    """Runs a command with the message on stdin: exit 0 accept, 1 reject, 2 quarantine.

    Its stdout (first 200 characters, one line) is the reason. Any other exit status,
    a crash or a timeout is a temporary failure, so the mail is retried rather than lost.
    """

    def __init__(self, command: Sequence[str], timeout: float) -> None:
        self.command = list(command)
        self.timeout = timeout

    def scan(self, message: bytes, mail_from: str, recipients: Sequence[str]) -> ScanResult:
        try:
            proc = subprocess.run(
                self.command,
                input=message,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TempFailure("content scan timed out", "4.7.0") from None
        except OSError as exc:
            log.error("scan command %s cannot run: %s", self.command[0], exc.strerror)
            raise TempFailure("content scan unavailable", "4.7.0") from None
        reason = _reason(proc.stdout)
        if proc.returncode == 0:
            return ScanResult(Verdict.ACCEPT, reason)
        if proc.returncode == 1:
            return ScanResult(Verdict.REJECT, reason or "rejected by content scan")
        if proc.returncode == 2:
            return ScanResult(Verdict.QUARANTINE, reason or "quarantined by content scan")
        log.error("scan command exited %d: %s", proc.returncode, _reason(proc.stderr))
        raise TempFailure("content scan failed", "4.7.0")


class CallableScanner:
    """Wraps a plain function `(message, mail_from, recipients) -> ScanResult`."""

    def __init__(self, func: object) -> None:
        if not callable(func):
            raise ConfigError("scan entry point is not callable")
        self.func = func

    def scan(self, message: bytes, mail_from: str, recipients: Sequence[str]) -> ScanResult:
        result = self.func(message, mail_from, list(recipients))
        if isinstance(result, ScanResult):
            return result
        if isinstance(result, Verdict):
            return ScanResult(result)
        raise TempFailure("content scan returned no verdict", "4.7.0")


def load_entry_point(name: str) -> Scanner:
    """A scanner from entry point group keypost.gateway.scanners: an object with `scan`,
    a class whose instances have `scan`, or a plain function."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ConfigError(f"scan.entry_point: no scanner named {name!r} in {ENTRY_POINT_GROUP}")
    try:
        obj = found[0].load()
    except Exception as exc:  # an arbitrary plug-in: any import error means "cannot start"
        raise ConfigError(f"scan.entry_point {name!r} cannot be loaded: {exc}") from None
    if isinstance(obj, type):
        obj = obj()
    if hasattr(obj, "scan"):
        return obj  # type: ignore[no-any-return]
    return CallableScanner(obj)


def check_command(command: Sequence[str]) -> None:
    """Raises ConfigError unless the command's program is an executable file, looked up as
    subprocess looks it up (a name with a slash as it is, else in PATH): otherwise every
    message would get 451 at run time while check-config said OK."""
    program = command[0]
    if shutil.which(program) is None:
        where = "" if "/" in program else " in PATH"
        raise ConfigError(f"scan.command: {program!r} is no executable file{where}")


def make_scanner(config: ScanConfig, timeout: float) -> Scanner:
    if config.command:
        check_command(config.command)
        return CommandScanner(config.command, timeout)
    if config.entry_point:
        return load_entry_point(config.entry_point)
    return NullScanner()
