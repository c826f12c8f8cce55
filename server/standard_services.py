"""The standard gRPC services beside chatmem's: grpc.health.v1.Health (with List) and reflection (v1 and v1alpha)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_V1_PACKAGE = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]  # grpc ships no stubs
    """grpc.health.v1.Health: the public asyncio servicer, plus ``List``.

    grpcio-health-checking's asyncio servicer has no ``List`` (the generated base answers
    UNIMPLEMENTED and grpc logs an ERROR per call). The statuses are recorded here from the
    servicer's public ``set`` and ``enter_graceful_shutdown``, so ``List`` always agrees with ``Check``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {health.OVERALL_HEALTH: health_pb2.HealthCheckResponse.SERVING}
        self._shutting_down = False

    async def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored once graceful shutdown began).

        Args:
            service: the service's full name; "" is the whole server.
            status: a ``HealthCheckResponse.ServingStatus``.
        """
        await super().set(service, status)
        if not self._shutting_down:
            self._statuses[service] = status

    async def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING, for good."""
        await super().enter_graceful_shutdown()
        self._shutting_down = True
        self._statuses = dict.fromkeys(self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def List(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Return the status of every registered service (a snapshot)."""
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in self._statuses.items()}
        )


def _add_v1_descriptor(pool: Any) -> None:
    # grpcio-reflection ships only the v1alpha proto. v1 is the same file under another package (the
    # messages are identical on the wire); adding it lets clients that describe the v1 service find it.
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{_V1_PACKAGE}."
    proto.name, proto.package = _V1_FILE, _V1_PACKAGE
    proto.ClearField("options")  # the v1alpha file's java/go package options do not describe v1
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # assigning even "" would mark a scalar field as typed
                field.type_name = field.type_name.replace(old, new, 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    pool.Add(proto)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection as both grpc.reflection.v1 and grpc.reflection.v1alpha.

    One servicer from grpcio-reflection answers both: v1 differs from v1alpha only in its package name.

    Args:
        service_names: the full names of the services to list (the reflection services are added).
        server: the server to add them to.
    """
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = reflection.aio.ReflectionServicer((*service_names, REFLECTION_V1, REFLECTION_V1ALPHA), pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (REFLECTION_V1, REFLECTION_V1ALPHA)
        )
    )
