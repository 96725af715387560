"""`keypost setup`: directory URL, account, password and trust anchor, in a window or the terminal.

The answers go to the host's `configure` (hostconfig), which stores the password in the OS
keyring; nothing here writes a secret anywhere. pywebview is an optional extra ("gui") and is
imported only when a window can actually open.
"""

from __future__ import annotations

import getpass
import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keypost.core.containers import load_certificates, sha256_fingerprint, to_pem
from keypost.core.errors import KeypostError
from keypost.installer import hostconfig
from keypost.installer.manifest_locations import OS, current_os


@dataclass(frozen=True)
class Answers:
    directory: str
    username: str | None
    password: str | None
    trust_anchor_pem: str
    fingerprint: str  # what the user confirmed


def read_anchor(path: str) -> str:
    """The trust anchor file as PEM text; PEM or DER, as `install --trust-anchor` takes it.
    Raises KeypostError (ContainerError) for a file that holds no certificate."""
    certs = load_certificates(Path(path).expanduser().read_bytes())
    return "".join(to_pem(c).decode("ascii") for c in certs)


def anchor_fingerprint(pem: str) -> tuple[str, str]:
    """(SHA-256 fingerprint, subject) of the first certificate in a PEM text."""
    certs = load_certificates(pem.encode("utf-8"))
    if not certs:
        raise KeypostError("the trust anchor file holds no certificate")
    return sha256_fingerprint(certs[0]), certs[0].subject.rfc4514_string()


def gui_available(
    os_name: OS, environ: Mapping[str, str], has_module: Callable[[str], bool]
) -> bool:
    """A window can open: pywebview is installed and (on Linux) a GUI backend and a display."""
    if not has_module("webview"):
        return False
    if os_name == "linux":
        has_display = bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
        return has_display and _linux_backend(has_module) is not None
    return True


def _linux_backend(has_module: Callable[[str], bool]) -> str | None:
    # pywebview tries GTK first and logs a traceback when PyGObject is missing; name the
    # backend that is there instead (Qt from the PyPI wheels when no PyGObject).
    if has_module("gi"):
        return "gtk"
    # Qt needs a binding with its WebEngine module (a separate wheel for PyQt).
    web_engines = [f"{b}.QtWebEngineWidgets" for b in ("PyQt6", "PySide6", "PyQt5", "PySide2")]
    return "qt" if has_module("qtpy") and any(map(has_module, web_engines)) else None


def has_module(name: str) -> bool:
    """Importable, without importing it (a dotted name imports only its parent packages)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package is missing
        return False


def ask_terminal(
    ask: Callable[[str], str] = input,
    ask_secret: Callable[[str], str] = getpass.getpass,
    read_file: Callable[[str], str] = read_anchor,
    say: Callable[[str], None] = print,
) -> Answers | None:
    """Ask the questions; None when the user does not confirm the fingerprint."""
    directory = ask("Directory URL (ldaps://, ldap:// or https://): ").strip()
    if not directory:
        raise KeypostError("a directory URL is needed")
    username = ask("User name (empty for anonymous): ").strip() or None
    password = ask_secret("Password (input hidden): ") if username else None
    pem = read_file(ask("Directory CA certificate file (PEM or DER): ").strip())
    fingerprint, subject = anchor_fingerprint(pem)
    say(f"Trust anchor: {subject}\nSHA-256 fingerprint: {fingerprint}")
    if ask(
        "Does this fingerprint match the one your administrator gave you? [y/N] "
    ).strip().lower() not in (
        "y",
        "yes",
        "j",
        "ja",
    ):
        say("Not saved.")
        return None
    return Answers(directory, username, password or None, pem, fingerprint)


def save(answers: Answers, python: str | None = None) -> dict[str, Any]:
    return hostconfig.configure(
        answers.directory,
        username=answers.username,
        password=answers.password,
        trust_anchor_pem=answers.trust_anchor_pem,
        trust_anchor_fingerprint=answers.fingerprint,
        test=True,
        command=hostconfig.host_command(python),
    )


class WindowApi:
    """Methods the setup window's JavaScript calls (pywebview js_api); replies are plain dicts."""

    def __init__(self, python: str | None) -> None:
        self._python = python
        self._window: Any = None  # set once the window exists; private so JS does not see it
        self.saved = False

    def _attach(self, window: Any) -> None:
        # Underscored: pywebview hands every public method to the page's JavaScript.
        self._window = window

    def fingerprint(self, pem: str) -> dict[str, str]:
        try:
            fp, subject = anchor_fingerprint(pem)
        except KeypostError as exc:
            return {"error": str(exc)}
        return {"fingerprint": fp, "subject": subject}

    def save(
        self, directory: str, username: str, password: str, pem: str, fingerprint: str
    ) -> dict[str, str]:
        answers = Answers(
            directory.strip(), username.strip() or None, password or None, pem, fingerprint
        )
        try:
            status = save(answers, self._python)
        except KeypostError as exc:
            return {"error": str(exc)}
        self.saved = True
        return {"ok": f"Saved: {status.get('directory')}"}

    def close(self) -> None:
        """Cancel (before saving) or Close (after): either way nothing more is written."""
        if self._window is not None:
            self._window.destroy()


def open_window(python: str | None, on_start: Callable[[Any], None] | None = None) -> int:
    """Show the window until it is closed; 0 when the settings were saved, else 1.

    `on_start(window)` runs in pywebview's worker thread once the GUI loop is up (tests drive
    the page through it as a user would)."""
    webview: Any = importlib.import_module("webview")
    gui = _linux_backend(has_module) if current_os() == "linux" else None
    if gui == "qt" and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Chromium (Qt WebEngine) refuses to start its sandbox as root.
        os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox")
    html = (Path(__file__).parent / "setup_window.html").read_text("utf-8")
    api = WindowApi(python)
    window = webview.create_window("keypost setup", html=html, js_api=api, width=560, height=600)
    api._attach(window)
    if on_start is None:
        webview.start(gui=gui)
    else:
        webview.start(on_start, window, gui=gui)
    return 0 if api.saved else 1


def run(terminal: bool = False, python: str | None = None) -> int:
    if not terminal and gui_available(current_os(), os.environ, has_module):
        return open_window(python)
    answers = ask_terminal()
    if answers is None:
        return 1
    status = save(answers, python)
    user = status.get("username") or "anonymous"
    print(f"Saved. The host uses {status.get('directory')} as {user}.")
    return 0
