"""Shared test configuration: where built and downloaded test artefacts are cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_cache_dir() -> Path:
    """Artefacts worth keeping between runs (root filesystems, unpacked binaries, builds).

    `GPUNODE_TEST_CACHE` overrides the default `.cache/` at the repository root.
    """
    path = Path(os.environ.get("GPUNODE_TEST_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


test_cache_dir.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return test_cache_dir()
