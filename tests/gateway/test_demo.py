"""`keypost gateway demo` + `demo-send` (what `keypost start` runs) against a real directory."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from gw_directory import GATEWAY_PW, DirectoryWorld, keypost
from gw_support import KEYPOST, Pki, write_private
from port_util import plain_bind_fails, port_in_time_wait

from keypost.gateway import demo


def test_demo_gateway_decrypts_what_an_outsider_sends(
    tmp_path: Path, pki: Pki, world: DirectoryWorld
) -> None:
    # the layout `keypost start` leaves behind: demo/ secrets, directory/ data
    demo = tmp_path / "demo"
    demo.mkdir(mode=0o700)
    shutil.copy(pki.path("enc-current.key"), demo / "gateway-encryption-key.pem")
    shutil.copy(pki.path("sign.key"), demo / "gateway-signing-key.pem")
    write_private(demo / "gw-example-password", GATEWAY_PW.encode() + b"\n")
    (tmp_path / "directory").symlink_to(world.root / "data")
    # An inbox as an older version left it (0755): keypost's own folders are tightened.
    (tmp_path / "gateway" / "inbox").mkdir(parents=True)
    os.chmod(tmp_path / "gateway", 0o755)
    os.chmod(tmp_path / "gateway" / "inbox", 0o755)
    proc = subprocess.Popen(
        [*KEYPOST, "gateway", "demo", "--data", str(tmp_path), "--account", "gw-example",
         "--directory", f"{world.ldap_url}/dc=keypost", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        assert any(x.startswith("listening smtp://127.0.0.1:") for x in lines), lines
        out = keypost("gateway", "demo-send", "--data", str(tmp_path))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "arrived decrypted" in out and "key=current" in out
    [filed] = list((tmp_path / "gateway" / "inbox" / "new").iterdir())
    data = filed.read_bytes()
    assert b"decrypted by the gateway" in data and b"pkcs7-mime" not in data
    gwdir = tmp_path / "gateway"
    folders = [p for p in (gwdir, *gwdir.rglob("*")) if p.is_dir()]
    # gateway/, inbox/ and quarantine/ with tmp, new, cur each, state/signing-containers
    assert len(folders) == 11
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {
        str(p): "0o700" for p in folders}


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    """--port 70000 reached socket.bind, whose OverflowError ended in a traceback."""
    for port in ("70000", "-1", "x"):
        done = subprocess.run(
            [*KEYPOST, "gateway", "demo", "--data", str(tmp_path), "--directory",
             "ldap://127.0.0.1:1/dc=keypost", "--port", port],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "--port" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_port_left_in_time_wait_by_the_last_run_is_kept() -> None:
    """`--port 10025` (what `keypost start` asks for) moved to a random port when the last
    run's connections still waited in TIME_WAIT: the probe bound without SO_REUSEADDR."""
    port = port_in_time_wait()
    assert plain_bind_fails(port)  # the state a restart meets
    assert demo._port(port) == port
    with socket.create_server(("127.0.0.1", port)):  # a port in use is still busy
        assert demo._port(port) != port
