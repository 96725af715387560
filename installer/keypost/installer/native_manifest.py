"""The native messaging manifest and the launcher it points at, built as values."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from keypost.installer.errors import InstallError
from keypost.installer.manifest_locations import ADDON_ID, HOST_NAME, OS


def host_manifest(
    launcher: Path, name: str = HOST_NAME, addon_ids: Sequence[str] = (ADDON_ID,)
) -> dict[str, object]:
    """The JSON object Thunderbird reads: `path` must be absolute (Linux/macOS require it)."""
    if not launcher.is_absolute():
        raise ValueError(f"launcher path must be absolute: {launcher}")
    return {
        "name": name,
        "description": "keypost native messaging host (key container lookup and S/MIME encryption)",
        "path": str(launcher),
        "type": "stdio",
        "allowed_extensions": list(addon_ids),
    }


def managed_storage_manifest(data: dict[str, str], addon_id: str = ADDON_ID) -> dict[str, object]:
    """A managed storage manifest: settings an administrator pushes to the add-on."""
    return {
        "name": addon_id,
        "description": "keypost settings preset by the administrator",
        "type": "storage",
        "data": dict(data),
    }


def dumps(obj: dict[str, object]) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def launcher_name(os_name: OS) -> str:
    return "keypost-host.cmd" if os_name == "win32" else "keypost-host"


def launcher_script(os_name: OS, python: str | None = None) -> str:
    """A script that runs the host with the Python of the environment keypost is installed in.

    The interpreter path is baked in, so re-running the installer after the environment moved
    (or after an upgrade) rewrites it; Thunderbird passes the manifest path and add-on id as
    arguments, which the host receives unchanged.
    """
    exe = python or sys.executable
    if os_name == "win32":
        if '"' in exe:
            raise ValueError(f"interpreter path contains a quote: {exe}")
        # cmd expands %NAME% in a batch line even inside quotes: a literal % is %%.
        return f'@echo off\r\n"{exe.replace("%", "%%")}" -m keypost.host %*\r\n'
    quoted = "'" + exe.replace("'", "'\"'\"'") + "'"
    return (
        "#!/bin/sh\n"
        "# Written by `keypost install thunderbird`; re-run it after moving keypost.\n"
        f'exec {quoted} -m keypost.host "$@"\n'
    )


def launcher_bytes(os_name: OS, python: str | None = None, codepage: int | None = None) -> bytes:
    """The launcher file's bytes. cmd reads a batch file in the console's code page, the
    OEM one (850 on German or French Windows, 437 in the US; 65001 with "Use Unicode UTF-8
    for worldwide language support"), not in UTF-8: C:\\Users\\J\u00fcrgen written as
    UTF-8 would name a folder that does not exist. sh takes the bytes as they are."""
    text = launcher_script(os_name, python)
    if os_name != "win32":
        return text.encode("utf-8")
    cp = codepage or oem_codepage()
    try:
        return text.encode(f"cp{cp}")
    except LookupError:  # a code page Python has no codec for (708, ASMO Arabic)
        raise InstallError(
            f"the console code page {cp}, the one cmd reads the launcher in, is one Python"
            " cannot write; switch the system locale's code page (e.g. to 720 or 65001)"
        ) from None
    except UnicodeEncodeError:
        raise InstallError(
            f"the interpreter path {python or sys.executable} cannot be written in code page"
            f" {cp}, the one cmd reads the launcher in; give --python its short (8.3) path"
            " (`for %I in (\"PATH\") do @echo %~sI`) or install keypost under a path"
            " of that code page's characters"
        ) from None


def oem_codepage() -> int:
    """The code page cmd reads batch files in (Windows); 437 elsewhere, where only tests
    write a Windows launcher."""
    if sys.platform == "win32":
        import ctypes

        return int(ctypes.windll.kernel32.GetOEMCP())
    return 437
