"""Settings from the environment and .env: one section per concern (GRPC__, REDIS__, DATABASE__, AUTH__, ...)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GrpcSettings(BaseModel):
    """The gRPC listener."""

    address: str = "127.0.0.1:50051"
    workers: int = Field(default=1, ge=1, le=64, description="server processes sharing the port (SO_REUSEPORT)")
    reflection: bool = True
    max_receive_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_send_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    default_timeout_s: float = Field(default=30.0, gt=0, description="applies when a client sends no deadline")
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    min_ping_interval_ms: int = 30_000


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
    max_connections: int = Field(default=64, ge=1)
    probe_interval_s: float = Field(default=1.0, gt=0, description="how often a bypassed Redis is probed")

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
    write_mode: Literal["write_through", "write_behind"] | None = Field(
        default=None, description="unset: write_behind when Redis is configured, else write_through"
    )
    group_commit_max: int = Field(default=256, ge=1)
    request_id_ttl_hours: float = Field(default=24, gt=0, description="write_behind: how long Redis remembers ids")


class OutboxSettings(BaseModel):
    """The write_behind outbox and its flusher."""

    batch_size: int = Field(default=500, ge=1)
    block_ms: int = Field(default=100, ge=1, description="flush latency when idle; below REDIS__SOCKET_TIMEOUT_S")
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
    default_page_size: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    default_stream_chunk: int = Field(default=500, ge=1)
    max_stream_chunk: int = Field(default=5000, ge=1)
    stream_frame_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_preferences_per_request: int = Field(default=100, ge=1)
    max_preference_value_bytes: int = Field(default=64 * 1024, ge=1)

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


class QuotaSettings(BaseModel):
    """Quotas and admission (QUOTA__). Every limit is off at 0; only the in-flight cap is on by default."""

    requests_per_s: float = Field(default=0, ge=0, description="per-workspace request rate; 0 = off")
    requests_burst: float = Field(default=0, ge=0, description="bucket size; 0 = one second's worth (at least 1)")
    append_bytes_per_s: float = Field(default=0, ge=0, description="per-workspace appended content bytes; 0 = off")
    append_bytes_burst: float = Field(default=0, ge=0, description="bucket size; 0 = one second's worth")
    max_in_flight: int = Field(default=1000, ge=0, description="per-process concurrent RPCs; 0 = off")
    max_streams_per_workspace: int = Field(default=0, ge=0, description="concurrent StreamHistory calls; 0 = off")
    in_flight_retry_s: float = Field(default=0.1, gt=0, description="the RetryInfo delay of a shed request")


class MetricsSettings(BaseModel):
    """The Prometheus endpoint (METRICS__). Unset address means no endpoint and no metrics layer."""

    address: str | None = Field(
        default=None, pattern=r"^[^\s]*:\d{1,5}$", description="host:port of the /metrics HTTP endpoint"
    )
    sample_interval_s: float = Field(default=5.0, gt=0, description="how often pool, outbox and tier gauges update")


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (TRACING__); needs the ``otel`` extra."""

    enabled: bool = False


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
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    echo_request_id: bool = Field(default=True, description="send x-request-id back in initial metadata")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.memory.write_mode == "write_behind" and not self.redis.enabled:
            raise ValueError("MEMORY__WRITE_MODE=write_behind needs Redis (REDIS__HOST or REDIS__URL)")
        if self.grpc.workers > 1 and not self.database.url:
            raise ValueError("GRPC__WORKERS > 1 needs PostgreSQL (DATABASE__URL): one SQLite file has one writer")
        if self.outbox.block_ms >= self.redis.socket_timeout_s * 1000:
            raise ValueError("OUTBOX__BLOCK_MS must be below REDIS__SOCKET_TIMEOUT_S")
        return self

    @property
    def write_mode(self) -> str:
        """The effective write mode."""
        if self.memory.write_mode is not None:
            return self.memory.write_mode
        return "write_behind" if self.redis.enabled else "write_through"
