"""`keypost setup`'s real pywebview window (Qt WebEngine) on an Xvfb display, driven through the
page's own DOM against a real `keypost directory serve`; the host it saves through is a real
`keypost host` process with a file keyring in the test's own directory.

No skip: where pywebview or its GUI backend is missing these tests fail, so CI notices.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from host.host_support import (
    PASSWORD,
    Directory,
    GatewayKeys,
    directory_available,
    start_directory,
)
from proc_util import stop

from keypost.installer.setup_wizard import gui_available, has_module

DRIVER = Path(__file__).with_name("setup_window_driver.py")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb display; -displayfd makes the server pick a free number."""
    assert shutil.which("Xvfb"), "Xvfb is needed (Debian package xvfb)"
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # written once the server accepts connections
    assert number.isdigit(), "Xvfb did not start"
    try:
        yield f":{number}"
    finally:
        stop(proc, timeout=10)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    assert directory_available(), "`keypost directory` is not registered"
    base = tmp_path_factory.mktemp("setup-directory")
    keys = GatewayKeys({"example.com": rsa.generate_private_key(65537, 2048)})
    served, proc = start_directory(base, keys)
    try:
        yield served
    finally:
        stop(proc, timeout=10)


def _env(tmp: Path, display: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DISPLAY": display,
        "HOME": str(tmp),
        "KEYPOST_CONFIG_DIR": str(tmp / "config"),
        "KEYPOST_CACHE_DIR": str(tmp / "cache"),
        # Never the real keyring: a file keyring under the test's own data directory.
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
        "XDG_DATA_HOME": str(tmp / "data"),
    }
    env.pop("WAYLAND_DISPLAY", None)
    return env


def _run_window(scenario: str, answers: dict[str, str], env: dict[str, str]) -> tuple[int, Any]:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), scenario],
        input=json.dumps(answers),
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"the window driver printed no result; stderr:\n{proc.stderr[-3000:]}"
    seen = json.loads(lines[-1].removeprefix("RESULT "))
    assert "error" not in seen, f"{seen['error']}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.returncode, seen


def _answers(directory: Directory, tmp: Path) -> dict[str, str]:
    return {
        "directory": directory.ldap_url,
        "bad_directory": "ftp://directory.example",
        "username": "alice",
        "password": PASSWORD,
        "pem": directory.anchor_pem,
        "config_dir": str(tmp / "config"),
        "pause": os.environ.get("KEYPOST_SETUP_PAUSE", ""),
    }


def test_the_window_opens_here(display: str) -> None:
    """The environment the other tests need: pywebview with a backend, and a display."""
    assert gui_available("linux", {"DISPLAY": display}, has_module), "no pywebview or Qt"


def test_window_saves_config_and_keyring_and_rejects_a_bad_url(
    display: str, directory: Directory, tmp_path: Path
) -> None:
    env = _env(tmp_path, display)
    status, seen = _run_window("save", _answers(directory, tmp_path), env)

    der = x509.load_pem_x509_certificate(directory.anchor_pem.encode()).public_bytes(Encoding.DER)
    sha256 = hashlib.sha256(der).hexdigest().upper()
    shown = seen["fingerprint_shown"].split(" ", 1)[0].replace(":", "").upper()
    assert shown == sha256, "the page shows the trust anchor's SHA-256 fingerprint"

    assert seen["bad"]["class"] == "error" and seen["bad"]["text"], seen["bad"]
    assert seen["config_after_bad"] is False, "a bad directory URL wrote a configuration"

    assert seen["good"]["class"] == "ok", seen["good"]
    assert seen["close_label"] == "Close"
    assert status == 0

    config = (tmp_path / "config" / "host.toml").read_text("utf-8")
    assert directory.ldap_url in config and "alice" in config
    assert PASSWORD not in config
    stored = subprocess.run(
        [sys.executable, "-c", "import keyring; print(keyring.get_password('keypost', 'alice'))"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()
    assert stored == PASSWORD, "the password is in the (test) keyring"


def test_cancel_writes_nothing(display: str, directory: Directory, tmp_path: Path) -> None:
    env = _env(tmp_path, display)
    answers = {**_answers(directory, tmp_path), "pem_as_file": "1"}
    status, seen = _run_window("cancel", answers, env)
    assert seen["fingerprint_shown"].startswith(directory.fingerprint), "read from the file"
    assert status == 1
    assert not (tmp_path / "config").exists()
    assert not (tmp_path / "data").exists(), "nothing went to the keyring"


def test_without_a_display_it_asks_in_the_terminal(
    directory: Directory, tmp_path: Path
) -> None:
    """pywebview and Qt are installed here, but with no display `keypost setup` must not try a
    window: it asks on the terminal and saves the same way."""
    env = _env(tmp_path, "")
    del env["DISPLAY"]
    anchor = tmp_path / "anchor.pem"
    anchor.write_text(directory.anchor_pem, "utf-8")
    keypost = Path(sys.executable).with_name("keypost")
    # No tty: getpass reads the password from stdin after warning on stderr.
    answers = f"{directory.ldap_url}\nalice\n{PASSWORD}\n{anchor}\ny\n"
    proc = subprocess.run(
        [str(keypost), "setup"], input=answers, capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert directory.fingerprint in proc.stdout and "Saved." in proc.stdout
    assert directory.ldap_url in (tmp_path / "config" / "host.toml").read_text("utf-8")
    assert PASSWORD not in proc.stdout + proc.stderr
