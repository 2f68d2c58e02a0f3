"""REDIS_MODE and the sentinel settings: validated when WSConfig() is built, the error naming the
variable; and what a client of each mode is built from (`backends.redis_connect.RedisTarget`)."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from fastapi_channels.backends.redis_connect import RedisTarget
from fastapi_channels.config import WSConfig

SENTINEL = {
    "REDIS_MODE": "sentinel",
    "REDIS_SENTINELS": "127.0.0.1:26379",
    "REDIS_SENTINEL_MASTER": "mymaster",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the machine: no WSConfig variable set, no .env in the cwd."""
    fields = {name.upper() for name in WSConfig.model_fields}
    for key in list(os.environ):
        if key.upper() in fields:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invalid(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    return str(info.value)


def test_standalone_is_the_default_and_needs_no_sentinel_settings() -> None:
    config = WSConfig(BACKEND_TYPE="redis")
    assert config.REDIS_MODE == "standalone"
    assert config.REDIS_SENTINELS == [] and config.REDIS_SENTINEL_MASTER == ""
    assert RedisTarget.from_config(config) == RedisTarget("redis://localhost:6379/0")


def test_sentinel_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MODE", "Sentinel")
    monkeypatch.setenv("REDIS_SENTINELS", " 10.0.0.1:26379, sentinel-2.internal:26380 ,[::1]:26381")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "s3ntinel")
    config = WSConfig()
    assert config.REDIS_MODE == "sentinel"
    assert config.REDIS_SENTINELS == [("10.0.0.1", 26379), ("sentinel-2.internal", 26380), ("::1", 26381)]
    assert config.REDIS_SENTINEL_MASTER == "mymaster"
    assert config.REDIS_SENTINEL_PASSWORD.get_secret_value() == "s3ntinel"
    assert "s3ntinel" not in repr(config)


def test_sentinel_settings_from_dot_env(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "REDIS_MODE=sentinel\nREDIS_SENTINELS=a:1,b:2\nREDIS_SENTINEL_MASTER=m\n", encoding="utf-8"
    )
    assert WSConfig().REDIS_SENTINELS == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("mode", ["clustered", "replicated", ""])
def test_an_unknown_mode_names_redis_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    assert "REDIS_MODE" in invalid(monkeypatch, REDIS_MODE=mode)


def test_cluster_mode_refuses_a_unix_socket_and_a_brace_in_the_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "naming one of the nodes" in invalid(
        monkeypatch, REDIS_MODE="cluster", REDIS_URL="unix:///tmp/r.sock"
    )
    message = invalid(
        monkeypatch, REDIS_MODE="cluster", REDIS_URL="redis://node:7000/0", REDIS_CHANNEL_PREFIX="app{1}:"
    )
    assert "REDIS_CHANNEL_PREFIX" in message and "hash tag" in message
    monkeypatch.setenv("REDIS_CHANNEL_PREFIX", "app{1}:")
    monkeypatch.delenv("REDIS_MODE")
    assert WSConfig().REDIS_CHANNEL_PREFIX == "app{1}:"  # a brace is fine off a cluster


def test_a_cluster_target_publishes_on_shards() -> None:
    target = RedisTarget(url="redis://node:7000/0", mode="cluster")
    assert target.sharded and not RedisTarget().sharded
    assert repr(RedisTarget(url="redis://:secret@node:7000/0", mode="cluster")) == (
        "RedisTarget(cluster: the Redis Cluster of redis://:***@node:7000/0)"
    )


def test_sentinel_mode_without_sentinels_names_redis_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    message = invalid(
        monkeypatch, REDIS_MODE="sentinel", REDIS_SENTINEL_MASTER="m", REDIS_URL="redis://:pw-x@h/0"
    )
    assert "REDIS_SENTINELS" in message and "requires" in message
    assert "pw-x" not in message  # the error shows the bad value, never the other settings


def test_sentinel_mode_without_a_master_name_names_redis_sentinel_master(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = invalid(monkeypatch, REDIS_MODE="sentinel", REDIS_SENTINELS="h:26379")
    assert "REDIS_SENTINEL_MASTER" in message and "requires" in message


@pytest.mark.parametrize(
    "sentinels",
    ["localhost", "host:", ":26379", "host:0", "host:65536", "host:port", "a b:1", "h:1,,x", "h:-1"],
)
def test_a_bad_host_port_names_redis_sentinels(monkeypatch: pytest.MonkeyPatch, sentinels: str) -> None:
    message = invalid(monkeypatch, **{**SENTINEL, "REDIS_SENTINELS": sentinels})
    assert "REDIS_SENTINELS" in message


def test_a_master_name_with_spaces_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "REDIS_SENTINEL_MASTER" in invalid(
        monkeypatch, **{**SENTINEL, "REDIS_SENTINEL_MASTER": "my master"}
    )


def test_sentinel_mode_needs_a_host_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "REDIS_URL" in invalid(monkeypatch, **SENTINEL, REDIS_URL="unix:///run/redis.sock")


def test_the_master_connections_take_the_url_password_db_and_tls_but_not_its_host() -> None:
    config = WSConfig(**SENTINEL, REDIS_URL="rediss://app:pw@ignored:1/4", REDIS_SENTINEL_PASSWORD="sp")
    target = RedisTarget.from_config(config)
    assert target.sentinels == (("127.0.0.1", 26379),) and target.master == "mymaster"
    assert target._master_options() == {"username": "app", "password": "pw", "db": 4, "ssl": True}
    assert target._sentinel_options(None)["password"] == "sp"
    assert "password" not in RedisTarget.from_config(WSConfig(**SENTINEL))._sentinel_options(None)


def test_a_target_never_shows_a_password() -> None:
    sentinel = RedisTarget(
        "redis://:pw-master@h/0", "sentinel", (("s1", 26379), ("s2", 26380)), "m", "pw-sent"
    )
    standalone = RedisTarget("redis://:pw-master@h/0")
    for text in (repr(sentinel), sentinel.describe(), repr(standalone), standalone.describe()):
        assert "pw-master" not in text and "pw-sent" not in text
    assert sentinel.describe() == "the master 'm' of the sentinels s1:26379,s2:26380"
