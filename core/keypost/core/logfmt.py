"""One log line format for keypost's servers (directory and gateway): logfmt-style
`time=<ISO UTC> level=<LEVEL> logger=<name> <message>` on stderr, so one collector rule
reads both and times compare across hosts and time zones."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class UtcFormatter(logging.Formatter):
    """ISO UTC times, formatted once per second (a busy server logs many lines a second)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._text


def configure(level: str) -> None:
    """Root logger -> stderr in FORMAT at `level` (debug, info, warning, error)."""
    # One line per request: skip what LogRecord would otherwise look up each time
    # (caller frame, thread, process), the documented knobs for hot loggers.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
