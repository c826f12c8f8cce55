"""Request bytes that are not a valid protobuf of the method's type get INVALID_ARGUMENT, never UNKNOWN."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.authkit import create_key, with_auth
from tests.conftest import Harness, make_settings, start_harness
from tests.rpcs import Rpc, chatmem_methods

pytestmark = pytest.mark.integration

# Each is malformed in a different way: a bad tag, a length past the end, invalid UTF-8 in a string
# field (field 2 is a string in every chatmem request), and a truncated varint.
MALFORMED = [b"\xff\xff\xff", b"\x0a\x05abc", b"\x12\x02\xff\xfe", b"\x18\xff"]


@pytest.fixture
async def keyed_api(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Harness, tuple[tuple[str, str], ...]]]:
    """A server in api_key mode, and the metadata of an admin key (every RPC's role)."""
    h = await start_harness(with_auth(make_settings(sqlite_path=str(tmp_path / "k.db")), mode="api_key"))
    key, _ = await create_key(h.app.store.keys, "acme", "admin")
    yield h, (("authorization", f"Bearer {key}"),)
    await h.close()


async def _malformed_call(channel: grpc.aio.Channel, rpc: Rpc, raw: bytes, metadata: Any) -> grpc.aio.AioRpcError:
    if rpc.method.server_streaming:
        call = channel.unary_stream(rpc.path)(raw, timeout=5, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(rpc.path)(raw, timeout=5, metadata=metadata)
    return info.value


@pytest.mark.parametrize("rpc", chatmem_methods(), ids=lambda r: r.name)
async def test_with_a_valid_credential_malformed_bytes_are_still_invalid_argument(keyed_api: Any, rpc: Rpc) -> None:
    h, metadata = keyed_api
    for raw in MALFORMED:
        err = await _malformed_call(h.channel, rpc, raw, metadata)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, err.details())
    # Without a credential the auth layer answers first.
    assert (await _malformed_call(h.channel, rpc, MALFORMED[0], None)).code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", chatmem_methods(), ids=lambda r: r.name)
async def test_malformed_bytes_are_invalid_argument_with_bad_request(sqlite_api: Harness, rpc: Rpc) -> None:
    channel = sqlite_api.channel
    for raw in MALFORMED:
        err = await _malformed_call(channel, rpc, raw, None)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, err.details())
        status = rpc_status.from_call(err)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == ["request"]
        assert rpc.method.input_type.full_name in bad.field_violations[0].description
