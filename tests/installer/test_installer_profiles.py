"""profiles.ini parsing and the user.js block the installer manages."""

from __future__ import annotations

import os
from pathlib import Path

from keypost.installer.manifest_locations import Environment
from keypost.installer.profiles import find_profiles, parse_profiles_ini, write_user_prefs

INI = """[Install6F193CCC56814779]
Default=abcd.second

[Profile1]
Name=default
IsRelative=1
Path=wxyz.default

[Profile0]
Name=second
IsRelative=1
Path=abcd.second

[Profile2]
Name=elsewhere
IsRelative=0
Path={abs}

[General]
StartWithLastProfile=1
Version=2
"""


def test_parse_relative_absolute_and_install_default(tmp_path: Path) -> None:
    root = tmp_path / ".thunderbird"
    profiles = parse_profiles_ini(INI.format(abs=tmp_path / "abs"), root)
    by_name = {p.name: p for p in profiles}
    assert by_name["default"].path == root / "wxyz.default"
    assert by_name["second"].path == root / "abcd.second"
    assert by_name["second"].default is True
    assert by_name["default"].default is False
    assert by_name["elsewhere"].path == tmp_path / "abs"


def test_find_profiles_skips_missing_folders(tmp_path: Path) -> None:
    root = tmp_path / ".thunderbird"
    (root / "wxyz.default").mkdir(parents=True)
    (root / "profiles.ini").write_text(INI.format(abs=tmp_path / "nope"), "utf-8")
    found = find_profiles(Environment("linux", tmp_path, {}))
    assert [p.path for p in found] == [root / "wxyz.default"]


def test_user_js_block_is_replaced_and_removed_keeping_user_lines(tmp_path: Path) -> None:
    user_js = tmp_path / "user.js"
    user_js.write_text('user_pref("mail.mine", 1);\n', "utf-8")
    write_user_prefs(tmp_path, {"mailnews.sendInBackground": True})
    write_user_prefs(tmp_path, {"mailnews.sendInBackground": True, "x.y": 'a"b'})
    text = user_js.read_text("utf-8")
    assert text.count("mailnews.sendInBackground") == 1
    assert 'user_pref("mailnews.sendInBackground", true);' in text
    assert 'user_pref("x.y", "a\\"b");' in text
    assert text.startswith('user_pref("mail.mine", 1);\n')
    write_user_prefs(tmp_path, {})
    assert user_js.read_text("utf-8") == 'user_pref("mail.mine", 1);\n'


def test_user_js_created_only_by_us_is_deleted_on_removal(tmp_path: Path) -> None:
    write_user_prefs(tmp_path, {"a.b": 0})
    assert (tmp_path / "user.js").exists()
    write_user_prefs(tmp_path, {})
    assert not (tmp_path / "user.js").exists()


def test_profiles_ini_is_read_as_thunderbird_reads_it(tmp_path: Path) -> None:
    """Mozilla's INI reader skips a UTF-8 byte order mark (Notepad writes one), ignores
    lines without `=` and comments, and trims every line; profile paths are bytes on
    Linux, so a folder name that is not UTF-8 is found too."""
    root = tmp_path / ".thunderbird"
    latin1 = b"caf\xe9.default"
    for name in (b"a.default", b"b.default", latin1):
        (root / name.decode("utf-8", "surrogateescape")).mkdir(parents=True)
    (root / "profiles.ini").write_bytes(
        b"\xef\xbb\xbf[General]\r\nStartWithLastProfile=1\r\nsome stray line\r\n"
        b"; a comment\r\n\r\n[Profile0]\r\n  Name = a\r\nIsRelative=1\r\nPath=a.default\r\n"
        b"[Profile1]\r\nName=b\r\nIsRelative=1\r\nPath=b.default\r\n"
        b"[Profile2]\r\nName=c\r\nIsRelative=1\r\nPath=" + latin1 + b"\r\n"
    )
    found = find_profiles(Environment("linux", tmp_path, {}))
    assert [p.name for p in found] == ["a", "b", "c"]
    assert [p.path for p in found] == [root / "a.default", root / "b.default",
                                       root / latin1.decode("utf-8", "surrogateescape")]


def test_user_js_of_any_encoding_and_line_ending_is_given_back_byte_for_byte(
    tmp_path: Path,
) -> None:
    """user.js is the user's file: Windows line endings and a Latin-1 byte (a hand edit)
    survive adding and removing our block, and a file without it is not rewritten."""
    user_js = tmp_path / "user.js"
    mine = b'user_pref("mail.mine", "caf\xe9");\r\n// no newline at the end'
    user_js.write_bytes(mine)
    write_user_prefs(tmp_path, {"mailnews.sendInBackground": True})
    text = user_js.read_bytes()
    assert text.startswith(mine + b"\n") and b"sendInBackground" in text
    write_user_prefs(tmp_path, {})
    assert user_js.read_bytes() == mine + b"\n"
    user_js.write_bytes(mine)
    os.utime(user_js, ns=(10**9, 10**9))
    write_user_prefs(tmp_path, {})  # nothing of ours in it: not even written back
    assert user_js.read_bytes() == mine and user_js.stat().st_mtime_ns == 10**9
