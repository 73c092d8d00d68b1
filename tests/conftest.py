"""Shared fixtures: the real data sets beside the repository and an isolated decode cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real data sets lie in ../shared/datasets beside the repository (see its README); tests that need
# them skip cleanly where that folder is absent.
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of ../shared/datasets, or skip the test when it is not there."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is absent (real data sets live beside the repository)")
    return SHARED_DATASETS


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private decode cache, so tests on files they write never touch (or reuse) the user's cache."""
    cache = tmp_path / "lasnn-cache"
    monkeypatch.setenv("LASNN_CACHE", str(cache))
    return cache
