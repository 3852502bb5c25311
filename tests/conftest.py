"""Shared fixtures: the bundled London crops, the shared data folder, a private cache, one engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from faceaudit.demo import bundled_manifest
from faceaudit.engines.base import Engine
from pgserver import postgres_db, postgres_dsn  # noqa: F401  (fixtures: a throw-away PostgreSQL server)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACEAUDIT_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's embedding cache from a test."""
    monkeypatch.setenv("FACEAUDIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_manifest() -> Path:
    return bundled_manifest()


@pytest.fixture(scope="session")
def tiny(tiny_manifest: Path) -> pd.DataFrame:
    df = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    df["file"] = [str(tiny_manifest.parent / p) for p in df["path"]]
    return df


@pytest.fixture(scope="session")
def lfw() -> Path:
    path = SHARED_DATA / "lfw"
    if not (path / "pairs.txt").is_file():
        pytest.skip(f"LFW not available at {path} (set FACEAUDIT_DATA to the folder holding lfw/)")
    return path


@pytest.fixture(scope="session")
def engine() -> Engine:
    from faceaudit.api import load_engine

    return load_engine()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A gallery's database, each test run on both: None for the default SQLite file in the gallery folder,
    else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    yield str(request.getfixturevalue("postgres_db"))
