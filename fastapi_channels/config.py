"""WSConfig: every setting of the library, read from the environment and a `.env` file.

A bad value fails when WSConfig() is built, and pydantic's message names the variable.
Not for per-call options: those are method arguments.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["WSConfig"]


def _generated_server_id() -> str:
    return f"server-{uuid.uuid4().hex[:12]}"


class WSConfig(BaseSettings):
    """Settings named exactly as the environment variables that set them."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        # An invalid value is named, never shown: REDIS_URL may carry a password.
        hide_input_in_errors=True,
    )

    # Backend selection
    BACKEND_TYPE: Literal["memory", "redis"] = "memory"
    REDIS_URL: str = "redis://localhost:6379/0"
    # How the Redis is reached: one server at REDIS_URL; the master that Redis Sentinel names
    # (REDIS_URL then gives only the password, user name, db and rediss://, not the host); or a
    # Redis Cluster, REDIS_URL naming any of its nodes
    REDIS_MODE: Literal["standalone", "sentinel", "cluster"] = "standalone"
    REDIS_SENTINELS: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    """Sentinels as `host:port,host:port` (required with REDIS_MODE=sentinel)."""
    REDIS_SENTINEL_MASTER: str = ""
    """The master's name in the sentinels' `sentinel monitor <name> ...` (required in sentinel mode)."""
    REDIS_SENTINEL_PASSWORD: SecretStr = SecretStr("")
    """The sentinels' own `requirepass` (empty: they take no password); the master's is REDIS_URL's."""
    REDIS_CHANNEL_PREFIX: str = "ws:"
    REDIS_CLUSTER_PARTITIONS: int = Field(default=3, ge=1, le=64)  # redis_layout's bounds
    """In cluster mode, how many slots (hash tags) the state is split over: groups hash over
    them, the rest stays in the first. Each costs every server one pub/sub connection; set it to
    the number of masters (each then holds one on an evenly sliced cluster). All servers and
    emitters must agree: a server started with another value is refused. Unused elsewhere."""
    REDIS_REGISTRY_EXPIRY: int = Field(default=30, ge=2)
    REDIS_GROUP_EXPIRY: int = Field(default=86400, ge=3)
    """Seconds a group's state lives in Redis unless refreshed; each server refreshes its
    groups every quarter of it (at its next keeper tick, and ticks come at least every third
    of it). At least 3: a shorter life could end between two refreshes, and a group with
    members would vanish from Redis (its sends then owed to nobody)."""

    # Heartbeat
    WS_ENABLE_HEARTBEAT: bool = True
    WS_HEARTBEAT_INTERVAL: float = Field(default=30.0, gt=0)
    WS_HEARTBEAT_TIMEOUT: float = Field(default=60.0, gt=0)

    # Frames and the outbound buffer of each connection
    WS_MAX_MESSAGE_SIZE: int = Field(default=10 * 1024 * 1024, gt=0)
    WS_OUTBOUND_QUEUE_MESSAGES: int = Field(default=1024, ge=1)
    WS_OUTBOUND_QUEUE_BYTES: int = Field(default=4 * 1024 * 1024, ge=1)
    WS_SLOW_CONSUMER_POLICY: Literal["close", "drop_oldest", "drop_newest"] = "close"
    WS_CLOSE_TIMEOUT: float = Field(default=5.0, gt=0)

    # Broker reconnection
    WS_RECONNECT_MAX_ATTEMPTS: int = Field(default=5, ge=0)
    WS_RECONNECT_DELAY: float = Field(default=5.0, ge=0)

    # Delivery: raise DeliveryError from a send that cannot confirm it reached every server
    # with members (shortfalls are counted and reported either way)
    WS_STRICT_DELIVERY: bool = False
    # How long a join, leave or disconnect of a connection on another server waits for its owner
    WS_REMOTE_TIMEOUT: float = Field(default=10.0, gt=0)

    # History groups: their messages are stored and numbered, so a client that reconnects
    # gets what it missed (comma-separated glob patterns of group names; empty: none)
    WS_HISTORY_GROUPS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    WS_HISTORY_SIZE: int = Field(default=1000, ge=1, le=1_000_000)
    WS_HISTORY_TTL: int = Field(default=86400, ge=1)

    # Limits
    MAX_CONNECTIONS_PER_CLIENT: int = Field(default=1000, ge=1)
    MAX_TOTAL_CONNECTIONS: int = Field(default=200_000, ge=1)
    MAX_TOTAL_GROUPS: int = Field(default=5_000_000, ge=1)

    # Encoding of dict messages into frames
    WS_SERIALIZER: Literal["orjson", "json", "pickle"] = "orjson"
    WS_ALLOW_PICKLE: bool = False

    # Identity and observability
    SERVER_INSTANCE_ID: str = Field(default_factory=_generated_server_id)
    LOG_LEVEL: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    LOG_STATS: bool = True
    WS_STATS_INTERVAL: float = Field(default=60.0, gt=0)

    # Handshake checks
    WS_ALLOWED_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed to open a WebSocket (comma-separated); empty allows any, `*` too."""

    @field_validator("WS_ALLOWED_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("WS_HISTORY_GROUPS", mode="before")
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            return [pattern.strip() for pattern in value.split(",") if pattern.strip()]
        return value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("REDIS_URL")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        # The forms redis-py accepts; anything else would only fail at the first connection.
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in {"redis", "rediss", "unix"} or not rest:
            raise ValueError("must be redis://host:port/db, rediss://... or unix:///path")
        return value

    @field_validator("REDIS_MODE", mode="before")
    @classmethod
    def _check_redis_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # The sentinel checks are field validators (defaults are validated too), not a model
    # validator, so the error is located at the variable and never shows the other settings
    # (REDIS_URL may hold a password). Checked whatever BACKEND_TYPE says: a sentinel mode that
    # could never connect is a mistake found now rather than at the first connection.
    @field_validator("REDIS_MODE")
    @classmethod
    def _sentinel_needs_a_host_url(cls, value: str, info: ValidationInfo) -> str:
        if value == "sentinel" and str(info.data.get("REDIS_URL", "")).startswith("unix:"):
            raise ValueError("sentinel mode needs a redis:// or rediss:// REDIS_URL (sentinels name a host)")
        if value == "cluster" and str(info.data.get("REDIS_URL", "")).startswith("unix:"):
            raise ValueError("cluster mode needs a redis:// or rediss:// REDIS_URL naming one of the nodes")
        return value

    @field_validator("REDIS_CHANNEL_PREFIX")
    @classmethod
    def _prefix_is_a_hash_tag_on_a_cluster(cls, value: str, info: ValidationInfo) -> str:
        # On a cluster the prefix becomes every key's hash tag, `{<prefix>}`: a brace inside it
        # would end the tag early or start another, and the keys would scatter over slots.
        if info.data.get("REDIS_MODE") == "cluster" and ("{" in value or "}" in value):
            raise ValueError("in cluster mode the prefix is the keys' hash tag: it cannot hold '{' or '}'")
        return value

    @field_validator("REDIS_SENTINELS", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        # `host:port,host:port`; an IPv6 host in brackets: `[::1]:26379`.
        if isinstance(value, str):
            return [_sentinel_address(item.strip()) for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            return [_sentinel_address(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("REDIS_SENTINELS")
    @classmethod
    def _sentinels_in_sentinel_mode(
        cls, value: list[tuple[str, int]], info: ValidationInfo
    ) -> list[tuple[str, int]]:
        if info.data.get("REDIS_MODE") == "sentinel" and not value:
            raise ValueError("REDIS_MODE=sentinel requires REDIS_SENTINELS=host:port,host:port")
        return value

    @field_validator("REDIS_SENTINEL_MASTER")
    @classmethod
    def _check_master_name(cls, value: str, info: ValidationInfo) -> str:
        if value and (value != value.strip() or any(c.isspace() or not c.isprintable() for c in value)):
            raise ValueError("a sentinel master name has no spaces or control characters")
        if info.data.get("REDIS_MODE") == "sentinel" and not value:
            raise ValueError(
                "REDIS_MODE=sentinel requires REDIS_SENTINEL_MASTER=<the monitored master's name>"
            )
        return value

    @field_validator("SERVER_INSTANCE_ID")
    @classmethod
    def _check_server_id(cls, value: str) -> str:
        # The server id is the routing prefix of every channel name and part of topic names.
        from fastapi_channels.routing import validate_server_id

        return validate_server_id(value)

    @model_validator(mode="after")
    def _pickle_needs_opt_in(self) -> WSConfig:
        # Unpickling untrusted bytes runs arbitrary code: pickle is never a silent default.
        if self.WS_SERIALIZER == "pickle" and not self.WS_ALLOW_PICKLE:
            raise ValueError("WS_SERIALIZER=pickle requires WS_ALLOW_PICKLE=true (pickle can run code)")
        return self


def _sentinel_address(item: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as a pair; ValueError naming the bad item otherwise."""
    host, sep, port = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
        or any(c.isspace() or c in "/@[]" for c in host)
    ):
        raise ValueError(f"{item!r} is not host:port (REDIS_SENTINELS=host:port,host:port)")
    return host, int(port)
