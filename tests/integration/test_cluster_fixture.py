"""The Redis Cluster fixtures are real clusters: keys spread over 3 masters, a killed master fails over and rejoins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisError

from devtools.cluster import RedisCluster

pytestmark = pytest.mark.integration

KEYS = [f"fixture:{i}" for i in range(90)]


async def cluster_client(cluster: RedisCluster) -> AsyncRedisCluster:
    client = AsyncRedisCluster.from_url(cluster.url, decode_responses=True)
    await client.initialize()
    return client


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    c = await cluster_client(redis_cluster)
    yield c
    await c.aclose()


async def get_eventually(client: AsyncRedisCluster, key: str, timeout_s: float = 30.0) -> str | None:
    """GET through the failover: the client only learns the new topology after its calls to the dead node fail."""
    deadline = time.monotonic() + timeout_s
    for _ in range(600):
        try:
            value: str | None = await client.get(key)
            return value
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"GET {key} kept failing")


async def test_keys_spread_over_three_masters(redis_cluster: RedisCluster, client: AsyncRedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert all(n.role() == "master" for n in masters)
    for key in KEYS:
        await client.set(key, f"v-{key}")
    owners = {key: redis_cluster.master_for_key(key) for key in KEYS}
    assert {n.port for n in owners.values()} == {n.port for n in masters}
    for key in KEYS:
        assert await client.get(key) == f"v-{key}"
        # The node that master_for_key names holds the key itself (a wrong one would answer MOVED).
        assert owners[key].command("GET", key) == f"v-{key}"
    assert redis_cluster.master_for_slot(redis_cluster.key_slot(KEYS[0])) is owners[KEYS[0]]


async def test_killed_master_fails_over_and_rejoins(redis_cluster_replicas: RedisCluster) -> None:
    cluster = redis_cluster_replicas
    assert len(cluster.nodes) == 6
    client = await cluster_client(cluster)
    try:
        for key in KEYS:
            await client.set(key, f"v-{key}")
        cluster.wait_replicated()
        victim = cluster.masters()[0]
        (heir,) = cluster.replicas_of(victim)
        lost = [key for key in KEYS if cluster.master_for_key(key) is victim]
        assert lost

        assert cluster.kill_master(0) is victim
        assert not victim.running
        promoted = cluster.wait_failover(victim)
        assert promoted is heir
        assert promoted.role() == "master"
        assert all(cluster.master_for_key(key) is promoted for key in lost)
        for key in KEYS:
            assert await get_eventually(client, key) == f"v-{key}"

        cluster.restart_node(victim)
        assert victim.running
        assert victim.role() == "replica"
        assert victim.replication()["master_port"] == str(promoted.port)
        assert victim in cluster.replicas_of(promoted)
        assert victim.node_id not in {n.node_id for n in cluster.masters()}
        await client.set(lost[0], "after-rejoin")
        assert await client.get(lost[0]) == "after-rejoin"
    finally:
        await client.aclose()
