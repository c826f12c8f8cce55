"""PreferencesService: long-lived facts and preferences per user."""

from __future__ import annotations

import grpc

from chatmem.v1 import preferences_service_pb2 as pb
from chatmem.v1 import preferences_service_pb2_grpc as pb_grpc
from server.config import Settings
from server.interceptors import Pipeline
from server.services import convert, registry
from server.services.handler import unary
from server.storage.models import Durability
from server.storage.repository import Repository
from server.validation import Checker


def register(servicer: PreferencesService, server: grpc.aio.Server, pipeline: Pipeline) -> None:
    """Add the service to a server."""
    registry.register(server, servicer, pb.DESCRIPTOR.services_by_name["PreferencesService"], pipeline=pipeline)


class PreferencesService(pb_grpc.PreferencesServiceServicer):
    """The servicer: validate, call the repository, convert.

    Args:
        repository: the consistency policy over cache and store.
        settings: the server settings.
    """

    def __init__(self, repository: Repository, settings: Settings) -> None:
        self._repo = repository
        self._limits = settings.limits
        self.default_timeout_s = settings.grpc.default_timeout_s

    def _user(self, check: Checker, workspace_id: str, user_id: str) -> tuple[str, str]:
        return check.workspace(workspace_id), check.ident("user_id", user_id)

    def _key_count(self, check: Checker, field: str, n: int) -> None:
        if n > self._limits.max_preferences_per_request:
            check.fail(field, f"holds more than {self._limits.max_preferences_per_request} keys")

    @unary
    async def GetPreferences(  # noqa: N802 - gRPC method name
        self, request: pb.GetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPreferencesResponse:
        """Return some or all of a user's preferences, sorted by key."""
        check = Checker(self._limits)
        workspace, user = self._user(check, request.workspace_id, request.user_id)
        self._key_count(check, "keys", len(request.keys))
        check.keys("keys", request.keys)
        check.done()
        found = await self._repo.preferences.get(workspace, user)
        wanted = set(request.keys) if request.keys else None
        return pb.GetPreferencesResponse(
            preferences=[
                convert.preference(k, found.values[k]) for k in sorted(found.values) if wanted is None or k in wanted
            ],
            serving=convert.serving(found.served),
        )

    @unary
    async def SetPreferences(  # noqa: N802
        self, request: pb.SetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPreferencesResponse:
        """Upsert some keys."""
        check = Checker(self._limits)
        workspace, user = self._user(check, request.workspace_id, request.user_id)
        check.ident("request_id", request.request_id, required=False)
        if not request.preferences:
            check.fail("preferences", "must hold at least one key")
        self._key_count(check, "preferences", len(request.preferences))
        for key, value in request.preferences.items():
            check.ident(f'preferences["{key[:64]}"]', key)
            check.text(f'preferences["{key[:64]}"]', value, self._limits.max_preference_value_bytes)
        check.done()
        change, served = await self._repo.preferences.set(workspace, user, dict(request.preferences))
        return pb.SetPreferencesResponse(
            updated_count=change.affected,
            durability=int(Durability.PERSISTED),  # type: ignore[arg-type]
            serving=convert.serving(served),
        )

    @unary
    async def DeletePreferences(  # noqa: N802
        self, request: pb.DeletePreferencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeletePreferencesResponse:
        """Delete some keys, or all of them."""
        check = Checker(self._limits)
        workspace, user = self._user(check, request.workspace_id, request.user_id)
        check.ident("request_id", request.request_id, required=False)
        if request.all and request.keys:
            check.fail("keys", "must be empty when all is true")
        elif not request.all and not request.keys:
            check.fail("keys", "must name at least one key (or set all)")
        self._key_count(check, "keys", len(request.keys))
        check.keys("keys", request.keys)
        check.done()
        change, served = await self._repo.preferences.delete(
            workspace, user, None if request.all else list(request.keys)
        )
        return pb.DeletePreferencesResponse(deleted_count=change.affected, serving=convert.serving(served))
