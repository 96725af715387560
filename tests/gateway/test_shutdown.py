"""SIGTERM while a message is being handled: it still gets its reply (no duplicate, no loss)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from gw_support import Pki, Sink, plain_message, send
from proc_util import start_gateway_serve, stop


def test_sigterm_lets_the_message_in_hand_finish(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    # The scanner says when it has the message and runs until the test has sent SIGTERM
    # (a fixed sleep before SIGTERM was a guess: on a loaded machine the signal could
    # come before the message was in hand).
    scanning, signalled = tmp_path / "scanning", tmp_path / "signalled"
    script = tmp_path / "slow.py"
    script.write_text(
        "import pathlib, sys, time\nsys.stdin.buffer.read()\n"
        f"pathlib.Path({str(scanning)!r}).touch()\n"
        f"while not pathlib.Path({str(signalled)!r}).exists():\n    time.sleep(0.05)\n")
    cfg = pki.config(sink.port, extra=(
        f'[scan]\ncommand = ["{sys.executable}", "{script}"]\nscan_plain = true\n'
    ))
    proc, port = start_gateway_serve(cfg, tmp_path / "gateway.log")
    result: list[tuple[int, str]] = []
    try:
        t = threading.Thread(target=lambda: result.append(
            send(port, "s@outside.test", ["alice@example.com"], plain_message())))
        t.start()
        deadline = time.monotonic() + 60
        while not scanning.exists():
            assert t.is_alive() and time.monotonic() < deadline, "the scanner never ran"
            time.sleep(0.05)
        proc.terminate()
        signalled.touch()
        t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        signalled.touch()  # also when the test failed: no scanner is left waiting
        stop(proc)
    assert result and result[0][0] == 250
    assert len(sink.handler.messages) == 1
