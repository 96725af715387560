"""Records what Thunderbird itself sends as text/plain: tests/data/thunderbird_plaintext.json.

Not collected by default (the name does not start with test_); run it on purpose, with the
Thunderbirds that tests/e2e drives (153 installed, 140 ESR from fetch-thunderbird-140.sh):

    .venv/bin/pytest -q -p no:cacheprovider tests/e2e/record_plaintext.py

(RECORD_VERSIONS=153 records one version only; the unit test wants both.)

For every body below, in a fresh compose window of each Thunderbird (default prefs:
`mailnews.wraplength` 72, `mailnews.send_plaintext_flowed` true), with the keypost add-on
installed but Encrypt off:
- the body goes into the editor the way a user puts it there: in a plain-text window typed
  line by line (the editor's insertText and insertLineBreak, as keys and Enter do), or as
  quoted text (the editor's insertTextWithQuotations, which is what
  `compose.setComposeDetails({plainTextBody})` calls and how a reply's quote goes in: lines
  starting with '>' become quotations); in an HTML window as the document given to the
  compose window; for "identity signature" the identity has a plain-text signature, which
  Thunderbird puts into the new window itself, and the body goes above it;
- `compose.getComposeDetails` is read in the add-on's background page: `body` and
  `plainTextBody` are exactly what the add-on hands the host (extension/modules/controller.js);
- Thunderbird's own Send (send format "both" for HTML, so the plain text is the alternative
  part) goes to a local SMTP capture; its text/plain part is stored with its Content-Type,
  Content-Transfer-Encoding and body after transfer decoding (CRLF line ends as sent).
A vector names the versions it was recorded from; versions that agree share one vector.
tests/host/test_plaintext_thunderbird.py builds the host's message from the same compose
details and compares; tests/e2e/test_thunderbird.py checks a few against the live Thunderbird.
"""

# The fixtures imported from test_thunderbird are taken by name as arguments (F811).
# ruff: noqa: F811

from __future__ import annotations

import email
import json
import os
from pathlib import Path
from typing import Any

import pytest
import tbharness as tb
from test_thunderbird import (  # noqa: F401  (the fixtures are used by name)
    SERVED,
    Directory,
    Session,
    SmtpCapture,
    base_env,
    click_send,
    directory,
    launch,
    open_compose,
    set_compose_details,
    smtp,
)

DATA = Path(__file__).parents[1] / "data" / "thunderbird_plaintext.json"
LONG = " ".join(["word"] * 40)
URL = "https://docs.example.org/archive/2026/minutes/quarterly-review-of-the-figures-and-plans.html"
CJK = ("日本語の文章は単語の間に空白を入れないので、"
       "行の折り返しは文字の間で行われることが多いです。") * 2
EMOJI = " ".join(["🙂🙂🙂"] * 25)

# (name, how the body gets into the editor, body). Plain bodies are typed or quoted; HTML
# bodies are documents.
PLAIN: list[tuple[str, str]] = [
    ("long line", LONG),
    ("lengths 71 72 73", "\n".join(("x" * (n - 5) + " yyyy") for n in (71, 72, 73, 74))),
    ("long word", "start " + "z" * 100 + " end of the line after a very long word here"),
    ("long url", f"See {URL} for details, and more words after it to wrap around."),
    ("line starts", " leading space\n>not a quote\nFrom here on\nFrom\nfrom lower\n  two"),
    ("trailing spaces", "trailing   \nnext line\ttab  \n\nafter an empty line   "),
    ("multiple spaces", "a    b     c" + " word" * 14 + "      spaces at the wrap"),
    ("signature", "Regards,\nAlice\n-- \nAlice Example\n" + "Signature " + LONG),
    ("quote marks", "> quoted " + LONG + "\n>> deeper\n>no space\nreply"),
    ("quote trailing", "> quoted with trailing spaces   \n>\n> next\nreply   "),
    ("cjk", CJK),
    ("cjk mixed", "Mixed 日本語 text " + CJK[:40] + " and English words to wrap " + LONG[:40]),
    ("emoji", EMOJI),
    # Columns: U+2764 and U+1D400 are narrow, U+0301 has none, halfwidth katakana are narrow.
    ("widths", "\n".join(" ".join([group] * 25) for group in
                         ("\u2764" * 3, "\U0001d400" * 3, "e\u0301" * 3, "\uff71" * 3))),
    ("empty lines", "\n\nfirst\n\n\nsecond\n\n"),
    ("non-breaking", "a\u00a0b\u00a0\u00a0c " + "nbsp\u00a0word " * 10),
]
HTML: list[tuple[str, str]] = [
    ("long paragraph", f"<p>{LONG}</p><p>second</p>"),
    ("link same", '<p>see <a href="https://e.example/m">https://e.example/m</a> now</p>'),
    ("link other", '<p>see <a href="https://e.example/m">the minutes</a> now</p>'),
    ("link same long", f'<p>{LONG[:60]} <a href="{URL}">{URL}</a> {LONG[:80]}</p>'),
    ("link same slash", '<p><a href="https://e.example/">https://e.example</a> and'
     ' <a href="mailto:bob@example.org">bob@example.org</a></p>'),
    ("link same in long", f"<p>{LONG} <a href=\"https://e.example/m\">https://e.example/m</a>"
     f" {LONG}</p>"),
    ("link same quoted", f'<blockquote type="cite">{LONG[:70]} <a href="https://e.example/q">'
     f"https://e.example/q</a> {LONG}</blockquote><p>reply</p>"),
    ("link same list", f'<ul><li>{LONG[:66]} <a href="https://e.example/l">https://e.example/l'
     f"</a> {LONG[:50]}</li></ul>"),
    # Thunderbird compares the link's innerHTML with its DOM href (resolved, normalised).
    ("link same case", '<p>see <a href="HTTPS://E.example/m">HTTPS://E.example/m</a> and'
     ' <a href="https://E.example/m">https://E.example/m</a></p>'),
    ("link same amp", '<p><a href="https://e.example/?a=1&amp;b=2">https://e.example/?a=1&amp;b=2'
     '</a> <a href="https://e.example/?c">https://e.example/?c</a></p>'),
    ("link same idn", '<p><a href="https://bücher.example/">https://bücher.example/</a></p>'),
    ("link marked", '<p><a class="moz-txt-link-freetext" href="https://e.example/f">'
     'https://e.example/f</a> <a class="moz-txt-link-abbreviated" href="mailto:b@e.example">'
     "b@e.example</a></p>"),
    ("link same pre", f'<pre>{LONG} <a href="https://e.example/p">https://e.example/p</a>'
     " end</pre>"),
    ("blockquote", f'<blockquote type="cite"><p>{LONG}</p></blockquote><p>{LONG}</p>'),
    ("list", f"<ul><li>{LONG}</li><li>two</li></ul><ol><li>{LONG}</li></ol>"),
    ("pre", f"<pre>{LONG}\n  indented\n</pre>"),
    ("signature", '<p>Regards</p><div class="moz-signature">-- <br>Alice<br>'
     f"{LONG}</div>"),
    ("line starts", "<p>From here on</p><p>&gt;not a quote</p><p>&nbsp;leading</p>"),
    ("cjk", f"<p>{CJK}</p><p>{EMOJI}</p>"),
    ("nbsp", "<p>a&nbsp;&nbsp; b " + "nbsp&nbsp;word " * 10 + "</p>"),
]

ABOUT = (
    "The text/plain part Thunderbird's own Send writes (default prefs: format=flowed, wrap 72) "
    "for bodies put into a compose window: 'typed' and 'quoted' in a plain-text window "
    "(quoted: lines starting with '>' are quotations, as in a reply), 'html' in an HTML window "
    "sent as both. 'details' is what compose.getComposeDetails gave the add-on, 'sent' the "
    "part's Content-Type, Content-Transfer-Encoding and text after transfer decoding; "
    "'versions' the Thunderbirds that gave exactly this. Produced by "
    "tests/e2e/record_plaintext.py (its docstring says how); "
    "tests/host/test_plaintext_thunderbird.py checks the host against it."
)

