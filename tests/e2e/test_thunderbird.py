"""End to end in a real Thunderbird: the add-on encrypts through the host for a real directory.

Thunderbird (headless, Marionette), the add-on and native host installed by `keypost install
thunderbird`, a real `keypost directory serve`, and an aiosmtpd server that captures what
Thunderbird sends. Started once per module; every process is stopped by the PID we started.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.message
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tbharness as tb
from cryptography.hazmat.primitives import serialization
from proc_util import stop

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
    from gw_support import EphemeralController

    sink = SmtpCapture(0)
    controller = EphemeralController(_Handler(sink), hostname="127.0.0.1", port=0)
    controller.start()
    sink.port = controller.port  # the kernel's pick (a port picked beforehand can be taken)
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
    return tb.isolated_env(tmp_path_factory.mktemp("home"))


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
        stop(proc, timeout=10)
        log.close()


# ---- Thunderbird with the add-on --------------------------------------------------------


@dataclass
class Session:
    tb: tb.Thunderbird
    marionette: Any
    profile: Path


def install_keypost(
    env: dict[str, str],
    profile: Path,
    url: str,
    ca_pem: Path,
    username: str | None,
    send_in_background: bool = True,
) -> str:
    """`keypost install thunderbird` exactly as a user would run it."""
    args = [
        *KEYPOST,
        "install",
        "thunderbird",
        "--profile",
        str(profile),
        *(["--send-in-background"] if send_in_background else []),
        "--auto-enable",
        "--directory",
        url,
        "--trust-anchor",
        str(ca_pem),
    ]
    stdin = None
    if username:
        args += ["--username", username, "--password-stdin"]
        stdin = b"alice-secret\n"
    return _run(args, env, stdin)


def thunderbird_binary(version: str) -> str:
    """The Thunderbird `version` binary, or skip the test when it is not installed."""
    binary = tb.thunderbird_binary(version)
    if binary is None:
        fetch = " (fetch it with tests/e2e/fetch-thunderbird-140.sh)" if version == "140" else ""
        pytest.skip(f"Thunderbird {version} is not installed{fetch}")
    return binary


@contextlib.contextmanager
def marionette_session(
    binary: str, profile: Path, base_env: dict[str, str]
) -> Iterator[Session]:
    """Thunderbird started on a prepared profile, Marionette attached in chrome context."""
    from marionette_driver.marionette import Marionette

    log = profile.parent / f"thunderbird-{profile.name}.log"
    proc = tb.start(binary, profile, base_env, log)
    client = None
    try:
        client = Marionette(host="127.0.0.1", port=proc.marionette_port())
        client.raise_for_port(timeout=90)
        client.start_session()
        client.set_context(client.CONTEXT_CHROME)
        yield Session(proc, client, profile)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.delete_session()
        proc.stop()


@contextlib.contextmanager
def launch(
    version: str,
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
    send_in_background: bool = True,
) -> Iterator[Session]:
    """A fresh profile with the add-on installed, Thunderbird started, Marionette attached."""
    binary = thunderbird_binary(version)
    profile = tmp_path_factory.mktemp("profile")
    prefs = tb.profile_prefs(smtp.port, SENDER, "Alice")
    prefs["mailnews.sendInBackground"] = send_in_background
    tb.write_profile(profile, prefs)
    # The user's host talks LDAP (StartTLS is skipped only for loopback, as PROTOCOL.md says).
    install_keypost(
        base_env, profile, directory.ldap_url, directory.ca_pem, "alice", send_in_background
    )
    with marionette_session(binary, profile, base_env) as session:
        yield session


@pytest.fixture(scope="module", params=["153", "140"])
def thunderbird(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
) -> Iterator[Session]:
    with launch(request.param, tmp_path_factory, base_env, smtp, directory) as session:
        yield session


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
if (arguments[3]) fields.bcc = arguments[3];
if (arguments[6]) fields.newsgroups = arguments[6];
if (arguments[4]) {
  const file = Cc["@mozilla.org/file/local;1"].createInstance(Ci.nsIFile);
  file.initWithPath(arguments[4]);
  const att = Cc["@mozilla.org/messengercompose/attachment;1"]
    .createInstance(Ci.nsIMsgAttachment);
  att.url = Services.io.newFileURI(file).spec;
  att.name = file.leafName;
  att.size = file.fileSize;
  fields.addAttachment(att);
}
params.type = Ci.nsIMsgCompType.New;
params.format = arguments[5] ? Ci.nsIMsgCompFormat.HTML : Ci.nsIMsgCompFormat.PlainText;
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


def open_compose(
    session: Session,
    to: str,
    subject: str,
    body: str,
    bcc: str = "",
    attach: Path | None = None,
    html: bool = False,
    newsgroups: str = "",
    addon: bool = True,
) -> str:
    """Open a compose window; returns its chrome window handle (Marionette is switched to it).
    It is ready once the add-on's button is there (`addon`) or else once it has loaded."""
    m = session.marionette
    m.switch_to_window(m.chrome_window_handles[0])
    before = set(m.chrome_window_handles)
    m.execute_script(
        OPEN_COMPOSE, script_args=[to, subject, body, bcc, str(attach or ""), html, newsgroups])
    handle = tb.wait_for(
        lambda: (set(m.chrome_window_handles) - before) or None, 60, "the compose window"
    )
    (new,) = handle
    m.switch_to_window(new)
    tb.wait_for(
        lambda: m.execute_script(
            "return document.readyState == 'complete' && gLoadingComplete"
            " && (!arguments[0] || !!document.getElementById(arguments[0]))",
            script_args=[tb.COMPOSE_BUTTON if addon else ""],
        ),
        60,
        "the add-on's compose button" if addon else "the compose window",
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


def _button(m: Any, attr: str) -> Any:
    return m.execute_script(
        "const b = document.getElementById(arguments[0]);"
        " return b && b.getAttribute(arguments[1]);",
        script_args=[tb.COMPOSE_BUTTON, attr],
    )


def _error_text(m: Any) -> str | None:
    """The add-on puts the reason a send was refused into its button's tooltip."""
    text = _button(m, "tooltiptext")
    return text if text and text.startswith("Not sent") else None


def turn_encrypt_on(session: Session, ready: bool) -> None:
    """Click the add-on's button; wait until the background lookup has answered."""
    m = session.marionette
    if _button(m, "badge") != "ON":  # while on, a click opens the popup instead
        m.find_element("id", tb.COMPOSE_BUTTON).click()
    tb.wait_for(lambda: _button(m, "badge") == "ON", 30, "badge ON")
    want = "keypost: encrypted for all" if ready else "cannot be encrypted for"
    tb.wait_for(
        lambda: want in (_button(m, "tooltiptext") or ""), 60, f"the recipient lookup ({want!r})"
    )


def click_send(session: Session) -> None:
    session.marionette.find_element("id", "button-send").click()


def encrypt_send_capture(session: Session, smtp: SmtpCapture) -> Captured:
    """Encrypt on, Send; the one message that reaches the SMTP server."""
    turn_encrypt_on(session, ready=True)
    before = len(smtp.snapshot())
    click_send(session)
    got = tb.wait_for(lambda: smtp.snapshot()[before:], 120, "the message at the SMTP server")
    time.sleep(1)  # a second message (there must be none) would arrive right behind it
    got = smtp.snapshot()[before:]
    assert len(got) == 1, [c.rcpt_tos for c in got]
    return got[0]


def sent_folder_text(profile: Path) -> str:
    """Everything in the profile's Sent mbox files (Thunderbird's own storage)."""
    return "".join(
        p.read_text("utf-8", errors="replace")
        for p in (profile / "Mail").rglob("Sent")
        if p.is_file()
    )


def _png(width: int) -> bytes:
    """A real one-row greyscale PNG (Thunderbird's editor loads the image it is given)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    row = b"\0" + bytes(i % 256 for i in range(width))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row))
            + chunk(b"IEND", b""))


def _decrypt(message: bytes, key_pem: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from keypost.core.smime import Decryptor

    key = load_pem_private_key(key_pem.read_bytes(), password=None)
    return Decryptor([key]).decrypt_message(message).message  # type: ignore[list-item]


def test_encrypt_and_send_to_external_and_served_recipient(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory
) -> None:
    m = thunderbird.marionette
    subject = "Quarterly figures e2e"
    body = "Hello Bob and Carol, the figures are attached in spirit."
    handle = open_compose(thunderbird, f"{EXTERNAL}, Bob <{SERVED}>", subject, body)
    tb.wait_for(lambda: _button(m, "badge") == "OFF", 20, "badge OFF on a new compose window")
    # The popup lists each recipient with the gateway that will receive it.
    turn_encrypt_on(thunderbird, ready=True)
    m.find_element("id", tb.COMPOSE_BUTTON).click()
    popup = tb.wait_for(
        lambda: (p := read_page(m, "popup", POPUP_READER)) and p["rows"] and p,
        30,
        "the popup's recipient list",
    )
    assert popup["encrypt"] is True
    assert sorted(popup["rows"]) == sorted(
        [
            [EXTERNAL, "via the gateway of example.com"],
            [SERVED, "via the gateway of example.com, example.org"],
        ]
    )
    m.execute_script("document.querySelector('panel[panelopen]')?.hidePopup()")
    captured = encrypt_send_capture(thunderbird, smtp)
    assert captured.mail_from == SENDER
    assert sorted(captured.rcpt_tos) == sorted([EXTERNAL, SERVED])
    msg = email.message_from_bytes(captured.data)
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert "enveloped-data" in msg.get("Content-Type", "")
    assert msg["Subject"] == subject
    assert msg["X-Identity-Key"] is None and msg["X-Account-Key"] is None
    assert body.encode() not in captured.data

    # The served domain's gateway and the sender's own gateway can both open it.
    for domain in ("example.org", "example.com"):
        clear = _decrypt(captured.data, directory.gateway_keys[domain])
        assert body.encode() in clear.replace(b"\r\n", b"\n"), domain

    # The compose window closed itself; the clear copy sits in Sent.
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")
    sent = tb.wait_for(lambda: sent_folder_text(thunderbird.profile), 60, "the Sent copy")
    assert subject in sent
    assert body in sent
    assert "X-Keypost-Encrypted: yes" in sent


def test_bcc_and_a_large_attachment(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory, tmp_path: Path
) -> None:
    """Bcc recipients get the mail without being named; an HTML message goes out with both
    bodies and its embedded image (the editor holds it as a data: URL) as a multipart/related
    part the HTML names by cid:; a 1.5 MB attachment makes the host's reply larger than
    Thunderbird's 1 MiB message limit, so it arrives in chunks."""
    m = thunderbird.marionette
    blob = os.urandom(1_500_000)
    attachment = tmp_path / "figures.bin"
    attachment.write_bytes(blob)
    bcc = "dave@example.org"
    image = _png(64)
    image_url = "data:image/png;base64," + base64.b64encode(image).decode()
    html = f'<p>see <b>attached</b></p><p><img src="{image_url}" alt="chart"></p>'
    handle = open_compose(thunderbird, SERVED, "with attachment", html, bcc, attachment, html=True)
    captured = encrypt_send_capture(thunderbird, smtp)
    assert sorted(captured.rcpt_tos) == sorted([SERVED, bcc])
    outer = email.message_from_bytes(captured.data)
    assert outer["Bcc"] is None
    assert outer.get_content_type() == "application/pkcs7-mime"
    clear = _decrypt(captured.data, directory.gateway_keys["example.org"])
    assert bcc.encode() not in clear, "the Bcc recipient must not be named inside"
    inner = email.message_from_bytes(clear)
    types = [p.get_content_type() for p in inner.walk()]
    assert "text/html" in types and "text/plain" in types, types  # HTML compose: both bodies
    html_part = next(p for p in inner.walk() if p.get_content_type() == "text/html")
    html_text = html_part.get_payload(decode=True).decode()
    assert "<b>attached</b>" in html_text
    assert "data:image" not in html_text
    related = next(p for p in inner.walk() if p.get_content_type() == "multipart/related")
    root, picture = related.get_payload()
    assert root is html_part
    assert picture.get_payload(decode=True) == image
    assert f'src="cid:{picture["Content-ID"].strip("<>")}"' in html_text
    parts = [p for p in inner.walk() if p.get_filename() == "figures.bin"]
    assert len(parts) == 1
    assert parts[0].get_payload(decode=True) == blob
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")


SET_COMPOSE_DETAILS = """
const [id, subject, details, done] = arguments;
const { ExtensionParent } = ChromeUtils.importESModule(
  "resource://gre/modules/ExtensionParent.sys.mjs");
const extension = ExtensionParent.GlobalManager.getExtension(id);
const background = () => [...extension.views].find((v) => v.viewType === "background");
(async () => {
  if (!background()) await extension.wakeupBackground?.(); // an idle event page may be gone
  const mm = background().xulBrowser.messageManager;
  const listener = (msg) => { mm.removeMessageListener("keypost:set", listener); done(msg.data); };
  mm.addMessageListener("keypost:set", listener);
  // The background page lives in the extension process: a frame script calls the add-on's
  // own compose API there, as the add-on would, on the compose tab with this subject.
  const script = `(async () => {
    const messenger = content.wrappedJSObject.messenger;
    const tabs = await messenger.tabs.query({ type: "messageCompose" });
    for (const tab of tabs) {
      const before = await messenger.compose.getComposeDetails(tab.id);
      if (before.subject !== ${JSON.stringify(subject)}) continue;
      await messenger.compose.setComposeDetails(
        tab.id, Cu.cloneInto(${JSON.stringify(details)}, content));
      const after = await messenger.compose.getComposeDetails(tab.id);
      return JSON.parse(JSON.stringify(after));
    }
    return "no compose tab with that subject";
  })().then((r) => sendAsyncMessage("keypost:set", r),
            (e) => sendAsyncMessage("keypost:set", "error: " + e))`;
  mm.loadFrameScript("data:," + encodeURIComponent(script), false);
})().catch((e) => done("error: " + e));
"""


def set_compose_details(m: Any, subject: str, details: dict[str, Any]) -> dict[str, Any]:
    """messenger.compose.setComposeDetails, called in the add-on's background page on the
    compose tab with `subject`; returns getComposeDetails afterwards."""
    after: Any = m.execute_async_script(
        SET_COMPOSE_DETAILS, script_args=[tb.ADDON_ID, subject, details], script_timeout=20000
    )
    assert isinstance(after, dict), after
    return after


def test_compose_choices_go_into_the_encrypted_message(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory
) -> None:
    """The compose window's Reply-To addresses, priority, return receipt and delivery format
    (set through the compose API, as Options in the compose window would) go with the
    encrypted message: in the clear outer headers, and a plain-text-only inner body for an
    HTML message with "Plain Text Only". A DSN request cannot be carried: said, not refused."""
    m = thunderbird.marionette
    subject = "compose choices e2e"
    html = "<p>with <b>bold</b> words</p>"
    reply_to = ["Desk <desk@example.com>", "team@example.org"]
    handle = open_compose(thunderbird, SERVED, subject, html, html=True)
    after = set_compose_details(
        m,
        subject,
        {
            "replyTo": reply_to,
            "priority": "highest",
            "returnReceipt": True,
            "deliveryFormat": "plaintext",
            "deliveryStatusNotification": True,
        },
    )
    assert after["priority"] == "highest" and after["deliveryFormat"] == "plaintext", after
    # Thunderbird also lists its own record of the priority ("X-Priority: Highest") among
    # customHeaders; the add-on leaves that one out, so the outer header is written once.
    m.switch_to_window(handle)
    turn_encrypt_on(thunderbird, ready=True)
    assert "Delivery Status Notification cannot be requested" in _button(m, "tooltiptext")
    captured = encrypt_send_capture(thunderbird, smtp)
    outer = email.message_from_bytes(captured.data)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_all("X-Priority") == ["1 (Highest)"]
    assert outer.get_all("Disposition-Notification-To") == [f"Alice <{SENDER}>"]
    assert outer.get_all("Reply-To") == [", ".join(reply_to)]
    clear = _decrypt(captured.data, directory.gateway_keys["example.org"])
    inner = email.message_from_bytes(clear)
    types = [p.get_content_type() for p in inner.walk()]
    assert types == ["text/plain"], types
    payload = inner.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    assert "bold" in text and "<b>" not in text, text
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")


# Bodies an HTML message may have, and the MIME types Thunderbird's own send writes for each
# in the "Automatic" send format (its convertibility rule: plain text only for a plain body).
AUTO_FORMAT_BODIES = {
    # Plain to Thunderbird: a div, and a link whose text is its own address.
    "plain": (
        '<div>Hello Bob,</div><p>the minutes: <a href="https://e.example/m">https://e.example/m</a></p>',
        ["text/plain"],
    ),
    # Not plain ("altering"): the editor's "Preformat" paragraph style.
    "preformatted": (
        "<pre>Q3   12.5\nQ4   13.1</pre>",
        ["multipart/alternative", "text/plain", "text/html"],
    ),
}


def _types(message: email.message.Message) -> list[str]:
    return [p.get_content_type() for p in message.walk()]


def _compose_auto(session: Session, subject: str, body: str) -> str:
    """An HTML compose window with `body` and the send format "Automatic"."""
    handle = open_compose(session, SERVED, subject, body, html=True)
    after = set_compose_details(session.marionette, subject, {"deliveryFormat": "auto"})
    assert after["deliveryFormat"] == "auto" and after["isPlainText"] is False, after
    session.marionette.switch_to_window(handle)
    return handle


def own_then_keypost(
    session: Session, smtp: SmtpCapture, directory: Directory, compose: Callable[[str], str]
) -> tuple[email.message.Message, email.message.Message]:
    """The same compose window content sent twice: by Thunderbird itself (Encrypt off), then
    by keypost. `compose(who)` opens the window; returns Thunderbird's message and the
    clear content of keypost's."""
    m = session.marionette
    handle = compose("Thunderbird")
    before = len(smtp.snapshot())
    click_send(session)
    own = tb.wait_for(lambda: smtp.snapshot()[before:], 120, "Thunderbird's own message")[0]
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")
    handle = compose("keypost")
    captured = encrypt_send_capture(session, smtp)
    clear = _decrypt(captured.data, directory.gateway_keys["example.org"])
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")
    return email.message_from_bytes(own.data), email.message_from_bytes(clear)


@pytest.mark.parametrize("case", sorted(AUTO_FORMAT_BODIES))
def test_automatic_send_format_is_thunderbirds_own(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory, case: str
) -> None:
    """With "Automatic", the encrypted message holds the bodies Thunderbird's own send would
    have written: first Thunderbird sends the body itself (Encrypt off), then keypost does."""
    body, types = AUTO_FORMAT_BODIES[case]
    own, inner = own_then_keypost(thunderbird, smtp, directory, lambda who: _compose_auto(
        thunderbird, f"auto format {case}, {who}", body))
    assert _types(own) == types
    assert _types(inner) == types


def _plain_text(message: email.message.Message) -> tuple[str | None, str]:
    """The text/plain part's format parameter and its text after transfer decoding, without
    the line ends at the very end (the compose API's plainTextBody has none)."""
    (part,) = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return part.get_param("format"), payload.decode("utf-8").rstrip("\r\n")


# A message written as plain text (long lines, a line to space-stuff, a signature) and an HTML
# one sent as both (a link whose text is its address inside a paragraph to wrap, a quote).
PLAIN_TEXT_BODIES = {
    "plain text": (
        False,
        "From the minutes: " + " ".join(["figures"] * 20) + "\n -- indented\n-- \nAlice",
    ),
    "html": (
        True,
        "<p>" + " ".join(["figures"] * 9) + ' <a href="https://e.example/minutes">'
        "https://e.example/minutes</a> " + " ".join(["words"] * 12) + "</p>"
        '<blockquote type="cite">' + " ".join(["quoted"] * 15) + "</blockquote>",
    ),
}


def _compose_plain_text_case(session: Session, case: str, who: str) -> str:
    html, body = PLAIN_TEXT_BODIES[case]
    subject = f"plain text part {case}, {who}"
    handle = open_compose(session, SERVED, subject, body, html=html)
    if html:
        set_compose_details(session.marionette, subject, {"deliveryFormat": "both"})
        session.marionette.switch_to_window(handle)
    return handle


@pytest.mark.parametrize("case", sorted(PLAIN_TEXT_BODIES))
def test_plain_text_part_is_thunderbirds_own(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory, case: str
) -> None:
    """The encrypted message's text/plain part is the one Thunderbird's own send writes for
    the same compose window: format=flowed, wrapped and stuffed alike, a self-link's address
    once (tests/data/thunderbird_plaintext.json has many more bodies, checked offline)."""
    own, inner = own_then_keypost(thunderbird, smtp, directory, lambda who: (
        _compose_plain_text_case(thunderbird, case, who)))
    assert _plain_text(own)[0] == "flowed"
    assert _plain_text(inner) == _plain_text(own)


CONVERTIBILITY = """
const names = {1: "plain", 2: "yes", 3: "altering", 4: "no"};
const compose = Cc["@mozilla.org/messengercompose/compose;1"].createInstance(Ci.nsIMsgCompose);
return arguments[0].map((html) => names[compose.nodeTreeConvertible(
  new DOMParser().parseFromString(html, "text/html").documentElement)]);
"""


def test_convertibility_vectors_are_thunderbirds_own(thunderbird: Session) -> None:
    """The recorded verdicts the add-on's rule is tested against (node --test) are what this
    Thunderbird's own rule says of each body, parsed as its editor would hold it."""
    data = Path(__file__).parents[1] / "data" / "thunderbird_convertibility.json"
    vectors = json.loads(data.read_text("utf-8"))["vectors"]
    m = thunderbird.marionette
    m.switch_to_window(m.chrome_window_handles[0])
    verdicts = m.execute_script(CONVERTIBILITY, script_args=[[html for html, _ in vectors]])
    assert [[html, v] for (html, _), v in zip(vectors, verdicts, strict=True)] == vectors


SEND_UNSENT = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const sendLater = Cc["@mozilla.org/messengercompose/sendlater;1"].getService(Ci.nsIMsgSendLater);
sendLater.sendUnsentMessages(MailServices.accounts.getIdentity("id1"));
"""


def outbox_text(profile: Path) -> str:
    return "".join(
        p.read_text("utf-8", errors="replace")
        for p in (profile / "Mail").rglob("Unsent Messages")
        if p.is_file()
    )


def test_without_background_sending_the_message_waits_in_the_outbox(
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
) -> None:
    """Installed without --send-in-background: the encrypted message waits in the Outbox
    until the user chooses "Send Unsent Messages" (done here through its XPCOM service)."""
    with launch("153", tmp_path_factory, base_env, smtp, directory, False) as session:
        m = session.marionette
        tb.wait_for(lambda: _addon_state(m), 60, "the add-on")
        subject = "queued for later"
        handle = open_compose(session, SERVED, subject, "waits")
        turn_encrypt_on(session, ready=True)
        before = len(smtp.snapshot())
        click_send(session)
        tb.wait_for(
            lambda: handle not in m.chrome_window_handles, 30, "the compose window to close"
        )
        queued = tb.wait_for(
            lambda: subject in (t := outbox_text(session.profile)) and t, 30, "the Outbox"
        )
        assert "application/pkcs7-mime" in queued
        assert "X-Identity-Key: id1" in queued and "X-Account-Key: account1" in queued
        time.sleep(5)
        assert smtp.snapshot()[before:] == [], "nothing leaves without background sending"
        m.switch_to_window(m.chrome_window_handles[0])
        m.execute_script(SEND_UNSENT)
        got = tb.wait_for(lambda: smtp.snapshot()[before:], 60, "the message after Send Unsent")
        assert [email.message_from_bytes(c.data)["Subject"] for c in got] == [subject]
        assert email.message_from_bytes(got[0].data).get_content_type() == "application/pkcs7-mime"


PAGE_READ = """
const [where, reader, click, fill, done] = arguments;
const browser = where === "popup"
  ? document.querySelector("browser.webextension-popup-browser")
  : document.getElementById("tabmail").currentTabInfo.browser;
const mm = browser.messageManager;
const listener = (msg) => { mm.removeMessageListener("keypost:page", listener); done(msg.data); };
mm.addMessageListener("keypost:page", listener);
// The add-on's pages live in the extension process: a frame script reads the page there.
const script = `(() => {
  const d = content.document;
  const click = ${JSON.stringify(click)};
  const fill = ${JSON.stringify(fill)};
  for (const [id, value] of Object.entries(fill)) {
    d.getElementById(id).value = value;
    d.getElementById(id).dispatchEvent(new content.Event("input")); // as typing would
  }
  if (click) d.getElementById(click).click();
  sendAsyncMessage("keypost:page", (${reader})(d));
})()`;
mm.loadFrameScript("data:," + encodeURIComponent(script), false);
"""

CHOOSE_FILE = """
const [id, name, text, done] = arguments;
const mm = document.getElementById("tabmail").currentTabInfo.browser.messageManager;
const listener = () => { mm.removeMessageListener("keypost:chosen", listener); done(true); };
mm.addMessageListener("keypost:chosen", listener);
// What picking a file in the dialog does: the input holds the file, then "change".
const script = `(() => {
  const input = content.document.getElementById(${JSON.stringify(id)});
  input.mozSetFileArray([new content.File([${JSON.stringify(text)}], ${JSON.stringify(name)})]);
  input.dispatchEvent(new content.Event("change"));
  sendAsyncMessage("keypost:chosen");
})()`;
mm.loadFrameScript("data:," + encodeURIComponent(script), false);
"""

OPTIONS_READER = """(d) => ({
  fingerprint: d.getElementById("fingerprint").textContent,
  new_fingerprint: d.getElementById("newFingerprint").textContent,
  verdict: d.getElementById("verdict").textContent,
  save_disabled: d.getElementById("save").disabled,
  directory: d.getElementById("directory").value,
  managed: !d.getElementById("managed").hidden,
  result: d.getElementById("result").textContent,
})"""

POPUP_READER = """(d) => ({
  encrypt: d.getElementById("encrypt").checked,
  rows: Array.from(d.querySelectorAll("#recipients tr")).map(
    (tr) => Array.from(tr.cells).map((c) => c.firstChild ? c.firstChild.textContent : "")),
})"""


def read_page(
    m: Any, where: str, reader: str, click: str | None = None, fill: dict[str, str] | None = None
) -> dict[str, Any]:
    """Read (optionally fill and click in) an add-on page: the options tab or the popup."""
    state: dict[str, Any] = m.execute_async_script(
        PAGE_READ, script_args=[where, reader, click, fill or {}], script_timeout=10000
    )
    return state


def _options_state(
    m: Any, click: str | None = None, fill: dict[str, str] | None = None
) -> dict[str, Any]:
    return read_page(m, "tab", OPTIONS_READER, click, fill)


def test_options_page_shows_the_host_and_tests_the_connection(
    thunderbird: Session, directory: Directory, base_env: dict[str, str]
) -> None:
    # An administrator's preset (managed storage) for the directory URL.
    _run(
        [
            *KEYPOST,
            "install",
            "thunderbird",
            "--profile",
            str(thunderbird.profile),
            "--send-in-background",
            "--auto-enable",
            "--managed",
            "--offline",
            "--directory",
            directory.ldap_url,
            "--username",  # the keyring keeps alice's password: no --password-stdin needed
            "alice",
            "--trust-anchor",
            str(directory.ca_pem),
        ],
        base_env,
    )
    expected_fp = (
        subprocess.run(
            ["openssl", "x509", "-in", str(directory.ca_pem), "-noout", "-fingerprint", "-sha256"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("=", 1)[1]
    )
    m = thunderbird.marionette
    m.switch_to_window(m.chrome_window_handles[0])
    url = m.execute_script(
        "return WebExtensionPolicy.getByID(arguments[0]).getURL('options/options.html')",
        script_args=[tb.ADDON_ID],
    )
    m.execute_script(
        "document.getElementById('tabmail').openTab('contentTab', {url: arguments[0]});",
        script_args=[url],
    )
    try:
        state = tb.wait_for(
            lambda: (s := _options_state(m)) and s["fingerprint"] not in ("", "-") and s,
            60,
            "the options page to show the host's status",
        )
        assert state["fingerprint"] == expected_fp
        assert state["directory"] == directory.ldap_url
        assert state["managed"] is True, "the managed storage preset is shown"
        _options_state(m, click="test")
        result = tb.wait_for(
            lambda: "Connected" in (r := _options_state(m)["result"]) and r,
            60,
            "the connection test",
        )
        assert directory.ldap_url in result
        # Saving hands the password to the host, which tests it before keeping anything.
        _options_state(m, click="save", fill={"password": "wrong-Pa55word"})
        refused = tb.wait_for(
            lambda: "refused" in (r := _options_state(m)["result"]) and r, 60, "the refusal"
        )
        assert "wrong-Pa55word" not in refused
        # A trust anchor picked here is fingerprinted by the page (WebCrypto) and must be
        # confirmed before Save sends it: a pasted fingerprint that differs keeps Save off.
        m.execute_async_script(
            CHOOSE_FILE, script_args=["anchor", "ca.pem", directory.ca_pem.read_text("ascii")]
        )
        state = tb.wait_for(
            lambda: (s := _options_state(m))["new_fingerprint"] not in ("", "-") and s,
            30,
            "the chosen certificate's fingerprint",
        )
        assert state["new_fingerprint"] == expected_fp
        assert state["save_disabled"] is True, state
        state = _options_state(m, fill={"expected": "00" * 32})
        assert state["save_disabled"] is True and "differ" in state["verdict"], state
        state = _options_state(m, fill={"expected": expected_fp.replace(":", " ").lower()})
        assert state["save_disabled"] is False and "match" in state["verdict"], state
        _options_state(m, click="save", fill={"password": "alice-secret"})
        tb.wait_for(lambda: "Saved" in _options_state(m)["result"], 60, "the saved settings")
        # The add-on keeps no copy: the password is in no file of the profile.
        for path in thunderbird.profile.rglob("*"):
            if path.is_file():
                assert b"alice-secret" not in path.read_bytes(), path
    finally:
        m.execute_script(
            "const t = document.getElementById('tabmail'); t.closeTab(t.currentTabInfo);"
        )


def send_is_refused(session: Session, smtp: SmtpCapture, handle: str, naming: str) -> None:
    """Send: the add-on answers with cancel and says why (naming `naming`); given time to
    misbehave, nothing reaches the SMTP server and the compose window stays open."""
    m = session.marionette
    before = len(smtp.snapshot())
    click_send(session)
    tb.wait_for(lambda: naming in (_error_text(m) or ""), 60, "the add-on's refusal")
    time.sleep(5)
    assert smtp.snapshot()[before:] == []
    assert handle in m.chrome_window_handles, "the compose window must stay open"


POPUP_NOTICES = """(d) => ({
  notices: Array.from(d.querySelectorAll("#notices li")).map((li) => li.textContent),
})"""


def notices_before_send(m: Any, naming: str) -> list[str]:
    """Turn Encrypt on; the button's tooltip names `naming`; the popup's notices (the popup
    is closed again before returning)."""
    m.find_element("id", tb.COMPOSE_BUTTON).click()
    tb.wait_for(lambda: naming in (_button(m, "tooltiptext") or ""), 60, "the notice (tooltip)")
    m.find_element("id", tb.COMPOSE_BUTTON).click()
    popup = tb.wait_for(
        lambda: (p := read_page(m, "popup", POPUP_NOTICES)) and p["notices"] and p,
        30,
        "the popup's notice",
    )
    m.execute_script("document.querySelector('panel[panelopen]')?.hidePopup()")
    notices: list[str] = popup["notices"]
    return notices


def test_remote_image_to_attach_is_named_before_send_and_refused(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory
) -> None:
    """An image on the web marked "Attach this image to the message" (moz-do-not-send=
    "false"): Thunderbird's own send would fetch and embed it, keypost cannot (no web host
    permission), and a link would let its server see the mail being read. The popup and
    the button's tooltip name it before Send; Send is refused and nothing leaves."""
    m = thunderbird.marionette
    url = "http://127.0.0.1:9/keypost-e2e-logo.png"  # the discard port: nothing answers
    html = f'<p>our logo:</p><p><img src="{url}" moz-do-not-send="false" alt="logo"></p>'
    handle = open_compose(thunderbird, SERVED, "remote image", html, html=True)
    notices = notices_before_send(m, url)
    assert len(notices) == 1 and url in notices[0], notices
    assert "Attach this image to the message" in notices[0]
    send_is_refused(thunderbird, smtp, handle, url)


def test_newsgroups_are_named_before_send_and_refused(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory
) -> None:
    """A message to a mail recipient and a newsgroup with Encrypt on: the popup and the
    tooltip say newsgroups cannot be encrypted before Send; Send is refused, nothing leaves."""
    m = thunderbird.marionette
    group = "comp.mail.misc"
    handle = open_compose(thunderbird, SERVED, "to a group", "hello", newsgroups=group)
    assert notices_before_send(m, group) == [
        f"Newsgroups cannot be encrypted; remove them or turn Encrypt off ({group})."]
    send_is_refused(thunderbird, smtp, handle, group)


def test_recipient_without_container_blocks_sending(
    thunderbird: Session, smtp: SmtpCapture, directory: Directory, base_env: dict[str, str]
) -> None:
    # Without a directory account the host asks anonymously: the external recipient then has
    # no container at all (only served domains get gateway containers).
    # (over HTTP this time, so both of the directory's protocols are used end to end)
    install_keypost(base_env, thunderbird.profile, directory.http_url, directory.ca_pem, None)
    for pid in tb.descendants(thunderbird.tb.proc.pid):
        if "keypost.host" in tb.cmdline(pid):
            os.kill(pid, 15)  # the add-on reconnects: a new host reads the new configuration
    m = thunderbird.marionette
    subject = "must not leave"
    handle = open_compose(thunderbird, SERVED, subject, "secret")
    turn_encrypt_on(thunderbird, ready=True)
    # A recipient typed in after Encrypt was turned on is looked up in the background.
    field = m.find_element("id", "toAddrInput")
    field.send_keys(EXTERNAL + ",")
    tb.wait_for(
        lambda: "cannot be encrypted for" in (_button(m, "tooltiptext") or ""),
        60,
        "the background lookup of the typed recipient",
    )
    send_is_refused(thunderbird, smtp, handle, EXTERNAL)
    m.switch_to_window(handle)
    assert _button(m, "badge") == "ON"
    assert subject not in sent_folder_text(thunderbird.profile)


# ---- Thunderbird's own LDAP certificate fetch (no add-on) ------------------------------------

ADD_LDAP_BOOK = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
// What File > New > LDAP Directory does, then Composition > Addressing > Directory Server.
const pref = MailServices.ab.newAddressBook(
  arguments[0], arguments[1], Ci.nsIAbManager.LDAP_DIRECTORY_TYPE);
Services.prefs.setBoolPref("ldap_2.autoComplete.useDirectory", true);
Services.prefs.setCharPref("ldap_2.autoComplete.directoryServer", pref);
return pref;
"""

# Certificate Manager > Authorities > Import, "trust this CA to identify email users".
TRUST_CA = """
Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB)
  .addCertFromBase64(arguments[0], ",C,");
"""

# How the compose window decides it can encrypt to a recipient (MsgComposeCommands.js's
# checkRecipientCerts): a certificate NSS finds for the address and verifies for e-mail.
VALID_CERT_FOR = """
const [address, done] = arguments;
Cc["@mozilla.org/messengercompose/composesecure;1"].createInstance(Ci.nsIMsgComposeSecure)
  .asyncFindCertByEmailAddr(address, {
    QueryInterface: ChromeUtils.generateQI(["nsIDoneFindCertForEmailCallback"]),
    findCertDone(email, cert) { done(cert ? cert.getBase64DERString() : null); },
  });
