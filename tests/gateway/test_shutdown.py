"""SIGTERM while a message is being handled: it still gets its reply (no duplicate, no loss)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from gw_support import Pki, Sink, plain_message, send
from proc_util import start_gateway_serve, stop


def test_sigterm_lets_the_message_in_hand_finish(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nsys.stdin.buffer.read()\ntime.sleep(2)\n")
    cfg = pki.config(sink.port, extra=(
        f'[scan]\ncommand = ["{sys.executable}", "{script}"]\nscan_plain = true\n'
    ))
    proc, port = start_gateway_serve(cfg, tmp_path / "gateway.log")
    result: list[tuple[int, str]] = []
    try:
        t = threading.Thread(target=lambda: result.append(
            send(port, "s@outside.test", ["alice@example.com"], plain_message())))
        t.start()
        time.sleep(0.8)  # the scanner is running now
        proc.terminate()
        t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    assert result and result[0][0] == 250
    assert len(sink.handler.messages) == 1
