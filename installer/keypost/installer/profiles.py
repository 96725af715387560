"""Thunderbird profiles (profiles.ini) and the per-profile bits the installer manages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from keypost.installer.manifest_locations import Environment

USER_JS_BEGIN = "// keypost: begin (managed by `keypost install thunderbird`)"
USER_JS_END = "// keypost: end"


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    default: bool


def _read_ini(text: str) -> dict[str, dict[str, str]]:
    """Sections of an INI text read as Mozilla's nsINIParser reads profiles.ini: a UTF-8
    byte order mark skipped, lines trimmed, comments (`#`, `;`) and lines without `=`
    ignored, a later key winning; lines of a malformed section header are skipped."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in re.split(r"[\r\n]+", text.removeprefix("\ufeff")):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            current = sections.setdefault(line[1:end], {}) if end > 0 else None
            continue
        key, eq, value = line.partition("=")
        if eq and current is not None:
            current[key.strip()] = value.strip()
    return sections


def parse_profiles_ini(text: str, root: Path) -> list[Profile]:
    """Profiles listed in a profiles.ini whose folder lives under `root` (relative paths)."""
    sections = _read_ini(text)
    install_defaults = {
        s["Default"]
        for name, s in sections.items()
        if name.startswith("Install") and "Default" in s
    }
    out = []
    for name, section in sections.items():
        if not name.startswith("Profile") or "Path" not in section:
            continue
        raw = section["Path"]
        relative = section.get("IsRelative", "1") == "1"
        path = root / raw if relative else Path(raw)
        default = section.get("Default", "0") == "1" or raw in install_defaults
        out.append(Profile(section.get("Name", name), path, default))
    return out


def find_profiles(env: Environment) -> list[Profile]:
    """All profiles of all profile roots that exist (a root without profiles.ini is skipped).
    Paths are file system bytes on Linux, so undecodable ones are kept as such."""
    seen: set[Path] = set()
    out = []
    for root in env.profile_roots():
        ini = root / "profiles.ini"
        if not ini.is_file():
            continue
        text = ini.read_bytes().decode("utf-8", "surrogateescape")
        for p in parse_profiles_ini(text, root):
            if p.path not in seen and p.path.is_dir():
                seen.add(p.path)
                out.append(p)
    return out


def pref_value(value: bool | int | str) -> str:
    """A pref's value as prefs.js and Thunderbird's Config Editor write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pref_line(name: str, value: bool | int | str) -> str:
    return f'user_pref("{name}", {pref_value(value)});'


def strip_block(text: str) -> str:
    """user.js text without the keypost block; every other line exactly as it was."""
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if line.strip() == USER_JS_BEGIN:
            inside = True
        elif line.strip() == USER_JS_END and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)


def write_user_prefs(profile: Path, prefs: dict[str, bool | int | str]) -> None:
    """Replace the keypost block of PROFILE/user.js (created if needed); empty prefs remove it.

    The user's lines are kept byte for byte (any encoding, any line ending). Thunderbird
    copies user.js prefs into prefs.js at start; removing the block later does not reset a
    pref the user has since kept.
    """
    user_js = profile / "user.js"
    old = user_js.read_bytes().decode("utf-8", "surrogateescape") if user_js.exists() else ""
    new = strip_block(old)
    if prefs:
        if new and not new.endswith(("\n", "\r")):
            new += "\n"
        block = [USER_JS_BEGIN, *(pref_line(k, v) for k, v in prefs.items()), USER_JS_END]
        new = new + "\n".join(block) + "\n"
    if new == old:
        return
    if new.strip():
        user_js.write_bytes(new.encode("utf-8", "surrogateescape"))
    elif user_js.exists():
        user_js.unlink()
