"""Host test fixtures: an in-memory keyring, private config/cache dirs, a real directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from host_support import (
    Directory,
    Factory,
    GatewayKeys,
    MemoryKeyring,
    PolicyDirectory,
    directory_available,
    start_directory,
)
from proc_util import stop

from keypost.core.containers import DirectoryCA
from keypost.host.actions import Host


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    try:
        yield kr
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def host_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    config, cache = tmp_path / "config", tmp_path / "cache"
    monkeypatch.setenv("KEYPOST_CONFIG_DIR", str(config))
    monkeypatch.setenv("KEYPOST_CACHE_DIR", str(cache))
    return config, cache


@pytest.fixture(scope="session")
def gateway_keys() -> GatewayKeys:
    return GatewayKeys(
        {d: rsa.generate_private_key(65537, 2048) for d in ("example.com", "example.org")}
    )


@pytest.fixture(scope="session")
def directory(
    tmp_path_factory: pytest.TempPathFactory, gateway_keys: GatewayKeys
) -> Iterator[Directory]:
    if not directory_available():
        pytest.skip("`keypost directory` is not registered")
    base = tmp_path_factory.mktemp("directory")
    served, proc = start_directory(base, gateway_keys)
    try:
        yield served
    finally:
        stop(proc, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ca() -> DirectoryCA:
    return DirectoryCA.generate()


@pytest.fixture
def setup(host_dirs: tuple[Path, Path], memory_keyring: MemoryKeyring, ca: DirectoryCA,
          gateway_keys: GatewayKeys) -> tuple[Host, Factory, MemoryKeyring]:
    factory = Factory(PolicyDirectory(ca, gateway_keys, "example.com"))
    host = Host(host_dirs[0], host_dirs[1], client_factory=factory)
    return host, factory, memory_keyring
