"""Real Thunderbird for end-to-end tests: a profile made from user.js, started headless with
Marionette, always stopped by the PID we started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keypost.installer.profiles import pref_line

ADDON_ID = "keypost@keypost.example"
# Thunderbird derives the compose action's element id from the add-on id.
COMPOSE_BUTTON = "keypost_keypost_example-composeAction-toolbarbutton"


def profile_prefs(smtp_port: int, email: str, name: str) -> dict[str, Any]:
    """A POP account that never polls, Local Folders, one identity, one SMTP server."""
    return {
        "mail.accountmanager.accounts": "account1,account2",
        "mail.accountmanager.defaultaccount": "account1",
        "mail.accountmanager.localfoldersserver": "server2",
        "mail.account.account1.identities": "id1",
        "mail.account.account1.server": "server1",
        "mail.account.account2.server": "server2",
        "mail.server.server1.type": "pop3",
        "mail.server.server1.hostname": "127.0.0.1",
        "mail.server.server1.port": 9,  # discard: never contacted, polling is off
        "mail.server.server1.userName": email.split("@")[0],
        "mail.server.server1.name": email,
        "mail.server.server1.login_at_startup": False,
        "mail.server.server1.check_new_mail": False,
        "mail.server.server1.download_on_biff": False,
        "mail.server.server2.type": "none",
        "mail.server.server2.hostname": "Local Folders",
        "mail.server.server2.userName": "nobody",
        "mail.server.server2.name": "Local Folders",
        "mail.identity.id1.useremail": email,
        "mail.identity.id1.fullName": name,
        "mail.identity.id1.smtpServer": "smtp1",
        "mail.identity.id1.fcc": True,
        "mail.identity.id1.valid": True,
        "mail.smtpservers": "smtp1",
        "mail.smtp.defaultserver": "smtp1",
        "mail.smtpserver.smtp1.hostname": "127.0.0.1",
        "mail.smtpserver.smtp1.port": smtp_port,
        "mail.smtpserver.smtp1.authMethod": 1,
        "mail.smtpserver.smtp1.try_ssl": 0,
        "mail.smtpserver.smtp1.username": "",
        "mailnews.sendInBackground": True,
        "extensions.autoDisableScopes": 0,
        # A port the kernel picks, which Marionette writes to MarionetteActivePort in the
        # profile (Thunderbird.marionette_port): one picked beforehand could be taken by
        # another process before Thunderbird bound it.
        "marionette.port": 0,
        "mail.provider.enabled": False,
        "mailnews.start_page.enabled": False,
        "mail.shell.checkDefaultClient": False,
        "mail.spotlight.firstRunDone": True,
        "mail.winsearch.firstRunDone": True,
        "mail.rights.version": 1,
        "mail.startup.enabledMailCheckOnce": True,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.reportingpolicy.firstRun": False,
        "app.update.disabledForTesting": True,
        "browser.dom.window.dump.enabled": True,
        "devtools.console.stdout.chrome": True,
        "devtools.console.stdout.content": True,
        "extensions.logging.enabled": False,
    }


def isolated_env(home: Path) -> dict[str, str]:
    """The environment for Thunderbird, the host and keypost's CLI: a HOME of its own
    (keypost's config, cache and a file keyring below it), no XDG_/KEYPOST_/MOZ_ settings
    of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KEYPOST_", "MOZ_"))}
    env.update(
        {
            "HOME": str(home),
            "KEYPOST_CONFIG_DIR": str(home / ".config/keypost"),
            "KEYPOST_CACHE_DIR": str(home / ".cache/keypost"),
            "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
            "MOZ_CRASHREPORTER_DISABLE": "1",
            "TZ": "UTC",
        }
    )
    return env


def write_profile(profile: Path, prefs: Mapping[str, Any]) -> None:
    profile.mkdir(parents=True, exist_ok=True)
    lines = [pref_line(k, v) for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n", "utf-8")


@dataclass
class Thunderbird:
    """A running Thunderbird; `stop` kills exactly the process (group) it started."""

    proc: subprocess.Popen[bytes]
    profile: Path
    log: Path

    def marionette_port(self, timeout: float = 90) -> int:
        """The port Marionette listens on, once it has written it into the profile."""
        def written() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"Thunderbird exited ({self.proc.returncode}) before "
                                     f"Marionette listened: {self.log_text()[-2000:]}")
            text = (self.profile / ACTIVE_PORT).read_text() if (
                self.profile / ACTIVE_PORT).exists() else ""
            return int(text) if text.strip().isdigit() else None
        port: int = wait_for(written, timeout, "Marionette's port (MarionetteActivePort)")
        return port

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Thunderbird was started in its own session: signal its process group by the
            # group id of our child (its helpers, e.g. the native host, are in the group).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)

    def log_text(self) -> str:
        return self.log.read_text("utf-8", errors="replace") if self.log.exists() else ""


def descendants(pid: int) -> list[int]:
    """PIDs of the processes below `pid` (Linux /proc), children first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


# Thunderbird 140 ESR unpacked next to the installed 153 (tests/e2e/fetch-thunderbird-140.sh).
TB140_DEFAULT = "/var/cache/keypost-tb140/root/usr/lib/thunderbird/thunderbird"


def thunderbird_binary(version: str) -> str | None:
    """The Thunderbird to test: "153" is the installed one, "140" the unpacked ESR."""
    if version == "140":
        path = os.environ.get("KEYPOST_THUNDERBIRD_140") or TB140_DEFAULT
        return path if os.access(path, os.X_OK) else None
    return os.environ.get("KEYPOST_THUNDERBIRD") or shutil.which("thunderbird")


ACTIVE_PORT = "MarionetteActivePort"  # a file Marionette writes into the profile


def start(binary: str, profile: Path, env: Mapping[str, str], log: Path) -> Thunderbird:
    (profile / ACTIVE_PORT).unlink(missing_ok=True)  # a killed run's would name its port
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--marionette",
                "-remote-allow-system-access",
                "--no-remote",
                "-profile",
                str(profile),
            ],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Thunderbird(proc, profile, log)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )
