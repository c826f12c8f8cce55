"""The Redis clients that bench.roundtrip compares: one awaitable call per client and operation, each checked once.

Clients: ``redis-py`` (redis.asyncio with hiredis), ``pipelined`` (chatmem's PipelinedRedis),
``glide`` (valkey-glide's asyncio GlideClient) and ``coredis``. The last two are not chatmem
requirements: install them into the environment that runs the bench to measure them; without them,
their variants are skipped with a message naming the package.

Operations: ``get`` (a GET of a 1-byte value) and ``evalsha`` (EVALSHA of a one-line script that
returns the last 50 elements of a list of 330-byte items: a cached window's shape, as chatmem's
reads are scripts), each through the client's own script call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

CLIENTS = ("redis-py", "pipelined", "glide", "coredis")
OPS = ("get", "evalsha")
# client -> (module to import, package to install)
OPTIONAL = {"glide": ("glide", "valkey-glide"), "coredis": ("coredis", "coredis")}

WINDOW_SCRIPT = "return redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)"
WINDOW_SHA = hashlib.sha1(WINDOW_SCRIPT.encode()).hexdigest()  # Redis names scripts by SHA-1
WINDOW_ITEMS = 50
ITEM = b"x" * 330
TIMEOUT_S = 5.0  # generous: a busy machine must not fail a run; the timeout is not what is measured

Call = Callable[[], Awaitable[Any]]


def missing(client: str) -> str | None:
    """Return the package to install for ``client``, or None when it can be imported here."""
    module, package = OPTIONAL.get(client, ("", ""))
    if module and importlib.util.find_spec(module) is None:
        return package
    return None


def version(client: str) -> str:
    """Return the installed version of the package behind ``client`` (for the report)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    package = {"redis-py": "redis", "pipelined": "chatmem (this tree)"}.get(client) or OPTIONAL[client][1]
    try:
        return f"{package} {dist_version(package)}"
    except PackageNotFoundError:
        return package


async def seed(port: int) -> None:
    """Write the GET key and the window list, and load the script, on the Redis at ``port``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port)
    try:
        await client.set("k", b"v")
        await client.delete("w")
        await client.rpush("w", *([ITEM] * WINDOW_ITEMS))
        if await client.script_load(WINDOW_SCRIPT) != WINDOW_SHA:
            raise RuntimeError("Redis named the script by another SHA-1")
    finally:
        await client.aclose()


def _check(op: str, reply: Any) -> None:
    # Every client must return the same thing, or the figures compare different work.
    expected: Any = b"v" if op == "get" else [ITEM] * WINDOW_ITEMS
    if (list(reply) if isinstance(reply, (list, tuple)) else reply) != expected:
        raise RuntimeError(f"unexpected {op} reply: {reply!r:.80}")


@contextlib.asynccontextmanager
async def open_call(client: str, op: str, port: int) -> AsyncIterator[Call]:
    """Open ``client`` to the Redis at ``port`` and yield a call that performs ``op`` (checked once first).

    The call is a bound method (or a partial of one), so awaiting it adds no coroutine frame of the bench's own.
    """
    async with _open(client, op, port) as call:
        _check(op, await call())
        yield call


@contextlib.asynccontextmanager
async def _open(client: str, op: str, port: int) -> AsyncIterator[Call]:
    if client == "redis-py":
        import redis.asyncio as aioredis

        redis_py = aioredis.Redis(port=port, socket_timeout=TIMEOUT_S)
        try:
            if op == "get":
                yield functools.partial(redis_py.get, "k")
            else:
                yield functools.partial(redis_py.evalsha, WINDOW_SHA, 1, "w", WINDOW_ITEMS)
        finally:
            await redis_py.aclose()
    elif client == "pipelined":
        from server.storage.redis.connection import PipelinedRedis

        pipelined = PipelinedRedis(port=port, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
        try:
            if op == "get":
                yield functools.partial(pipelined.execute, b"GET", b"k")
            else:
                yield functools.partial(pipelined.evalsha, WINDOW_SHA, 1, b"w", WINDOW_ITEMS)
        finally:
            await pipelined.aclose()
    elif client == "glide":
        async with _glide(op, port) as call:
            yield call
    elif client == "coredis":
        async with _coredis(op, port) as call:
            yield call
    else:
        raise ValueError(f"unknown client {client!r}")


@contextlib.asynccontextmanager
async def _glide(op: str, port: int) -> AsyncIterator[Call]:
    from glide import (  # type: ignore[import-not-found,unused-ignore]
        GlideClient,
        GlideClientConfiguration,
        NodeAddress,
        Script,
    )

    config = GlideClientConfiguration([NodeAddress("127.0.0.1", port)], request_timeout=int(TIMEOUT_S * 1000))
    glide = await GlideClient.create(config)
    try:
        if op == "get":
            yield functools.partial(glide.get, "k")
        else:
            # invoke_script is glide's script call: EVALSHA, with SCRIPT LOAD on NOSCRIPT, in its core.
            script = Script(WINDOW_SCRIPT)
            yield functools.partial(glide.invoke_script, script, keys=["w"], args=[str(WINDOW_ITEMS)])
    finally:
        await glide.close()


@contextlib.asynccontextmanager
async def _coredis(op: str, port: int) -> AsyncIterator[Call]:
    import coredis  # type: ignore[import-not-found,unused-ignore]

    # coredis 6 clients are async context managers (its connections run anyio task groups).
    async with coredis.Redis(port=port, stream_timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S) as client:
        if op == "get":
            yield functools.partial(client.get, "k")
        else:
            yield functools.partial(client.evalsha, WINDOW_SHA, keys=["w"], args=[WINDOW_ITEMS])


async def client_cpu_us(client: str, op: str, port: int, calls: int, warmup: int, concurrency: int) -> float:
    """Return this process's CPU microseconds (all threads) per ``op`` through ``client``, with no gRPC around it."""
    async with open_call(client, op, port) as call:

        async def worker(n: int) -> None:
            for _ in range(n):
                await call()

        async def run(total: int) -> None:
            share, extra = divmod(total, concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

        await run(warmup)
        before = resource.getrusage(resource.RUSAGE_SELF)
        await run(calls)
        after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    """Print one client's CPU per command alone (``python -m bench.redis_clients CLIENT/OP --port N``)."""
    import argparse

    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.redis_clients", description=main.__doc__)
    parser.add_argument("variant", help="CLIENT/OP, e.g. glide/evalsha")
    parser.add_argument("--port", type=int, required=True, help="a Redis seeded by seed()")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    client, op = args.variant.split("/")
    print(f"{uvloop.run(client_cpu_us(client, op, args.port, args.calls, args.warmup, args.concurrency)):.2f}")


if __name__ == "__main__":
    main()