"""

# What MsgComposeCommands.js's onSendSMIME does for recipients without a certificate: pick
# the identity's directory or the global one, then open certFetchingStatus.xhtml with it
# and the addresses. It opens the dialog modal; here it is not, so that Marionette can wait
# for the window to close (the dialog closes itself when the search is done).
FETCH_CERTS = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const identity = MailServices.accounts.getIdentity("id1");
let directory = null;
if (identity.overrideGlobalPref) {
  directory = identity.directoryServer;
} else if (Services.prefs.getBoolPref("ldap_2.autoComplete.useDirectory")) {
  directory = Services.prefs.getCharPref("ldap_2.autoComplete.directoryServer");
}
if (!directory) return "no directory";
window.keypostFetch = window.openDialog(
  "chrome://messenger-smime/content/certFetchingStatus.xhtml", "",
  "chrome,resizable,centerscreen", directory, arguments[0]);
return directory;
"""

CERTS_FOR = """
const certdb = Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB);
const addresses = (c) => (c.getEmailAddresses ? c.getEmailAddresses() : [c.emailAddress]);
return certdb.getCerts().filter((c) => addresses(c).includes(arguments[0])).map(
  (c) => ({der: c.getBase64DERString(), issuer: c.issuerName, email: c.emailAddress}));
"""


