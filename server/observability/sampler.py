"""Background sampling of what has no per-RPC event: outbox backlog, tier state and connection pools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from server.observability.metrics import Metrics
from server.storage.observer import PoolReporter
from server.storage.redis.outbox import Flusher
from server.storage.repository import Repository

log = logging.getLogger(__name__)


class Sampler:
    """Every ``interval_s``, read the state of the tiers into gauges (on the event loop, never per RPC).

    Args:
        metrics: the gauges to set.
        interval_s: METRICS__SAMPLE_INTERVAL_S.
        tiers: name -> a callable that is True while the tier is up.
        backlog: the flusher's ``backlog`` (depth, oldest age), or None without write_behind.
        redis_pool: the cache, when it reports pool stats.
        postgres_pool: the store, when it reports pool stats.
    """

    def __init__(
        self,
        metrics: Metrics,
        interval_s: float,
        *,
        tiers: dict[str, Callable[[], bool]],
        backlog: Callable[[], Awaitable[tuple[int, float]]] | None,
        redis_pool: PoolReporter | None,
        postgres_pool: PoolReporter | None,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._tiers = {name: (metrics.tier_up.labels(name), up) for name, up in tiers.items()}
        self._backlog = backlog
        self._pools = [(metrics.redis_pool, redis_pool), (metrics.postgres_pool, postgres_pool)]
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Take one sample of every gauge."""
        for gauge, up in self._tiers.values():
            gauge.set(1 if up() else 0)
        for family, reporter in self._pools:
            if reporter is not None:
                for state, count in reporter.pool_stats().items():
                    family.labels(state).set(count)
        if self._backlog is not None:
            try:
                # Bounded: a frozen Redis must not stall the sampler for longer than one interval.
                depth, age = await asyncio.wait_for(self._backlog(), self._interval_s)
            except Exception as exc:  # noqa: BLE001 - Redis down or slow: keep the last values
                log.debug("cannot sample the outbox: %s", exc)
            else:
                self._metrics.outbox_depth.set(depth)
                self._metrics.outbox_oldest_age.set(age)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("metrics sampling failed")
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        """Sample now and then every interval, in a background task."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def build_sampler(
    metrics: Metrics,
    interval_s: float,
    *,
    repository: Repository,
    flusher: Flusher | None,
    cache: object | None,
    store: object,
) -> Sampler:
    """Build the sampler over a server's repository, flusher and pools."""
    tiers: dict[str, Callable[[], bool]] = {"store": lambda: not repository.store_health.down}
    redis_health = repository.redis_health
    if redis_health is not None:
        tiers["cache"] = lambda: not redis_health.down
    return Sampler(
        metrics,
        interval_s,
        tiers=tiers,
        backlog=flusher.backlog if flusher is not None else None,
        redis_pool=cache if isinstance(cache, PoolReporter) else None,
        postgres_pool=store if isinstance(store, PoolReporter) else None,
    )
