"""The scan hook: exit codes of a real command, timeouts, entry-point style callables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gw_support import KEYPOST, Pki, free_port

from keypost.gateway.errors import ConfigError, TempFailure
from keypost.gateway.scan import (
    CallableScanner,
    CommandScanner,
    ScanResult,
    Verdict,
    load_entry_point,
)

MSG = b"Subject: t\r\n\r\nEICAR-LIKE-TEST-STRING\r\n"


def script(tmp_path: Path, body: str) -> list[str]:
    p = tmp_path / "scanner.py"
    p.write_text("import sys\ndata = sys.stdin.buffer.read()\n" + body)
    return [sys.executable, str(p)]


def test_exit_codes_map_to_verdicts_with_stdout_as_reason(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        "if b'EICAR' in data:\n    print('Found: test\\r\\nsignature'); sys.exit(1)\nsys.exit(0)\n",
    )
    scanner = CommandScanner(cmd, timeout=30)
    result = scanner.scan(MSG, "a@b.c", ["d@e.f"])
    assert result == ScanResult(Verdict.REJECT, "Found: test signature")
    assert scanner.scan(b"Subject: clean\r\n\r\nhi\r\n", "", []).verdict is Verdict.ACCEPT


def test_exit_two_quarantines(tmp_path: Path) -> None:
    scanner = CommandScanner(script(tmp_path, "print('suspicious'); sys.exit(2)\n"), 30)
    assert scanner.scan(MSG, "", []) == ScanResult(Verdict.QUARANTINE, "suspicious")


@pytest.mark.parametrize(("body", "timeout", "reason"), [
    ("sys.exit(3)\n", 30, "scan failed"),  # 30 s: a slow start must not turn it into a timeout
    ("import time; time.sleep(30)\n", 1, "timed out"),
])
def test_other_exits_and_timeouts_are_temporary(tmp_path: Path, body: str, timeout: float,
                                                reason: str) -> None:
    scanner = CommandScanner(script(tmp_path, body), timeout=timeout)
    with pytest.raises(TempFailure, match=reason):
        scanner.scan(MSG, "", [])


def test_missing_command_is_temporary() -> None:
    with pytest.raises(TempFailure, match="unavailable"):
        CommandScanner(["/nonexistent/scanner"], 5).scan(MSG, "", [])


def test_callable_scanner_accepts_verdicts_or_results() -> None:
    assert CallableScanner(lambda m, f, r: Verdict.ACCEPT).scan(MSG, "", []).verdict is (
        Verdict.ACCEPT
    )
    res = ScanResult(Verdict.REJECT, "no")
    assert CallableScanner(lambda m, f, r: res).scan(MSG, "", []) is res
    with pytest.raises(TempFailure):
        CallableScanner(lambda m, f, r: None).scan(MSG, "", [])


def test_scanner_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in installed the ordinary way (a dist-info with entry_points.txt)."""
    (tmp_path / "gw_test_plugin.py").write_text(
        "from keypost.gateway.scan import ScanResult, Verdict\n"
        "def scan(message, mail_from, recipients):\n"
        "    return ScanResult(Verdict.REJECT, 'plugin says no') if b'BAD' in message"
        " else ScanResult(Verdict.ACCEPT)\n"
    )
    info = tmp_path / "gw_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gw-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[keypost.gateway.scanners]\ntoy = gw_test_plugin:scan\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    scanner = load_entry_point("toy")
    assert scanner.scan(b"BAD", "", []) == ScanResult(Verdict.REJECT, "plugin says no")
    assert scanner.scan(b"fine", "", []).verdict is Verdict.ACCEPT
    with pytest.raises(ConfigError, match="no scanner named"):
        load_entry_point("missing")


def test_check_config_refuses_a_scan_command_that_cannot_run(pki: Pki, tmp_path: Path) -> None:
    not_executable = tmp_path / "scan.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    cases = [
        (f'"{tmp_path / "missing"}"', f"'{tmp_path / 'missing'}' is no executable file"),
        (f'"{not_executable} --fast"', f"'{not_executable}' is no executable file"),
        ('"keypost-no-such-scanner -v"', "'keypost-no-such-scanner' is no executable file in PATH"),
        (f'"{tmp_path}"', f"'{tmp_path}' is no executable file"),  # a folder
    ]
    for command, why in cases:
        cfg = pki.config(free_port(), extra=f"[scan]\ncommand = {command}")
        done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stdout
        assert done.stderr.splitlines() == [f"keypost: error: scan.command: {why}"]
        assert "configuration OK" not in done.stdout
    found = pki.config(free_port(), extra='[scan]\ncommand = "true --via-path"')
    ok = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(found)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "scan hook: command true --via-path" in ok.stdout


def test_a_relative_scan_command_is_found_next_to_the_config_file(
    pki: Pki, tmp_path: Path
) -> None:
    """Like every other path in gateway.toml, a scan program named with a folder is
    relative to the config file, not to wherever the gateway was started; a bare name is
    still looked up in PATH."""
    folder = tmp_path / "etc"
    (folder / "scanners").mkdir(parents=True)
    program = folder / "scanners" / "scan.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    for command in ('"scanners/scan.sh --fast"', '["./scanners/scan.sh", "--fast"]'):
        cfg = pki.config(free_port(), extra=f"[scan]\ncommand = {command}", folder=folder)
        done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, cwd="/")
        assert done.returncode == 0, done.stderr
        assert f"scan hook: command {program} --fast" in done.stdout.replace("/./", "/")