def _containers_over_http(directory: Directory, address: str) -> list[bytes]:
    """The DER of every encryption container the HTTP API gives an anonymous caller."""
    import urllib.parse
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    query = urllib.parse.urlencode({"address": address, "purpose": "encrypt"})
    with urllib.request.urlopen(f"{directory.http_url}/v1/containers?{query}", timeout=30) as r:
        body = json.load(r)
    (result,) = body["results"]
    return [
        x509.load_pem_x509_certificate(c["pem"].encode()).public_bytes(Encoding.DER)
        for c in result["containers"]
    ]


def _fetch(m: Any, addresses: list[str]) -> None:
    """Thunderbird's own fetch for `addresses`, waited for until its dialog has closed."""
    m.switch_to_window(m.chrome_window_handles[0])
    assert m.execute_script(FETCH_CERTS, script_args=[addresses]) != "no directory"
    tb.wait_for(
        lambda: m.execute_script("return window.keypostFetch.closed"),
        60,
        "Thunderbird's certificate fetch to finish",
    )


@pytest.mark.parametrize("version", ["153", "140"])
def test_thunderbirds_own_ldap_certificate_fetch(
    version: str,
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
) -> None:
    """A Thunderbird without keypost, its LDAP directory set to `keypost directory serve`
    (anonymous bind), fetches recipients' certificates the way it does before an S/MIME
    send (certFetchingStatus.xhtml, its filter and `usercertificate;binary`): what lands in
    its NSS certificate database is exactly what the directory's HTTP API gives anonymous
    callers for the same addresses, issued by the directory CA; once the user trusts that
    CA, the compose window's own check finds them valid to encrypt to."""
    from cryptography import x509

    binary = thunderbird_binary(version)
    profile = tmp_path_factory.mktemp("plain-profile")
    tb.write_profile(profile, tb.profile_prefs(smtp.port, SENDER, "Alice"))
    with marionette_session(binary, profile, base_env) as session:
        m = session.marionette
        m.switch_to_window(m.chrome_window_handles[0])
        uri = f"{directory.ldap_url}??sub?(objectclass=*)"  # ldap://127.0.0.1:P/dc=keypost
        ca = x509.load_pem_x509_certificate(directory.ca_pem.read_bytes())
        m.execute_script(ADD_LDAP_BOOK, script_args=["keypost", uri])
        fetched = [SERVED, "dave@example.org"]
        _fetch(m, fetched)
        for address in fetched:
            got = m.execute_script(CERTS_FOR, script_args=[address])
            expected = _containers_over_http(directory, address)
            assert expected, address
            assert sorted(base64.b64decode(c["der"]) for c in got) == sorted(expected), address
            for c in got:
                assert c["email"] == address
                assert c["issuer"] == ca.subject.rfc4514_string(), c["issuer"]
        # Imported, but not usable to encrypt until the user trusts the directory CA.
        assert m.execute_async_script(VALID_CERT_FOR, script_args=[SERVED]) is None
        ca_der = ca.public_bytes(serialization.Encoding.DER)
        m.execute_script(TRUST_CA, script_args=[base64.b64encode(ca_der).decode()])
        for address in fetched:
            valid = m.execute_async_script(VALID_CERT_FOR, script_args=[address])
            assert valid is not None, address
            assert [base64.b64decode(valid)] == _containers_over_http(directory, address)
        # Not asked for, not fetched.
        other = "erin@example.org"
        assert m.execute_script(CERTS_FOR, script_args=[other]) == []
        # A directory whose URL names a filter: Thunderbird sends
        # (&(objectClass=inetOrgPerson)(mail=erin@example.org)).
        people = uri.replace("(objectclass=*)", "(objectClass=inetOrgPerson)")
        m.execute_script(ADD_LDAP_BOOK, script_args=["keypost people", people])
        _fetch(m, [other])
        valid = m.execute_async_script(VALID_CERT_FOR, script_args=[other])
        assert valid is not None
        assert [base64.b64decode(valid)] == _containers_over_http(directory, other)


