"""AdminService: operator operations (DeleteUser); the auth layer restricts it to admin credentials."""

from __future__ import annotations

import grpc

from chatmem.v1 import admin_service_pb2 as pb
from chatmem.v1 import admin_service_pb2_grpc as pb_grpc
from server import audit
from server.config import Settings
from server.interceptors import Pipeline
from server.services import convert, registry
from server.services.handler import unary
from server.storage.erasure import Eraser
from server.validation import Checker

# Threads listed and deleted per page; small, so that each store call stays short.
_USER_PAGE = 200


def register(servicer: AdminService, server: grpc.aio.Server, pipeline: Pipeline) -> None:
    """Add the service to a server."""
    registry.register(server, servicer, pb.DESCRIPTOR.services_by_name["AdminService"], pipeline=pipeline)


class AdminService(pb_grpc.AdminServiceServicer):
    """The servicer: validate, call the repository, audit, convert.

    Args:
        repository: the consistency policy over cache and store.
        settings: the server settings.
    """

    def __init__(self, eraser: Eraser, settings: Settings) -> None:
        self._eraser = eraser
        self._limits = settings.limits
        self.default_timeout_s = settings.grpc.default_timeout_s

    @unary
    async def DeleteUser(  # noqa: N802 - gRPC method name
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        """Delete every thread, message and preference of a user in a workspace, from every tier."""
        check = Checker(self._limits)
        workspace = check.workspace(request.workspace_id)
        user = check.ident("user_id", request.user_id)
        check.ident("request_id", request.request_id, required=False)
        check.done()
        try:
            erased = await self._eraser.delete_user(workspace, user, _USER_PAGE)
        except Exception as exc:
            # Some threads may be gone already: the attempt is on record too (a retry finishes it).
            audit.record(
                "delete_user",
                outcome=f"failed: {type(exc).__name__}",
                workspace_id=workspace,
                user_id=user,
                request_id=request.request_id,
                peer=context.peer(),
            )
            raise
        audit.record(
            "delete_user",
            outcome="done",
            workspace_id=workspace,
            user_id=user,
            deleted_threads=erased.threads,
            deleted_messages=erased.messages,
            deleted_preferences=erased.preferences,
            request_id=request.request_id,
            peer=context.peer(),
        )
        return pb.DeleteUserResponse(
            deleted_threads=erased.threads,
            deleted_messages=erased.messages,
            deleted_preferences=erased.preferences,
            serving=convert.serving(erased.served),
        )
