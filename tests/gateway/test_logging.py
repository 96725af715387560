"""What `keypost gateway serve` logs: one line per message, never bodies or each command."""

from __future__ import annotations

import re
from pathlib import Path

from gw_support import Pki, Sink, plain_message, send
from proc_util import start_gateway_serve, stop

MARKER = "body-marker-7f3a9c"
RCPT = "marker.rcpt.5e1d@example.com"


def test_debug_log_level_logs_no_bodies_and_no_smtp_commands(
    pki: Pki, sink: Sink, tmp_path: Path
) -> None:
    cfg = pki.config(sink.port, extra='log_level = "debug"',
                     quarantine=str(tmp_path / "q"))
    log = tmp_path / "gateway.log"  # its stderr; stdout has the listening and ready lines
    proc, port = start_gateway_serve(cfg, log)
    try:
        msg = plain_message(sender="s@outside.test", to=RCPT, body=MARKER)
        assert send(port, "s@outside.test", [RCPT], msg)[0] == 250
    finally:
        stop(proc, timeout=60)
    text = log.read_text(errors="replace")
    [line] = [x for x in text.splitlines() if "from=<s@outside.test>" in x]
    assert "rcpts=1" in line and "-> 250" in line  # the gateway's own line stays
    # the directory's line format (one collector rule for both), times in UTC
    assert re.match(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ level=INFO logger=keypost\.gateway"
                    r"\S* from=<s@outside\.test>", line), line
    assert " level=DEBUG " in text  # the level is in force for the gateway's own loggers
    assert [m.data for m in sink.handler.messages if MARKER.encode() in m.data]
    assert MARKER not in text, text
    assert RCPT not in text, text
    assert "mail.log" not in text, text