INSERT = """
const [text, quoted, keep] = arguments;
const editor = GetCurrentEditor();
if (keep) {
  editor.beginningOfDocument(); // typed above what is there (the identity's signature)
} else {
  editor.selectAll();
  editor.deleteSelection(editor.eNone, editor.eStrip);
}
if (quoted) {
  editor.QueryInterface(Ci.nsIEditorMailSupport).insertTextWithQuotations(text);
} else {
  text.split("\\n").forEach((line, i) => {
    if (i) editor.insertLineBreak();
    if (line) editor.insertText(line);
  });
}
return true;
"""


# The identity's own signature, which Thunderbird inserts below "-- " in a new message.
SIGNED = "identity signature"
SIGNATURE_TEXT = "Alice Example\n" + " ".join(["Signature"] * 12) + "   \nFrom the desk"
SIGNATURE = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const identity = MailServices.accounts.getIdentity("id1");
identity.htmlSigFormat = false;
identity.htmlSigText = arguments[0];
"""


def _plain_part(data: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(data)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return {"content_type": part["Content-Type"],
                    "transfer_encoding": part.get("Content-Transfer-Encoding", ""),
                    "text": payload.decode("utf-8")}
    raise AssertionError("no text/plain part")


def _record_one(session: Session, smtp: SmtpCapture, name: str, how: str,
                body: str) -> dict[str, Any]:
    m = session.marionette
    subject = f"plaintext record: {name} ({how})"
    html = how == "html"
    signed = name == SIGNED
    if signed:
        m.switch_to_window(m.chrome_window_handles[0])
        m.execute_script(SIGNATURE, script_args=[SIGNATURE_TEXT])
    try:
        handle = open_compose(session, SERVED, subject, body if html else "", html=html)
    finally:
        if signed:
            m.execute_script(SIGNATURE, script_args=[""])
    if how in ("typed", "quoted"):
        # Straight in the compose window: not through a frame script's data: URL, which
        # would read non-ASCII text as Latin-1.
        m.execute_script(INSERT, script_args=[body, how == "quoted", signed])
        details = set_compose_details(m, subject, {})
    else:
        details = set_compose_details(m, subject, {"deliveryFormat": "both"})
    m.switch_to_window(handle)
    before = len(smtp.snapshot())
    click_send(session)
    own = tb.wait_for(lambda: smtp.snapshot()[before:], 120, "Thunderbird's message")[0]
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")
    return {
        "name": name,
        "how": how,
        "details": {"isPlainText": details["isPlainText"], "body": details["body"],
                    "plainTextBody": details["plainTextBody"]},
        "sent": _plain_part(own.data),
    }


def _merge(by_version: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One vector per case and distinct recording, naming the versions that gave it."""
    merged: list[dict[str, Any]] = []
    for version, vectors in by_version.items():
        for vector in vectors:
            same = next((v for v in merged if {**v, "versions": None}
                         == {**vector, "versions": None}), None)
            if same is not None:
                same["versions"].append(version)
            else:
                merged.append({**vector, "versions": [version]})
    return merged


@pytest.mark.timeout(1800)
def test_record(tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str],
                smtp: SmtpCapture, directory: Directory) -> None:
    by_version: dict[str, list[dict[str, Any]]] = {}
    versions: dict[str, str] = {}
    for version in os.environ.get("RECORD_VERSIONS", "153,140").split(","):
        with launch(version, tmp_path_factory, base_env, smtp, directory) as session:
            m = session.marionette
            versions[version] = m.session_capabilities["browserVersion"]
            cases = [(n, h, b) for n, b in PLAIN for h in ("typed", "quoted")]
            cases += [(n, "html", b) for n, b in HTML]
            cases += [(SIGNED, "typed", "Hello,\n" + LONG)]
            cases += [(SIGNED, "html", f"<p>Hello,</p><p>{LONG}</p>")]
            by_version[version] = [_record_one(session, smtp, *case) for case in cases]
    DATA.write_text(json.dumps({
        "about": ABOUT,
        "thunderbird": versions,
        "vectors": _merge(by_version),
    }, indent=1, ensure_ascii=False) + "\n", "utf-8")
