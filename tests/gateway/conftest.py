"""Fixtures for the gateway tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gw_directory import DirectoryWorld, start_directory
from gw_support import Pki, Sink, make_pki, running_sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as s:
        yield s


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[DirectoryWorld]:
    """One real `keypost directory serve` for the whole session."""
    w = start_directory(tmp_path_factory.mktemp("directory"), pki)
    try:
        yield w
    finally:
        w.stop()
