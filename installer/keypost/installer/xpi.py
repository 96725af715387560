"""Find the add-on's sources, check them, and pack them into a reproducible .xpi.

The sources are looked up in this order: $KEYPOST_EXTENSION_DIR; the `extension/` folder
inside this package (in the repository a symlink to the top-level extension/, so building a
wheel copies the add-on in as package data); the `extension/` folder of the source checkout
this package runs from (a checkout without symlink support).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from keypost.core.errors import KeypostError

# Development files in extension/ that are not part of the add-on.
EXCLUDED_TOP = frozenset({"tests", "package.json", "node_modules"})
# Fixed timestamp: the same sources give byte-identical .xpi files (idempotent installs).
ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class ExtensionError(KeypostError):
    """The add-on sources are missing or inconsistent."""


def find_extension_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    here = Path(__file__).resolve().parent
    candidates = []
    if env.get("KEYPOST_EXTENSION_DIR"):
        candidates.append(Path(env["KEYPOST_EXTENSION_DIR"]))
    candidates += [here / "extension", here.parents[2] / "extension"]
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    raise ExtensionError(
        "the add-on sources were not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "); set KEYPOST_EXTENSION_DIR to the extension/ folder of a keypost checkout"
    )


def extension_files(src: Path) -> list[str]:
    """Relative POSIX paths of the files that go into the .xpi, sorted."""
    out = []
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if not path.is_file() or rel.parts[0] in EXCLUDED_TOP:
            continue
        if any(p.startswith(".") for p in rel.parts):
            continue
        out.append(rel.as_posix())
    return sorted(out)


@dataclass(frozen=True)
class AddonInfo:
    addon_id: str
    version: str


def _manifest_refs(manifest: dict[str, object]) -> list[str]:
    """Files the manifest names (background scripts, icons, pages)."""
    refs: list[str] = []

    def add(value: object) -> None:
        if isinstance(value, str):
            refs.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                add(v)

    background = manifest.get("background")
    if isinstance(background, dict):
        for s in background.get("scripts", []):
            add(s)
    add(manifest.get("icons"))
    for key in ("compose_action", "browser_action", "action", "message_display_action"):
        section = manifest.get(key)
        if isinstance(section, dict):
            add(section.get("default_icon"))
            add(section.get("default_popup"))
    options = manifest.get("options_ui")
    if isinstance(options, dict):
        add(options.get("page"))
    return [r.lstrip("/") for r in refs if not r.startswith("__MSG_")]


_HTML_REF = re.compile(r"""(?:src|href)=["']([^"':]+)["']""")
_JS_IMPORT = re.compile(
    r"""(?:^|\s)(?:import|export)\s[^'"]*?from\s+["']([^"']+)["']|import\(["']([^"']+)["']\)"""
)


def check_extension(src: Path) -> tuple[AddonInfo, list[str]]:
    """Validate the sources: manifest JSON, referenced files, relative imports, locales.

    Returns the add-on's id/version and a list of problems (empty when all is well).
    """
    problems: list[str] = []
    try:
        manifest = json.loads((src / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExtensionError(f"extension manifest.json unreadable: {exc}") from exc
    gecko = manifest.get("browser_specific_settings", {}).get("gecko", {})
    info = AddonInfo(str(gecko.get("id", "")), str(manifest.get("version", "")))
    if not info.addon_id:
        problems.append("manifest.json has no browser_specific_settings.gecko.id")
    files = set(extension_files(src))
    for ref in _manifest_refs(manifest):
        if ref not in files:
            problems.append(f"manifest.json names {ref}, which is missing")
    for rel in sorted(files):
        text = (src / rel).read_text("utf-8") if rel.endswith((".js", ".html")) else ""
        refs: list[str] = []
        if rel.endswith(".html"):
            refs = _HTML_REF.findall(text)
        elif rel.endswith(".js"):
            refs = [a or b for a, b in _JS_IMPORT.findall(text)]
        for ref in refs:
            target = (Path(rel).parent / ref).as_posix() if not ref.startswith("/") else ref[1:]
            target = os.path.normpath(target).replace(os.sep, "/")
            if target not in files:
                problems.append(f"{rel} refers to {ref}, which is missing")
    locales = sorted(
        p.split("/")[1] for p in files if re.fullmatch(r"_locales/[^/]+/messages\.json", p)
    )
    default = manifest.get("default_locale")
    if default and default not in locales:
        problems.append(f"default_locale {default} has no _locales/{default}/messages.json")
    keysets = {
        loc: set(json.loads((src / "_locales" / loc / "messages.json").read_text("utf-8")))
        for loc in locales
    }
    if default in keysets:
        for loc, keys in keysets.items():
            if keys != keysets[default]:
                problems.append(f"_locales/{loc} keys differ from _locales/{default}")
        text = json.dumps(manifest)
        for key in re.findall(r"__MSG_(\w+)__", text):
            if key not in keysets[default]:
                problems.append(f"manifest.json uses __MSG_{key}__, which _locales/{default} lacks")
    return info, problems


def build_xpi(src: Path) -> tuple[AddonInfo, bytes]:
    """The .xpi bytes (a zip with manifest.json at the root). Raises ExtensionError."""
    info, problems = check_extension(src)
    if problems:
        raise ExtensionError("the add-on sources are inconsistent: " + "; ".join(problems))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in extension_files(src):
            zi = zipfile.ZipInfo(rel, ZIP_DATE)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, (src / rel).read_bytes())
    return info, buf.getvalue()
