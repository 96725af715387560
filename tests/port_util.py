"""Loopback ports with a known state: one a server just stopped using (what a restart
finds), one that refuses connections."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def port_in_time_wait() -> int:
    """A port nothing listens on whose last connection the server side closed first, so the
    kernel keeps it in TIME_WAIT (60 s on Linux): a stopped `keypost start` after a client
    talked to it. asyncio's servers bind such a port again (SO_REUSEADDR); a plain bind
    does not, which the caller's test asserts before relying on it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first: its side waits in TIME_WAIT
        client.recv(1)  # the FIN arrived
        client.close()
    return port


def plain_bind_fails(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound and
    never listening, so the kernel hands it to nobody else. For a next hop or directory
    that must stay down: a port that was merely free when picked (free_port) can be given
    to a server another test starts on port 0 meanwhile, which then answers (CI: a
    quarantine release meant to fail went to another test's sink)."""
    with refusing_socket() as s:
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def refusing_socket() -> Iterator[socket.socket]:
    """refusing_port's socket itself: for a server that must come up later on the very
    port that refused (a next hop back up), by listening on this socket, so that no other
    process can take the port in between."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s


@contextlib.contextmanager
def held(*ports: int) -> Iterator[None]:
    """These loopback ports refuse connections, and no other server is handed one, for as
    long as the block runs (as refusing_port): for a server stopped in a test that starts
    it again on the same ports after the block. SO_REUSEADDR: the stopped server's closed
    connections may still hold a port in TIME_WAIT, where a plain bind fails."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            s = stack.enter_context(socket.socket())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        yield
