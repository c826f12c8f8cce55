"""Settings from the environment and .env: one section per concern (GRPC__, REDIS__, DATABASE__, AUTH__, ...)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.cores import available_cores

MAX_WORKERS = 64


class GrpcSettings(BaseModel):
    """The gRPC listener."""

    address: str = "127.0.0.1:50051"
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"] = Field(
        default="auto",
        description="server processes sharing the port (SO_REUSEPORT); auto: one per core with PostgreSQL, else 1",
    )
    reflection: bool | None = Field(default=None, description="unset: on iff AUTH__MODE=none")
    max_receive_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_send_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    default_timeout_s: float = Field(default=30.0, gt=0, description="applies when a client sends no deadline")
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    min_ping_interval_ms: int = 30_000
    tls_cert_file: str | None = Field(default=None, description="PEM certificate chain; with the key, serve TLS")
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = Field(
        default=None, description="PEM CA bundle that client certificates must chain to"
    )
    tls_require_client_auth: bool = Field(default=False, description="mTLS: refuse clients without a valid certificate")
    health_address: str | None = Field(default=None, description="extra plaintext listener serving only grpc.health.v1")
    # For `chatmem-server health`, which dials the main listener over TLS when no health_address is set.
    health_check_ca_file: str | None = Field(
        default=None, description="chatmem-server health: PEM CA bundle that verifies the server (unset: system roots)"
    )
    health_check_cert_file: str | None = Field(
        default=None, description="chatmem-server health: client certificate for mTLS"
    )
    health_check_key_file: str | None = None
    health_check_server_name: str | None = Field(
        default=None,
        description="chatmem-server health: name to verify (unset: the server certificate's first DNS name)",
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> GrpcSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("GRPC__TLS_CERT_FILE and GRPC__TLS_KEY_FILE go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("GRPC__TLS_CLIENT_CA_FILE needs GRPC__TLS_CERT_FILE and GRPC__TLS_KEY_FILE")
        if self.tls_require_client_auth and not self.tls_client_ca_file:
            raise ValueError("GRPC__TLS_REQUIRE_CLIENT_AUTH needs GRPC__TLS_CLIENT_CA_FILE")
        if bool(self.health_check_cert_file) != bool(self.health_check_key_file):
            raise ValueError("GRPC__HEALTH_CHECK_CERT_FILE and GRPC__HEALTH_CHECK_KEY_FILE go together")
        return self

    @property
    def tls(self) -> bool:
        """True when the main listener serves TLS."""
        return bool(self.tls_cert_file)

    @property
    def fixed_port(self) -> bool:
        """True when the address is ``host:port`` with a port other than 0 (workers can share only that)."""
        if self.address.startswith(("unix:", "unix-abstract:")):
            return False
        _host, sep, port = self.address.rpartition(":")
        return bool(sep) and port.isdigit() and int(port) != 0


class RedisSettings(BaseModel):
    """L1. Unset host and url mean no cache."""

    url: str | None = None
    host: str | None = None
    port: int = 6379
    password: str | None = None
    db: int = 0
    cluster: bool = False
    key_prefix: str = "chatmem"
    socket_timeout_s: float = Field(default=0.5, gt=0)
    connect_timeout_s: float = Field(default=0.5, gt=0)
    dead_after_s: float = Field(
        default=1.0,
        gt=0,
        description="cache scripts: Redis silent this long while a command waits is declared down (the breaker "
        "opens); a Redis that answers more slowly than the socket timeout but within this is waited for",
    )
    max_connections: int = Field(default=64, ge=1)
    probe_interval_s: float = Field(default=1.0, gt=0, description="how often a bypassed Redis is probed")
    autopipeline: bool = Field(
        default=True, description="cache scripts of concurrent requests share one connection and one write per tick"
    )
    ssl_ca_file: str | None = Field(default=None, description="rediss://: CA bundle that verifies the server")
    ssl_cert_file: str | None = Field(
        default=None, description="rediss://: client certificate (Redis tls-auth-clients)"
    )
    ssl_key_file: str | None = None

    def ssl_options(self) -> dict[str, str]:
        """Return the redis-py TLS keyword arguments for a rediss:// URL ({} for plaintext)."""
        if not self.resolved_url().startswith("rediss://"):
            return {}
        names = {"ssl_ca_certs": self.ssl_ca_file, "ssl_certfile": self.ssl_cert_file, "ssl_keyfile": self.ssl_key_file}
        return {k: v for k, v in names.items() if v}

    @property
    def enabled(self) -> bool:
        """True when a Redis is configured."""
        return bool(self.url or self.host)

    def resolved_url(self) -> str:
        """Return REDIS__URL, or one built from host, port, password and db."""
        if self.url:
            return self.url
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class DatabaseSettings(BaseModel):
    """L2. No url means the embedded SQLite file at sqlite_path."""

    url: str | None = None
    sqlite_path: str = "./chatmem.db"
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=10, ge=1)
    command_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)


