"""SIGTERM while a message is being handled: it still gets its reply (no duplicate, no loss)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from gw_support import KEYPOST, Pki, Sink, free_port, plain_message, send, wait_port


def test_sigterm_lets_the_message_in_hand_finish(pki: Pki, sink: Sink, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nsys.stdin.buffer.read()\ntime.sleep(2)\n")
    port = free_port()
    cfg = pki.config(sink.port, listen=port, extra=(
        f'[scan]\ncommand = ["{sys.executable}", "{script}"]\nscan_plain = true\n'
    ))
    proc = subprocess.Popen([*KEYPOST, "gateway", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL)
    result: list[tuple[int, str]] = []
    try:
        wait_port(port)
        t = threading.Thread(target=lambda: result.append(
            send(port, "s@outside.test", ["alice@example.com"], plain_message())))
        t.start()
        time.sleep(0.8)  # the scanner is running now
        proc.terminate()
        t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result and result[0][0] == 250
    assert len(sink.handler.messages) == 1
