"""`keypost setup` in the terminal: questions, fingerprint confirmation, GUI detection."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pki_util import make_ca

from keypost.core.containers import to_pem
from keypost.installer.setup_wizard import (
    WindowApi,
    anchor_fingerprint,
    ask_terminal,
    gui_available,
    has_module,
)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    return to_pem(make_ca("setup test CA")[1]).decode()


def test_fingerprint_matches_openssl(ca_pem: str, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(ca_pem, "utf-8")
    out = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "ca.pem"), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fp, subject = anchor_fingerprint(ca_pem)
    assert out.strip().split("=", 1)[1] == fp
    assert subject == "CN=setup test CA"


def _answers(*values: str) -> Iterator[str]:
    yield from values


def test_terminal_questions_and_confirmation(ca_pem: str) -> None:
    said: list[str] = []
    it = _answers("ldaps://d.example", "alice", "/ca.pem", "ja")
    answers = ask_terminal(
        ask=lambda _q: next(it),
        ask_secret=lambda _q: "pw",
        read_file=lambda _p: ca_pem,
        say=said.append,
    )
    assert answers is not None
    assert (answers.directory, answers.username, answers.password) == (
        "ldaps://d.example",
        "alice",
        "pw",
    )
    assert answers.fingerprint == anchor_fingerprint(ca_pem)[0]
    assert any(answers.fingerprint in s for s in said)


def test_terminal_refusal_saves_nothing_and_anonymous_gets_no_password(ca_pem: str) -> None:
    it = _answers("ldap://d.example", "", "/ca.pem", "n")
    secrets: list[str] = []

    def ask_secret(question: str) -> str:
        secrets.append(question)
        return "x"

    result = ask_terminal(
        ask=lambda _q: next(it),
        ask_secret=ask_secret,
        read_file=lambda _p: ca_pem,
        say=lambda _s: None,
    )
    assert result is None
    assert secrets == [], "no password asked for an anonymous account"


def test_gui_needs_pywebview_and_a_display() -> None:
    has = lambda name: name in ("webview", "qtpy", "PyQt6.QtWebEngineWidgets")  # noqa: E731
    assert gui_available("linux", {"DISPLAY": ":0"}, has) is True
    assert gui_available("linux", {}, has) is False
    no_backend = lambda name: name in ("webview", "qtpy", "PyQt6")  # no WebEngine wheel  # noqa: E731
    assert gui_available("linux", {"DISPLAY": ":0"}, no_backend) is False
    assert has_module("json") and not has_module("no_such_pkg.sub")
    assert gui_available("win32", {}, has) is True
    assert gui_available("darwin", {"DISPLAY": ":0"}, lambda _n: False) is False


def test_window_api_fingerprint_and_bad_input(ca_pem: str) -> None:
    api = WindowApi(python=None)
    assert api.fingerprint(ca_pem) == {
        "fingerprint": anchor_fingerprint(ca_pem)[0],
        "subject": "CN=setup test CA",
    }
    assert "error" in api.fingerprint("not a certificate")


@pytest.mark.parametrize("encoding", ["der", "garbage"])
def test_terminal_reads_a_der_anchor_and_refuses_a_binary_file_in_one_line(
    ca_pem: str, tmp_path: Path, encoding: str
) -> None:
    """`install --trust-anchor` takes PEM or DER; so does setup (it died with a
    UnicodeDecodeError traceback on a DER file)."""
    from keypost.core.containers import load_certificates
    from keypost.core.errors import KeypostError

    [cert] = load_certificates(ca_pem.encode())
    path = tmp_path / "ca.crt"
    path.write_bytes(cert.public_bytes(Encoding.DER) if encoding == "der" else b"\x82\xff\x00")
    it = _answers("ldaps://d.example", "", str(path), "y")
    if encoding == "garbage":
        with pytest.raises(KeypostError):
            ask_terminal(ask=lambda _q: next(it), say=lambda _s: None)
        return
    answers = ask_terminal(ask=lambda _q: next(it), say=lambda _s: None)
    assert answers is not None and answers.trust_anchor_pem == ca_pem
    assert answers.fingerprint == anchor_fingerprint(ca_pem)[0]