def _nss_profile(binary: str, profile: Path, work: Path, trusted: list[Path], p12: Path) -> None:
    """The profile's NSS database made before Thunderbird starts, with NSS's own tools on
    that Thunderbird's libraries: CAs trusted for e-mail, the user's key and certificate."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(binary).resolve().parent)}
    db = f"sql:{profile}"
    commands = [["certutil", "-N", "-d", db, "--empty-password"]]
    commands += [
        ["certutil", "-A", "-d", db, "-n", ca.stem, "-t", ",C,", "-a", "-i", str(ca)]
        for ca in trusted
    ]
    commands.append(["pk12util", "-i", str(p12), "-d", db, "-W", "pw", "-K", ""])
    for argv in commands:
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, (argv, done.stderr.decode(errors="replace"))


USE_OWN_CERT = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
// Account Settings > End-To-End Encryption > S/MIME: the user's own certificate.
const cert = Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB)
  .getCerts().find((c) => c.emailAddress === arguments[0]);
if (!cert) return null;
const identity = MailServices.accounts.getIdentity("id1");
identity.setUnicharAttribute("encryption_cert_name", cert.displayName);
identity.setCharAttribute("encryption_cert_dbkey", cert.dbKey);
return cert.displayName;
"""


@pytest.mark.parametrize("version", ["153", "140"])
def test_thunderbird_without_keypost_encrypts_to_a_container_it_fetched(
    version: str,
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
    smtp: SmtpCapture,
    directory: Directory,
) -> None:
    """The whole standard-client path: a Thunderbird without keypost, with its own S/MIME
    certificate and encryption turned on automatically when possible (mail.e2ee.auto_enable),
    composes to a served address it has no certificate for; its compose window fetches the
    container from `keypost directory serve` over LDAP by itself, turns encryption on, and
    Send encrypts with Thunderbird's own S/MIME to it: the recipient domain's gateway key
    opens the message."""
    import pki_util
    from cryptography.hazmat.primitives.serialization import pkcs12

    binary = thunderbird_binary(version)
    profile = tmp_path_factory.mktemp("smime-profile")
    work = tmp_path_factory.mktemp("smime-keys")
    user_ca = pki_util.make_ca("Alice's CA")
    key, cert = pki_util.email_cert(user_ca, SENDER)
    (work / "user-ca.pem").write_bytes(user_ca[1].public_bytes(serialization.Encoding.PEM))
    p12 = work / "alice.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"alice", key, cert, None, serialization.BestAvailableEncryption(b"pw")
        )
    )
    _nss_profile(binary, profile, work, [work / "user-ca.pem", directory.ca_pem], p12)
    prefs = tb.profile_prefs(smtp.port, SENDER, "Alice")
    prefs["mail.e2ee.auto_enable"] = True
    tb.write_profile(profile, prefs)
    with marionette_session(binary, profile, base_env) as session:
        m = session.marionette
        m.switch_to_window(m.chrome_window_handles[0])
        assert m.execute_script(USE_OWN_CERT, script_args=[SENDER]) is not None
        m.execute_script(ADD_LDAP_BOOK, script_args=["keypost", f"{directory.ldap_url}??sub"])
        assert m.execute_script(CERTS_FOR, script_args=[SERVED]) == []
        subject = "encrypted by Thunderbird itself"
        body = "Hello Bob, Thunderbird found your certificate in the keypost directory."
        open_compose(session, SERVED, subject, body, addon=False)
        tb.wait_for(
            lambda: m.execute_script("return gSendEncrypted"),
            60,
            "the compose window to fetch the certificate and turn encryption on",
        )
        assert len(m.execute_script(CERTS_FOR, script_args=[SERVED])) == 1
        sent = len(smtp.snapshot())
        m.find_element("id", "button-send").click()
        got = tb.wait_for(lambda: smtp.snapshot()[sent:], 120, "the message at the SMTP server")
        (captured,) = got
        assert captured.rcpt_tos == [SERVED]
        outer = email.message_from_bytes(captured.data)
        assert outer.get_content_type() == "application/pkcs7-mime"
        assert body.encode() not in captured.data
        clear = _decrypt(captured.data, directory.gateway_keys["example.org"])
        assert body.encode() in clear.replace(b"\r\n", b"\n")
