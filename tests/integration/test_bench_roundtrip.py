"""bench.roundtrip's Redis clients on a real Redis: each installed one measures, a wrong reply is refused, a missing one is named.

No timing is asserted: the figures themselves are the benchmark's business.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from bench import redis_clients
from bench.redis_clients import CLIENTS, OPS, client_cpu_us, missing, open_call, seed
from bench.roundtrip import _variants, measure
from devtools.redis import RedisProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    redis = RedisProcess()
    redis.start()
    yield redis.port
    redis.close()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("client", [c for c in CLIENTS if not missing(c)])
async def test_each_installed_client_runs_each_op(redis_port: int, client: str, op: str) -> None:
    await seed(redis_port)
    used = await client_cpu_us(client, op, redis_port, calls=40, warmup=4, concurrency=4)
    assert used > 0


async def test_a_wrong_reply_is_refused(redis_port: int) -> None:
    import redis.asyncio as aioredis

    await seed(redis_port)
    client = aioredis.Redis(port=redis_port)
    await client.rpop("w")  # 49 items where the script must return 50
    await client.aclose()
    with pytest.raises(RuntimeError, match="unexpected evalsha reply"):
        async with open_call("pipelined", "evalsha", redis_port):
            pass


def test_a_missing_client_is_skipped_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(redis_clients.OPTIONAL, "glide", ("no_such_module_chatmem", "valkey-glide"))
    variants = _variants(["pipelined", "glide"], ["get"], alone=False)
    assert variants == ["none", "pipelined/get"]
    assert "valkey-glide is not installed" in capsys.readouterr().out


def test_the_handler_variant_serves_and_is_measured(redis_port: int) -> None:
    asyncio.run(seed(redis_port))
    used = measure("pipelined/evalsha", redis_port, calls=30, warmup=5, concurrency=2)
    assert math.isfinite(used) and used >= 0