class MemorySettings(BaseModel):
    """Memory policy."""

    thread_ttl_hours: float = Field(default=24, ge=1 / 3600, description="at least one second")
    user_ttl_days: float = Field(default=30, ge=1 / 86400, description="at least one second")
    max_thread_messages: int = Field(default=50, ge=1, le=1000)
    local_cache_threads: int = Field(
        default=10_000,
        ge=0,
        description="embedded SQLite without Redis: threads whose windows the in-process cache keeps (LRU); 0 = off",
    )
    write_mode: Literal["write_through", "write_behind"] | None = Field(
        default=None, description="unset: write_behind when Redis is configured, else write_through"
    )
    group_commit_max: int = Field(default=256, ge=1)
    request_id_ttl_hours: float = Field(default=24, gt=0, description="write_behind: how long Redis remembers ids")
    retention_days: float | None = Field(
        default=None, gt=0, description="delete L2 data older than this (fractions allowed); unset keeps it forever"
    )
    retention_sweep_interval_s: float = Field(default=3600.0, gt=0, description="time between retention sweeps")
    retention_sweep_batch: int = Field(default=1000, ge=1, le=100_000, description="rows per retention transaction")


class OutboxSettings(BaseModel):
    """The write_behind outbox and its flusher."""

    batch_size: int = Field(default=500, ge=1)
    block_ms: int = Field(default=100, ge=1, description="flush latency when idle; below REDIS__SOCKET_TIMEOUT_S")
    linger_ms: int = Field(
        default=5, ge=0, le=1000, description="after a partial batch, wait this long to gather the next (0: never)"
    )
    claim_idle_ms: int = Field(default=30_000, ge=100)
    claim_interval_s: float = Field(default=5.0, gt=0)
    max_unflushed_per_thread: int = Field(default=100_000, ge=10)
    drain_on_shutdown_s: float = Field(default=5.0, ge=0)


class LimitSettings(BaseModel):
    """Request limits; exceeding one is INVALID_ARGUMENT naming the field."""

    max_id_length: int = Field(default=128, ge=8)
    max_content_bytes: int = Field(default=1024 * 1024, ge=1)
    max_messages_per_append: int = Field(default=100, ge=1)
    max_metadata_entries: int = Field(default=64, ge=0)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=0)
    max_name_length: int = Field(default=256, ge=1)
    max_parts_per_message: int = Field(default=256, ge=1)
    max_envelope_bytes: int = Field(default=1024 * 1024, ge=0)
    max_inline_media_bytes: int = Field(default=64 * 1024, ge=0)
    default_page_size: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    default_stream_chunk: int = Field(default=500, ge=1)
    max_stream_chunk: int = Field(default=5000, ge=1)
    stream_frame_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_preferences_per_request: int = Field(default=100, ge=1)
    max_preference_value_bytes: int = Field(default=64 * 1024, ge=1)
    max_watchers_per_workspace: int = Field(
        default=1000, ge=0, description="open WatchThread calls per workspace in each process; 0 = no cap"
    )

    @model_validator(mode="after")
    def _pages_fit(self) -> LimitSettings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size exceeds max_page_size")
        if self.default_stream_chunk > self.max_stream_chunk:
            raise ValueError("default_stream_chunk exceeds max_stream_chunk")
        return self


class AuthSettings(BaseModel):
    """Authentication (AUTH__). ``none`` trusts the request's workspace_id."""

    mode: Literal["none", "api_key", "jwt"] = "none"
    key_cache_s: float = Field(default=5.0, ge=0, description="how long a verified API key is trusted; revocation lag")
    key_cache_max: int = Field(default=10_000, ge=1)
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 shared secret (at least 32 bytes)")
    jwt_public_key_file: str | None = Field(default=None, description="PEM public key: RSA means RS256, EC means ES256")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_workspace_claim: str = "workspace"
    jwt_role_claim: str = "role"
    jwt_leeway_s: float = Field(default=0.0, ge=0, le=300, description="clock skew allowed on exp/nbf/iat")
    max_failures: int = Field(default=10, ge=1, description="failed attempts per peer address within the window")
    failure_window_s: float = Field(default=60.0, gt=0)
    max_tracked_peers: int = Field(default=10_000, ge=1, description="bound of the failed-attempt table")

    @model_validator(mode="after")
    def _jwt_key(self) -> AuthSettings:
        if self.mode == "jwt":
            if (self.jwt_secret is None) == (self.jwt_public_key_file is None):
                raise ValueError("AUTH__MODE=jwt needs exactly one of AUTH__JWT_SECRET and AUTH__JWT_PUBLIC_KEY_FILE")
            if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
                raise ValueError("AUTH__JWT_SECRET must be at least 32 bytes")
        return self


