"""Request bytes that are not a valid protobuf of the method's type get INVALID_ARGUMENT, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conftest import Harness
from tests.rpcs import Rpc, chatmem_methods

pytestmark = pytest.mark.integration

# Each is malformed in a different way: a bad tag, a length past the end, invalid UTF-8 in a string
# field (field 2 is a string in every chatmem request), and a truncated varint.
MALFORMED = [b"\xff\xff\xff", b"\x0a\x05abc", b"\x12\x02\xff\xfe", b"\x18\xff"]


@pytest.mark.parametrize("rpc", chatmem_methods(), ids=lambda r: r.name)
async def test_malformed_bytes_are_invalid_argument_with_bad_request(sqlite_api: Harness, rpc: Rpc) -> None:
    channel = sqlite_api.channel
    for raw in MALFORMED:
        if rpc.method.server_streaming:
            call = channel.unary_stream(rpc.path)(raw, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(rpc.path)(raw, timeout=5)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, err.details())
        status = rpc_status.from_call(err)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == ["request"]
        assert rpc.method.input_type.full_name in bad.field_violations[0].description
