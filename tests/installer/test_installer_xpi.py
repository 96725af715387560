"""The .xpi built from extension/: valid manifest, every referenced file, en+de locales."""

from __future__ import annotations

import io
import json
import posixpath
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from keypost.installer.xpi import ExtensionError, build_xpi, check_extension, find_extension_dir

REPO = Path(__file__).resolve().parents[2]


def _xpi() -> zipfile.ZipFile:
    _info, data = build_xpi(find_extension_dir({}))
    return zipfile.ZipFile(io.BytesIO(data))


def test_sources_found_in_the_package_or_checkout() -> None:
    # installer/keypost/installer/extension is a symlink to extension/, so a wheel ships the
    # add-on as package data; in the checkout both candidates are the same folder.
    assert find_extension_dir({}).resolve() == (REPO / "extension").resolve()


def test_env_override_wins(tmp_path: Path) -> None:
    shutil.copytree(REPO / "extension", tmp_path / "ext")
    assert find_extension_dir({"KEYPOST_EXTENSION_DIR": str(tmp_path / "ext")}) == tmp_path / "ext"


def test_xpi_manifest_is_mv3_with_id_and_min_version() -> None:
    zf = _xpi()
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["manifest_version"] == 3
    gecko = manifest["browser_specific_settings"]["gecko"]
    assert gecko["id"] == "keypost@keypost.example"
    assert gecko["strict_min_version"] == "128.0"
    for perm in ("compose", "messagesImport", "accountsRead", "storage", "nativeMessaging"):
        assert perm in manifest["permissions"]
    assert "compose_action" in manifest


def test_xpi_holds_every_referenced_file_and_no_dev_files() -> None:
    zf = _xpi()
    names = set(zf.namelist())
    manifest = json.loads(zf.read("manifest.json"))
    for ref in [
        *manifest["background"]["scripts"],
        manifest["options_ui"]["page"],
        manifest["compose_action"]["default_icon"],
        "popup/popup.html",
    ]:
        assert ref in names, ref
    for name in names:
        if not name.endswith((".js", ".html")):
            continue
        text = zf.read(name).decode("utf-8")
        refs = re.findall(r'from\s+"(\.[^"]+)"', text) + re.findall(r'src="([^":]+)"', text)
        for ref in refs:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), ref))
            assert target in names, f"{name} refers to {ref}"
    assert not any(n.startswith(("tests/", "package.json")) for n in names)


def test_locales_en_and_de_have_the_same_keys() -> None:
    zf = _xpi()
    en = json.loads(zf.read("_locales/en/messages.json"))
    de = json.loads(zf.read("_locales/de/messages.json"))
    assert set(en) == set(de)
    assert len(en) > 20


def test_build_is_reproducible() -> None:
    src = find_extension_dir({})
    assert build_xpi(src)[1] == build_xpi(src)[1]


def test_check_extension_reports_missing_files_and_locale_drift(tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    shutil.copytree(REPO / "extension", ext)
    (ext / "popup" / "popup.js").unlink()
    de = json.loads((ext / "_locales/de/messages.json").read_text("utf-8"))
    de.pop("badgeOn")
    (ext / "_locales/de/messages.json").write_text(json.dumps(de), "utf-8")
    _info, problems = check_extension(ext)
    assert any("popup.js" in p for p in problems), problems
    assert any("_locales/de" in p for p in problems), problems
    with pytest.raises(ExtensionError):
        build_xpi(ext)