class QuotaSettings(BaseModel):
    """Quotas and admission (QUOTA__). Every limit is off at 0; only the in-flight cap is on by default."""

    requests_per_s: float = Field(default=0, ge=0, description="per-workspace request rate; 0 = off")
    requests_burst: float = Field(default=0, ge=0, description="bucket size; 0 = one second's worth (at least 1)")
    append_bytes_per_s: float = Field(default=0, ge=0, description="per-workspace appended content bytes; 0 = off")
    append_bytes_burst: float = Field(default=0, ge=0, description="bucket size; 0 = one second's worth")
    max_in_flight: int = Field(default=1000, ge=0, description="per-process concurrent RPCs; 0 = off")
    max_streams_per_workspace: int = Field(default=0, ge=0, description="concurrent StreamHistory calls; 0 = off")
    in_flight_retry_s: float = Field(default=0.1, gt=0, description="the RetryInfo delay of a shed request")
    shed_margin: float = Field(
        default=1.5,
        ge=0,
        description="while the event loop lags, refuse a call (RESOURCE_EXHAUSTED) whose remaining deadline is below "
        "this multiple of the time recent calls took in the server; 0 = off",
    )


class MetricsSettings(BaseModel):
    """The Prometheus endpoint (METRICS__). Unset address means no endpoint and no metrics layer."""

    address: str | None = Field(
        default=None, pattern=r"^[^\s]*:\d{1,5}$", description="host:port of the /metrics HTTP endpoint"
    )
    sample_interval_s: float = Field(default=5.0, gt=0, description="how often pool, outbox and tier gauges update")


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (TRACING__); needs the ``otel`` extra."""

    enabled: bool = False


class WatchSettings(BaseModel):
    """WatchThread (WATCH__)."""

    poll_interval_s: float = Field(
        default=0.5, gt=0, description="how often watchers read the store while Redis notices cannot arrive"
    )
    recheck_interval_s: float = Field(
        default=2.0, gt=0, description="how often watchers read anyway while notices arrive (bounds a lost notice)"
    )


class Settings(BaseSettings):
    """All settings. Build once in __main__ (or a test) and pass down."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", env_file=".env", extra="ignore")

    grpc: GrpcSettings = GrpcSettings()
    redis: RedisSettings = RedisSettings()
    database: DatabaseSettings = DatabaseSettings()
    memory: MemorySettings = MemorySettings()
    outbox: OutboxSettings = OutboxSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()
    quota: QuotaSettings = QuotaSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    watch: WatchSettings = WatchSettings()
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    echo_request_id: bool = Field(default=True, description="send x-request-id back in trailing metadata")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.memory.write_mode == "write_behind" and not self.redis.enabled:
            raise ValueError("MEMORY__WRITE_MODE=write_behind needs Redis (REDIS__HOST or REDIS__URL)")
        if self.grpc.workers != "auto" and self.grpc.workers > 1:
            if not self.database.url:
                raise ValueError("GRPC__WORKERS > 1 needs PostgreSQL (DATABASE__URL): one SQLite file has one writer")
            if not self.grpc.fixed_port:
                raise ValueError("GRPC__WORKERS > 1 needs GRPC__ADDRESS with a fixed port (host:port, not port 0)")
        if self.memory.retention_days is not None and self.database.url and self.database.pool_max_size < 2:
            # The sweep holds one pooled connection for its lease and needs another for its work.
            raise ValueError("MEMORY__RETENTION_DAYS with PostgreSQL needs DATABASE__POOL_MAX_SIZE of at least 2")
        if self.outbox.block_ms >= self.redis.socket_timeout_s * 1000:
            raise ValueError("OUTBOX__BLOCK_MS must be below REDIS__SOCKET_TIMEOUT_S")
        return self

    @property
    def reflection_enabled(self) -> bool:
        """Whether to serve reflection: GRPC__REFLECTION, or by default only when auth is off."""
        if self.grpc.reflection is not None:
            return self.grpc.reflection
        return self.auth.mode == "none"

    @property
    def worker_count(self) -> int:
        """The server processes to run: GRPC__WORKERS, with ``auto`` resolved.

        ``auto`` is one worker per available core where several processes are safe: with PostgreSQL (every
        worker is then one more replica of a stateless tier) on a fixed TCP port. With the embedded SQLite
        store it is 1: one file has one writer, and its in-process state (the window cache) is exact only
        in the one process that owns the file.
        """
        if self.grpc.workers != "auto":
            return self.grpc.workers
        if not self.database.url or not self.grpc.fixed_port:
            return 1
        return min(available_cores(), MAX_WORKERS)

    @property
    def write_mode(self) -> str:
        """The effective write mode."""
        if self.memory.write_mode is not None:
            return self.memory.write_mode
        return "write_behind" if self.redis.enabled else "write_through"
