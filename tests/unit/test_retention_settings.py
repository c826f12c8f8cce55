"""MEMORY__RETENTION_* settings: unset keeps data forever, fractions are allowed, zero or less is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.app import sweeper_of
from server.config import MemorySettings, Settings
from server.storage.repository import Policy, Repository
from server.storage.sql.sqlite.store import SqliteStore


def test_retention_is_off_by_default() -> None:
    memory = MemorySettings()
    assert memory.retention_days is None
    assert memory.retention_sweep_interval_s > 0 and memory.retention_sweep_batch >= 1


@pytest.mark.parametrize("days", [0, -1, -0.5])
def test_retention_must_be_positive(days: float) -> None:
    with pytest.raises(ValidationError, match="retention_days"):
        MemorySettings(retention_days=days)


@pytest.mark.parametrize(("field", "value"), [("retention_sweep_interval_s", 0), ("retention_sweep_batch", 0)])
def test_sweep_interval_and_batch_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        MemorySettings(**{field: value})


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY__RETENTION_DAYS", "0.25")
    monkeypatch.setenv("MEMORY__RETENTION_SWEEP_INTERVAL_S", "60")
    monkeypatch.setenv("MEMORY__RETENTION_SWEEP_BATCH", "50")
    memory = Settings(_env_file=None).memory  # type: ignore[call-arg]
    assert (memory.retention_days, memory.retention_sweep_interval_s, memory.retention_sweep_batch) == (0.25, 60, 50)


async def test_a_sweeper_exists_only_with_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMORY__RETENTION_DAYS", raising=False)
    store = SqliteStore(":memory:")
    repo = Repository(store, None, Policy(window=5))
    try:
        assert sweeper_of(Settings(_env_file=None), repo, store) is None  # type: ignore[call-arg]
        kept = Settings(_env_file=None, memory=MemorySettings(retention_days=7))  # type: ignore[call-arg]
        assert sweeper_of(kept, repo, store) is not None
    finally:
        await store.close()


def test_retention_on_postgres_needs_two_pool_connections() -> None:
    with pytest.raises(ValidationError, match="POOL_MAX_SIZE"):
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            memory={"retention_days": 30},
            database={"url": "postgresql://x@127.0.0.1/db", "pool_min_size": 1, "pool_max_size": 1},
        )
    Settings(_env_file=None, memory={"retention_days": 30}, database={"pool_max_size": 1})  # type: ignore[call-arg]
