"""Thunderbird profiles (profiles.ini) and the per-profile bits the installer manages."""

from __future__ import annotations

import configparser
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


def parse_profiles_ini(text: str, root: Path) -> list[Profile]:
    """Profiles listed in a profiles.ini whose folder lives under `root` (relative paths)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(text)
    install_defaults = {
        cp.get(s, "Default")
        for s in cp.sections()
        if s.startswith("Install") and cp.has_option(s, "Default")
    }
    out = []
    for section in cp.sections():
        if not section.startswith("Profile") or not cp.has_option(section, "Path"):
            continue
        raw = cp.get(section, "Path")
        relative = cp.get(section, "IsRelative", fallback="1").strip() == "1"
        path = root / raw if relative else Path(raw)
        default = cp.get(section, "Default", fallback="0").strip() == "1" or raw in install_defaults
        out.append(Profile(cp.get(section, "Name", fallback=section), path, default))
    return out


def find_profiles(env: Environment) -> list[Profile]:
    """All profiles of all profile roots that exist (a root without profiles.ini is skipped)."""
    seen: set[Path] = set()
    out = []
    for root in env.profile_roots():
        ini = root / "profiles.ini"
        if not ini.is_file():
            continue
        for p in parse_profiles_ini(ini.read_text("utf-8", errors="replace"), root):
            if p.path not in seen and p.path.is_dir():
                seen.add(p.path)
                out.append(p)
    return out


def pref_line(name: str, value: bool | int | str) -> str:
    if isinstance(value, bool):
        v = "true" if value else "false"
    elif isinstance(value, int):
        v = str(value)
    else:
        v = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f'user_pref("{name}", {v});'


def strip_block(text: str) -> str:
    """user.js text without the keypost block."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.strip() == USER_JS_BEGIN:
            inside = True
        elif line.strip() == USER_JS_END and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def write_user_prefs(profile: Path, prefs: dict[str, bool | int | str]) -> None:
    """Replace the keypost block of PROFILE/user.js (created if needed); empty prefs remove it.

    Thunderbird copies user.js prefs into prefs.js at start; removing the block later does
    not reset a pref the user has since kept.
    """
    user_js = profile / "user.js"
    old = user_js.read_text("utf-8") if user_js.exists() else ""
    new = strip_block(old)
    if prefs:
        block = [USER_JS_BEGIN, *(pref_line(k, v) for k, v in prefs.items()), USER_JS_END]
        new = new + "\n".join(block) + "\n"
    if new.strip():
        user_js.write_text(new, "utf-8")
    elif user_js.exists():
        user_js.unlink()
