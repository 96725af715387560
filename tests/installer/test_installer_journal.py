"""The install undo log: a failed run puts back exactly what was there before it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keypost.installer.journal import Journal
from keypost.installer.manifest_locations import Environment
from keypost.installer.registry import MemoryRegistry
from keypost.installer.thunderbird import InstallOptions, install


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry below root: mode and content (file bytes, link target, None for folders)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            content: bytes | str | None = os.readlink(p)
        else:
            content = p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), content)
    return out


def test_rollback_restores_bytes_modes_links_and_absence(tmp_path: Path) -> None:
    kept = tmp_path / "old.txt"
    kept.write_bytes(b"before")
    os.chmod(kept, 0o600)
    link = tmp_path / "link"
    link.symlink_to("old.txt")
    before = _snapshot(tmp_path)
    journal = Journal()
    journal.write(kept, b"after", 0o644)
    journal.write(kept, b"after again")  # the first state recorded is the one restored
    journal.saving(link)
    link.unlink()
    link.write_bytes(b"now a file")
    journal.write(tmp_path / "new" / "deeper" / "file", b"x", 0o755)
    assert journal.rollback() == []
    assert _snapshot(tmp_path) == before


def test_leaving_the_block_by_an_exception_undoes_it_and_reraises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Journal() as journal:
        journal.write(tmp_path / "a" / "b.txt", b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with Journal() as journal:
        journal.write(tmp_path / "a" / "b.txt", b"x")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"x", "success keeps what was written"


def test_a_folder_someone_else_filled_meanwhile_is_kept(tmp_path: Path) -> None:
    journal = Journal()
    journal.write(tmp_path / "shared" / "ours", b"x")
    (tmp_path / "shared" / "theirs").write_bytes(b"y")
    assert journal.rollback() == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["shared", "theirs"]


def test_registry_values_are_put_back_or_removed() -> None:
    reg = MemoryRegistry()
    reg.set_default("HKEY_CURRENT_USER", "old", "previous")
    journal = Journal()
    journal.set_registry(reg, "HKEY_CURRENT_USER", "old", "new value")
    journal.set_registry(reg, "HKEY_CURRENT_USER", "fresh", "new key")
    assert reg.values == {("HKEY_CURRENT_USER", "old"): "new value",
                          ("HKEY_CURRENT_USER", "fresh"): "new key"}
    journal.rollback()
    assert reg.values == {("HKEY_CURRENT_USER", "old"): "previous"}


def test_an_upgrade_failing_half_way_leaves_the_previous_install(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good = home / ".thunderbird" / "a.default"
    good.mkdir(parents=True)
    (home / ".thunderbird" / "profiles.ini").write_text(
        "[Profile0]\nName=a\nIsRelative=1\nPath=a.default\n", "utf-8")
    env = Environment("linux", home, {})
    install(env, InstallOptions(python="/old/bin/python", send_in_background=True),
            log=lambda _line: None)
    before = _snapshot(home)
    # The upgrade also targets a "profile" it cannot write into (a file): it fails there,
    # after the launcher, manifest, .xpi and the first profile were rewritten.
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        install(env, InstallOptions(python="/new/bin/python", profiles=(good, blocker)),
                log=lambda _line: None)
    assert _snapshot(home) == before
    assert "/old/bin/python" in (home / ".local/share/keypost/keypost-host").read_text("utf-8")
