"""The stdio loop: frames in from Thunderbird on stdin, replies out on stdout, logs to a file."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import BinaryIO

from keypost.host import framing
from keypost.host.actions import Host
from keypost.host.errors import BadRequest, MessageTooLarge
from keypost.host.paths import cache_dir

LOG_FILE = "host.log"
READ_SIZE = 1 << 16
log = logging.getLogger("keypost.host")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to host.log in the cache dir (stdout is the protocol; stderr as a fallback)."""
    handler: logging.Handler
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            folder / LOG_FILE, maxBytes=1 << 20, backupCount=2, encoding="utf-8"
        )
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("keypost")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _read(stream: BinaryIO) -> bytes:
    read1 = getattr(stream, "read1", None)
    data = read1(READ_SIZE) if read1 is not None else stream.read(READ_SIZE)
    return bytes(data)


def serve(
    stdin: BinaryIO,
    stdout: BinaryIO,
    host: Host | None = None,
    max_request: int = framing.MAX_REQUEST_BYTES,
) -> int:
    """Answer frames until end of input. Returns the exit code."""
    host = host or Host()
    decoder = framing.FrameDecoder(max_request)

    def send(reply: dict[str, object]) -> None:
        for frame in framing.encode_reply(reply):
            stdout.write(frame)
        stdout.flush()

    log.info("host started")
    try:
        while True:
            data = _read(stdin)
            events = decoder.feed(data) if data else decoder.close()
            for event in events:
                if isinstance(event, framing.Message):
                    send(host.handle(event.value))
                    host.idle()
                elif isinstance(event, framing.Oversized):
                    err = MessageTooLarge(
                        f"request of {event.length} bytes exceeds the limit of {event.limit}",
                        {"limit": event.limit},
                    )
                    send({"id": None, "ok": False, "error": err.to_wire()})
                elif isinstance(event, framing.Malformed):
                    send({"id": None, "ok": False, "error": BadRequest(event.reason).to_wire()})
                else:
                    log.warning("input ended inside a frame (%s)", event)
            if not data:
                return 0
    except BrokenPipeError:
        log.info("the add-on closed the connection")
        return 0
    finally:
        host.close()
        log.info("host stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry for `python -m keypost.host`; Thunderbird's extra arguments (manifest path,
    add-on id) are accepted and ignored."""
    del argv
    setup_logging()
    return serve(sys.stdin.buffer, sys.stdout.buffer)
