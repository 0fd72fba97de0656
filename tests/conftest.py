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


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # tests/verify is the testinfra suite users run against their own hosts (--hosts=...);
    # without a host it would check this machine, so the main suite leaves it out and the
    # end-to-end tests run it against their test hosts.
    if collection_path.name == "verify" and collection_path.parent == REPO_ROOT / "tests":
        if not config.getoption("hosts", default=None):
            return True
    return None


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return test_cache_dir()
