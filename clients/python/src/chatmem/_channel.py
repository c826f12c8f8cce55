"""Channels to a chatmem server: keepalive and size options that match the server's, TLS, and call metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
"""The address a server listens on when GRPC__ADDRESS is not set."""

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # The server lets clients ping every 30 s at most (GRPC__MIN_PING_INTERVAL_MS) and answers a faster
    # pinger with GOAWAY too_many_pings; 60 s also matches the server's own keepalive time.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # The server permits pings without calls, so an idle channel notices a dead peer before the next call.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # The server may send up to 64 MiB (GRPC__MAX_SEND_MESSAGE_BYTES); gRPC's default would refuse 4 MiB+.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Reconnect soon after a restart, so that a retried call or a resumed stream finds the new server.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Everything needed to open a channel to one server, so that async and blocking channels agree.

    Attributes:
        target: ``host:port`` (any gRPC target string).
        credentials: channel credentials for TLS; None for a plaintext channel.
        metadata: sent with every call (the API key's ``authorization`` header among them).
        options: gRPC channel options, the defaults first so that the caller's override them.
    """

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        api_key: str | None = None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> ChannelSpec:
        """Resolve the connect options into a spec (see ``MemoryClient.connect``).

        Raises:
            ValueError: ``credentials`` together with certificate options, or only half of a client key pair.
        """
        pem = (root_certificates, private_key, certificate_chain)
        if any(pem):
            if credentials is not None:
                raise ValueError("give either credentials or root_certificates/private_key/certificate_chain")
            if (private_key is None) != (certificate_chain is None):
                raise ValueError("private_key and certificate_chain go together (a client certificate for mTLS)")
            credentials = grpc.ssl_channel_credentials(*pem)
        elif credentials is None and tls:
            credentials = grpc.ssl_channel_credentials()
        pairs = list(metadata.items() if isinstance(metadata, Mapping) else metadata or ())
        if api_key:
            pairs.append(("authorization", f"Bearer {api_key}"))
        # gRPC requires lower-case metadata keys; a mixed-case one would fail every call with INTERNAL.
        normalized = tuple((k.lower(), v) for k, v in pairs)
        return cls(target, credentials, normalized, (*CHANNEL_OPTIONS, *options))

    def open_async(self) -> grpc.aio.Channel:
        """Open a grpc.aio channel; call it inside the event loop that will use the channel."""
        interceptors = (
            [_AsyncUnaryMetadata(self.metadata), _AsyncStreamMetadata(self.metadata)] if self.metadata else None
        )
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options, interceptors=interceptors)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options, interceptors=interceptors)

    def open_blocking(self) -> grpc.Channel:
        """Open a blocking channel with the same target, credentials, options and metadata."""
        if self.credentials is None:
            channel = grpc.insecure_channel(self.target, options=self.options)
        else:
            channel = grpc.secure_channel(self.target, self.credentials, options=self.options)
        if self.metadata:
            channel = grpc.intercept_channel(channel, _BlockingMetadata(self.metadata))
        return channel


def _add_metadata(details: Any, extra: tuple[tuple[str, str], ...], *, aio: bool) -> Any:
    # Both kinds of call details are namedtuples; only the metadata changes.
    merged = [*(details.metadata or ()), *extra]
    return details._replace(metadata=grpc.aio.Metadata(*merged) if aio else merged)


# grpc.aio files each interceptor under the first call kind it implements only (an if/elif on its
# base classes), so one class for both kinds would leave streams without the metadata (the API key):
# each kind gets its own class.
class _AsyncUnaryMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the connect-time metadata to every unary call of an async channel, raw stub calls included."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_add_metadata(client_call_details, self._metadata, aio=True), request)


class _AsyncStreamMetadata(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the connect-time metadata to every server-streaming call of an async channel (StreamHistory)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_add_metadata(client_call_details, self._metadata, aio=True), request)


class _BlockingMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the connect-time metadata to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_add_metadata(client_call_details, self._metadata, aio=False), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_add_metadata(client_call_details, self._metadata, aio=False), request)
