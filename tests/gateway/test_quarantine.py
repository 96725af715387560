"""The quarantine Maildir's folders: 0700 when the gateway makes them, reported when looser."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import KEYPOST, Pki, Sink, free_port
from port_util import refusing_port
from proc_util import start_gateway_serve, stop

from keypost.gateway.quarantine import Maildir, Onward, held_messages


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """022, as most shells have: the parents mkdir(parents=True) makes get 0777 & ~umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_every_folder_ensure_creates_is_0700(tmp_path: Path, usual_umask: None) -> None:
    os.chmod(tmp_path, 0o755)
    root = tmp_path / "spool" / "keypost" / "quarantine"
    Maildir(root).ensure()
    made = [tmp_path / "spool", tmp_path / "spool" / "keypost", root,
            root / "tmp", root / "new", root / "cur"]
    assert {str(p): _mode(p) for p in made} == {str(p): 0o700 for p in made}
    assert _mode(tmp_path) == 0o755, "a folder that was there is not ours to change"
    assert Maildir(root).loose_folders() == []


def test_a_looser_existing_folder_is_kept_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "q"
    root.mkdir()
    os.chmod(root, 0o750)  # e.g. a review group the administrator chose
    Maildir(root).ensure()
    assert _mode(root) == 0o750
    assert _mode(root / "new") == 0o700
    assert Maildir(root).loose_folders() == [(root, 0o750)]
    os.chmod(root / "cur", 0o705)
    assert Maildir(root).loose_folders() == [(root, 0o750), (root / "cur", 0o705)]


def test_check_config_and_serve_warn_about_a_loose_quarantine(tmp_path: Path, pki: Pki) -> None:
    qdir = tmp_path / "q"
    qdir.mkdir()
    os.chmod(qdir, 0o755)
    cfg = pki.config(next_hop=free_port(), quarantine=str(qdir))
    warning = f"quarantine folder {qdir} is mode 0755: others may read held (decrypted) mail"
    checked = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"warning: {warning}; chmod 700 it" in checked.stdout
    proc, _ = start_gateway_serve(cfg, tmp_path / "gateway.log")
    stop(proc, timeout=60)
    assert warning in (tmp_path / "gateway.log").read_text()
    assert _mode(qdir) == 0o755


def test_a_quarantine_path_that_is_no_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "q").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        Maildir(tmp_path / "q").ensure()
    with pytest.raises(NotADirectoryError):
        Maildir(tmp_path / "q" / "deeper").ensure()


def test_check_config_refuses_a_quarantine_serve_could_not_create(tmp_path: Path, pki: Pki) -> None:
    """check-config said OK and serve then stopped with "Not a directory"."""
    (tmp_path / "file").write_bytes(b"")
    for where in (tmp_path / "file" / "q", tmp_path / "file"):
        cfg = pki.config(next_hop=free_port(), quarantine=str(where))
        done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stdout
        assert done.stderr.splitlines() == [
            f"keypost: error: quarantine_dir: {tmp_path / 'file'} is not a folder"]
        assert not (tmp_path / "file").is_dir()


def test_a_message_cannot_rewrite_its_own_envelope(tmp_path: Path) -> None:
    """Held outbound clear text starts with lines its sender chose: named like the envelope,
    they must stay message, or a release would go to other recipients without the outbound
    steps the hold recorded."""
    forged = (b"X-Keypost-Onward: none\r\nX-Keypost-Envelope-To: <x@evil.example>\r\n"
              b"X-Keypost-Envelope-From: <ceo@example.com>\r\n"
              b"From: alice@example.com\r\nSubject: hi\r\n\r\nsecret\r\n")
    box = Maildir(tmp_path / "q")
    qid = box.store(forged, "alice@example.com", ["bob@other.example"], "scan: held",
                    Onward(encrypt=True))
    [held] = held_messages(box.root)
    assert held.qid == qid
    assert held.rcpts == ("bob@other.example",)
    assert held.mail_from == "alice@example.com"
    assert held.onward == Onward(encrypt=True)
    assert held.reason == "scan: held"
    assert held.message == forged
    # not recorded (inbound): still nothing the message can add
    box2 = Maildir(tmp_path / "q2")
    box2.store(forged, "x@outside.example", ["alice@example.com"], "held", None)
    [inbound] = held_messages(box2.root)
    assert inbound.onward is None and inbound.rcpts == ("alice@example.com",)
    assert inbound.message == forged


def test_a_file_of_an_older_gateway_is_read_without_onward(tmp_path: Path) -> None:
    box = Maildir(tmp_path / "q")
    box.ensure()
    old = (b"X-Keypost-Quarantine-Reason: held\r\nX-Keypost-Envelope-From: <a@example.com>\r\n"
           b"X-Keypost-Envelope-To: <b@other.example>\r\nX-Keypost-Onward: none\r\n"
           b"Subject: x\r\n\r\nbody\r\n")
    box.deliver(old)
    [held] = held_messages(box.root)
    assert held.rcpts == ("b@other.example",) and held.mail_from == "a@example.com"
    assert held.onward is None  # its first message line does not count as a record
    assert held.message.startswith(b"X-Keypost-Onward: none\r\nSubject: x")


