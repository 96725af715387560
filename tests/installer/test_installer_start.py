"""`keypost start`'s first run is all or nothing: an interrupted set-up is not taken for a
finished demo by the next start (whose gateway then never came up)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from port_util import plain_bind_fails, port_in_time_wait

from keypost.installer import start


def test_an_interrupted_first_run_leaves_nothing_and_the_next_one_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = start.Layout(tmp_path / "kp")
    real = start._account

    def interrupted(layout: start.Layout, name: str, role: str) -> None:
        if name == start.DEMO_GATEWAY_ACCOUNT:
            raise KeyboardInterrupt  # Ctrl-C while the demo is being set up
        real(layout, name, role)

    monkeypatch.setattr(start, "_account", interrupted)
    with pytest.raises(KeyboardInterrupt):
        start.first_run(layout)
    assert not layout.directory.exists() and not layout.demo.exists()
    monkeypatch.setattr(start, "_account", real)
    assert start.first_run(layout) is True
    assert (layout.demo / f"{start.DEMO_GATEWAY_ACCOUNT}-password").is_file()
    assert start.first_run(layout) is False


def test_a_set_up_killed_half_way_is_named_not_started(tmp_path: Path) -> None:
    """Killed outright (no clean-up ran): the next start says what to remove."""
    layout = start.Layout(tmp_path / "kp")
    layout.directory.mkdir(parents=True)
    (layout.directory / "directory.toml").write_text("", "utf-8")
    with pytest.raises(start.StartError, match="did not finish"):
        start.first_run(layout)


def test_a_port_left_in_time_wait_by_the_last_run_is_kept() -> None:
    """Restarting `keypost start` within a minute of a lookup moved the directory to a
    random port: the probe bound without SO_REUSEADDR, which the server itself uses."""
    port = port_in_time_wait()
    assert plain_bind_fails(port)  # the state a restart meets
    assert start.free_port(port) == port
    with socket.create_server(("127.0.0.1", port)):  # a port in use is still busy
        assert start.free_port(port) == 0
