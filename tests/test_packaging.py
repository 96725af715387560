"""The one `keypost` distribution: a PEP 420 namespace joined from the component roots.

One stray `keypost/__init__.py` silently turns the namespace into a regular package and
hides every other component, so the source tree and a freshly built wheel are checked.
Building the wheel takes a few seconds (an isolated build environment), done once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("core", "directory", "gateway", "host", "installer")
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "dist", "__pycache__", ".mypy_cache"}


def test_no_namespace_init_in_source_tree() -> None:
    offenders = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        if Path(dirpath).name == "keypost" and "__init__.py" in filenames:
            offenders.append(str(Path(dirpath, "__init__.py").relative_to(ROOT)))
    assert offenders == []
    for component in COMPONENTS:
        assert (ROOT / component / "keypost" / component / "__init__.py").is_file(), component


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build from a copy of the tree, so no build/ or egg-info lands in the work tree."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for component in COMPONENTS:
        shutil.copytree(ROOT / component, src / component, ignore=ignore)
    out = tmp / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (whl,) = out.glob("keypost-*.whl")
    return whl


@pytest.mark.timeout(300)
def test_wheel_is_a_namespace_with_every_component(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "keypost/__init__.py" not in names
    for component in COMPONENTS:
        assert f"keypost/{component}/__init__.py" in names, component
    assert "keypost/core/containers.py" in names
    assert "keypost/core/py.typed" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "keypost = keypost.core.cli:main" in text
    assert "container = keypost.core.cli_container:register" in text


@pytest.mark.timeout(300)
def test_wheel_imports_as_namespace(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    code = (
        "import keypost, keypost.core.containers, keypost.directory, keypost.gateway, "
        "keypost.host, keypost.installer; "
        "print(keypost.__file__); print(keypost.core.containers.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    namespace_file, containers_file = res.stdout.splitlines()
    assert namespace_file == "None"  # a namespace package has no __init__ file
    assert containers_file.startswith(str(target))