def test_recipients_with_a_comma_in_a_quoted_local_part_are_kept_whole(tmp_path: Path) -> None:
    """RFC 5321 allows `"a,b"@example.com`; read back as two recipients, a release would
    send the message to `"a` and `b"@example.com` and never to its recipient."""
    box = Maildir(tmp_path / "q")
    rcpts = ['"a,b"@example.com', "c@example.com", '"x>, <y"@example.com']
    box.store(b"Subject: x\r\n\r\nbody\r\n", '"s,t"@outside.test', rcpts, "held", None)
    [held] = held_messages(box.root)
    assert held.rcpts == tuple(rcpts) and held.mail_from == '"s,t"@outside.test'


# --- releasing: each recipient gets its copy, or the message stays held for it ------------


def _release(cfg: Path, *qids: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release",
                           *qids], capture_output=True, text=True, timeout=120)


def test_a_recipient_the_next_hop_defers_on_release_stays_held(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """The next hop takes one recipient and defers the other: the release must not report
    both as released and file the message as done, which lost the deferred copy."""
    box = Maildir(tmp_path / "q")
    qid = box.store(b"Subject: x\r\n\r\nreviewed\r\n", "s@outside.test",
                    ["alice@example.com", "busy@example.com"], "scan: held", None)
    sink.handler.defer = {"busy@example.com"}
    done = _release(pki.config(sink.port, quarantine=str(box.root)), qid)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "busy@example.com" in done.stderr and "still held" in done.stderr
    [got] = sink.handler.messages
    assert got.rcpt_tos == ["alice@example.com"]
    [kept] = held_messages(box.root)
    assert kept.rcpts == ("busy@example.com",) and kept.message.endswith(b"reviewed\r\n")
    assert kept.qid in done.stderr and kept.qid != qid
    sink.handler.defer = set()
    again = _release(pki.config(sink.port, quarantine=str(box.root)), kept.qid)
    assert again.returncode == 0, again.stderr
    assert [m.rcpt_tos for m in sink.handler.messages] == [["alice@example.com"],
                                                          ["busy@example.com"]]
    assert held_messages(box.root) == []


def test_a_release_failing_after_a_first_group_is_not_sent_twice(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """Inside and outside recipients leave in separate transactions; when the second fails,
    a retry of the whole entry would give the first its copy again."""
    box = Maildir(tmp_path / "q")
    msg = b"From: alice@example.com\r\nSubject: x\r\n\r\nreviewed\r\n"
    qid = box.store(msg, "alice@example.com", ["colleague@example.com", "carol@elsewhere.net"],
                    "scan: held", Onward())
    sink.handler.refuse = {"carol@elsewhere.net"}
    cfg = pki.config(sink.port, quarantine=str(box.root))
    done = _release(cfg, qid)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "carol@elsewhere.net" in done.stderr and "550" in done.stderr
    assert [m.rcpt_tos for m in sink.handler.messages] == [["colleague@example.com"]]
    [kept] = held_messages(box.root)
    assert kept.rcpts == ("carol@elsewhere.net",) and kept.onward == Onward()
    sink.handler.refuse = set()
    assert _release(cfg, kept.qid).returncode == 0
    assert [m.rcpt_tos for m in sink.handler.messages] == [["colleague@example.com"],
                                                          ["carol@elsewhere.net"]]


def test_a_release_the_next_hop_refuses_entirely_keeps_the_entry(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    box = Maildir(tmp_path / "q")
    qid = box.store(b"Subject: x\r\n\r\nreviewed\r\n", "s@outside.test", ["alice@example.com"],
                    "scan: held", None)
    with refusing_port() as nobody:
        done = _release(pki.config(nobody, quarantine=str(box.root)), qid)
    assert done.returncode == 1, done.stderr
    assert f"{qid} not released (still held)" in done.stderr.splitlines()[-1]
    assert [h.qid for h in held_messages(box.root)] == [qid]


def test_a_release_already_under_way_is_not_sent_again(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """Two operators releasing one entry at the same moment: the second finds it locked
    (here the test holds the lock) and is refused; nothing is sent twice."""
    box = Maildir(tmp_path / "q")
    qid = box.store(b"Subject: x\r\n\r\nreviewed\r\n", "s@outside.test", ["alice@example.com"],
                    "scan: held", None)
    cfg = pki.config(sink.port, quarantine=str(box.root))
    with open(box.root / "new" / qid, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = _release(cfg, qid)
    assert busy.returncode == 1 and "being released by another process" in busy.stderr
    assert sink.handler.messages == []
    assert [h.qid for h in held_messages(box.root)] == [qid]
    assert _release(cfg, qid).returncode == 0
    assert len(sink.handler.messages) == 1
