"""End to end in a real Thunderbird: the add-on encrypts through the host for a real directory.

Thunderbird (headless, Marionette), the add-on and native host installed by `keypost install
thunderbird`, a real `keypost directory serve`, and an aiosmtpd server that captures what
Thunderbird sends. Started once per module; every process is stopped by the PID we started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tbharness as tb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEYPOST = [sys.executable, "-m", "keypost.core.cli"]
SENDER = "alice@example.com"
SERVED = "bob@example.org"  # a second domain the directory serves (its own gateway)
EXTERNAL = "carol@external.test"  # no gateway: reached through the sender's gateway


# ---- SMTP capture --------------------------------------------------------------------------


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SmtpCapture:
    port: int
    messages: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[Captured]:
        with self.lock:
            return list(self.messages)


class _Handler:
    def __init__(self, sink: SmtpCapture) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.sink.lock:
            self.sink.messages.append(
                Captured(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 OK captured"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpCapture]:
    from aiosmtpd.controller import Controller

    sink = SmtpCapture(tb.free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# ---- the directory -------------------------------------------------------------------------


@dataclass
class Directory:
    http_url: str
    ldap_url: str
    ca_pem: Path
    gateway_keys: dict[str, Path]  # domain -> private key PEM


def _run(args: list[str], env: dict[str, str], stdin: bytes | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        )
    return done.stdout.decode()


def _gateway_key(path: Path) -> Path:
    """An RSA-2048 gateway key made by openssl; returns the public key PEM."""
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    public = path.with_suffix(".pub.pem")
    subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    return public


@pytest.fixture(scope="module")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
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


@pytest.fixture(scope="module")
def directory(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[Directory]:
    work = tmp_path_factory.mktemp("directory")
    data = work / "data"
    _run([*KEYPOST, "directory", "init", "--data", str(data)], base_env)
    keys = {}
    for domain in ("example.com", "example.org"):
        key = work / f"gw-{domain}.pem"
        public = _gateway_key(key)
        keys[domain] = key
        _run(
            [
                *KEYPOST,
                "directory",
                "domain",
                "add",
                domain,
                "--encryption-cert",
                str(public),
                "--data",
                str(data),
            ],
            base_env,
        )
    _run(
        [
            *KEYPOST,
            "directory",
            "account",
            "add",
            "alice",
            "--role",
            "user",
            "--domain",
            "example.com",
            "--password-stdin",
            "--data",
            str(data),
        ],
        base_env,
        b"alice-secret\n",
    )
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            *KEYPOST,
            "directory",
            "serve",
            "--data",
            str(data),
            "--ldap",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=base_env,
    )
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("listening "):
                url = line.split()[1]
                urls[url.split(":", 1)[0]] = url.rstrip("/")
            if line.strip() == "ready":
                break
        assert "http" in urls and "ldap" in urls, f"directory did not start: {urls}"
        yield Directory(urls["http"], urls["ldap"], data / "ca.pem", keys)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---- Thunderbird with the add-on --------------------------------------------------------


@dataclass
class Session:
    tb: tb.Thunderbird
    marionette: Any
    profile: Path


def install_keypost(
    env: dict[str, str], profile: Path, directory: Directory, username: str | None
) -> str:
    """`keypost install thunderbird` exactly as a user would run it."""
    args = [
        *KEYPOST,
        "install",
        "thunderbird",
        "--profile",
        str(profile),
        "--send-in-background",
        "--auto-enable",
        "--directory",
        directory.http_url,
        "--trust-anchor",
        str(directory.ca_pem),
    ]
    stdin = None
    if username:
        args += ["--username", username, "--password-stdin"]
        stdin = b"alice-secret\n"
    return _run(args, env, stdin)


@pytest.fixture(scope="module")
def thunderbird(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
) -> Iterator[Session]:
    binary = tb.thunderbird_binary()
    if binary is None:
        pytest.skip("thunderbird is not installed")
    from marionette_driver.marionette import Marionette

    profile = tmp_path_factory.mktemp("profile")
    port = tb.free_port()
    tb.write_profile(profile, tb.profile_prefs(smtp.port, port, SENDER, "Alice"))
    install_keypost(base_env, profile, directory, "alice")
    log = profile.parent / "thunderbird.log"
    proc = tb.start(binary, profile, base_env, port, log)
    client = None
    try:
        client = Marionette(host="127.0.0.1", port=port)
        client.raise_for_port(timeout=90)
        client.start_session()
        client.set_context(client.CONTEXT_CHROME)
        yield Session(proc, client, profile)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.delete_session()
        proc.stop()


ADDON_ACTIVE = """
const { AddonManager } = ChromeUtils.importESModule("resource://gre/modules/AddonManager.sys.mjs");
const addon = await AddonManager.getAddonByID(arguments[0]);
return addon ? {active: addon.isActive, version: addon.version, type: addon.type} : null;
"""

OPEN_COMPOSE = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const params = Cc["@mozilla.org/messengercompose/composeparams;1"]
  .createInstance(Ci.nsIMsgComposeParams);
const fields = Cc["@mozilla.org/messengercompose/composefields;1"]
  .createInstance(Ci.nsIMsgCompFields);
fields.to = arguments[0];
fields.subject = arguments[1];
fields.body = arguments[2];
params.type = Ci.nsIMsgCompType.New;
params.format = Ci.nsIMsgCompFormat.PlainText;
params.composeFields = fields;
params.identity = MailServices.accounts.getIdentity("id1");
MailServices.compose.OpenComposeWindowWithParams(null, params);
return true;
"""


def _addon_state(m: Any) -> Any:
    return m.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(async () => {" + ADDON_ACTIVE + "})().then(done, e => done(String(e)));",
        script_args=[tb.ADDON_ID],
    )


def open_compose(session: Session, to: str, subject: str, body: str) -> str:
    """Open a compose window; returns its chrome window handle (Marionette is switched to it)."""
    m = session.marionette
    m.switch_to_window(m.chrome_window_handles[0])
    before = set(m.chrome_window_handles)
    m.execute_script(OPEN_COMPOSE, script_args=[to, subject, body])
    handle = tb.wait_for(
        lambda: (set(m.chrome_window_handles) - before) or None, 60, "the compose window"
    )
    (new,) = handle
    m.switch_to_window(new)
    tb.wait_for(
        lambda: m.execute_script(
            "return document.readyState == 'complete' && !!document.getElementById(arguments[0])",
            script_args=[tb.COMPOSE_BUTTON],
        ),
        60,
        "the add-on's compose button",
    )
    return str(new)


# ---- the tests -------------------------------------------------------------------------------


def test_addon_loads_and_compose_button_exists(thunderbird: Session) -> None:
    state = tb.wait_for(lambda: _addon_state(thunderbird.marionette), 60, "the add-on")
    assert state == {"active": True, "version": "0.1.0", "type": "extension"}, state
    handle = open_compose(thunderbird, EXTERNAL, "button check", "hello")
    m = thunderbird.marionette
    label = m.execute_script(
        "const b = document.getElementById(arguments[0]); return b && b.getAttribute('label');",
        script_args=[tb.COMPOSE_BUTTON],
    )
    assert label == "Encrypt"
    m.close_chrome_window()
    assert handle not in m.chrome_window_handles
