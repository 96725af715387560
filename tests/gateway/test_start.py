"""`keypost start` (the README's first command) also runs the demo gateway: an encrypted
message sent through it arrives decrypted in the local inbox."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from gw_support import KEYPOST


def test_keypost_start_runs_the_demo_gateway(tmp_path: Path) -> None:
    data = tmp_path / "kp"
    proc = subprocess.Popen(
        [*KEYPOST, "start", "--data", str(data), "--ldap-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip().startswith("ldapsearch ") or time.monotonic() > deadline:
                break
        text = "\n".join(lines)
        assert "gateway    smtp://127.0.0.1:" in text, text
        # aiosmtpd's own loggers (every connection and command; bodies at debug) are not
        # part of the output, not even for the local sink's start-up self-check
        assert "mail.log" not in text and "mail.debug" not in text, text
        [hint] = [x for x in lines if "keypost gateway demo-send" in x]
        argv = hint.split("keypost ", 1)[1].split()
        done = subprocess.run([*KEYPOST, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "arrived decrypted" in done.stdout and "key=current" in done.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    [filed] = list((data / "gateway" / "inbox" / "new").iterdir())
    assert b"decrypted by the gateway" in filed.read_bytes()
