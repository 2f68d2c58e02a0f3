"""WSConfig: every setting from the environment or a .env file, validated when built."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pydantic
import pytest

from fastapi_channels.config import WSConfig
from fastapi_channels.routing import server_of, validate_name


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the machine: no WSConfig variable set, no .env in the cwd."""
    fields = {name.upper() for name in WSConfig.model_fields}
    for key in list(os.environ):
        if key.upper() in fields:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    config = WSConfig()
    assert config.BACKEND_TYPE == "memory"
    assert config.REDIS_URL == "redis://localhost:6379/0"
    assert config.REDIS_CHANNEL_PREFIX == "ws:"
    assert config.REDIS_REGISTRY_EXPIRY == 30
    assert config.REDIS_GROUP_EXPIRY == 86400
    assert config.WS_ENABLE_HEARTBEAT is True
    assert config.WS_HEARTBEAT_INTERVAL == 30.0
    assert config.WS_HEARTBEAT_TIMEOUT == 60.0
    assert config.WS_MAX_MESSAGE_SIZE == 10 * 1024 * 1024
    assert config.WS_RECONNECT_MAX_ATTEMPTS == 5
    assert config.WS_RECONNECT_DELAY == 5.0
    assert config.MAX_CONNECTIONS_PER_CLIENT == 1000
    assert config.MAX_TOTAL_CONNECTIONS == 200_000
    assert config.MAX_TOTAL_GROUPS == 5_000_000
    assert config.WS_SERIALIZER == "orjson"
    assert config.WS_ALLOW_PICKLE is False
    assert config.LOG_LEVEL == "INFO"
    assert config.LOG_STATS is True
    assert config.WS_ALLOWED_ORIGINS == []


ENV_CASES = [
    ("BACKEND_TYPE", "redis", "redis"),
    ("REDIS_URL", "redis://cache.internal:6380/3", "redis://cache.internal:6380/3"),
    ("REDIS_CHANNEL_PREFIX", "myapp:", "myapp:"),
    ("WS_HEARTBEAT_INTERVAL", "12.5", 12.5),
    ("WS_HEARTBEAT_TIMEOUT", "45", 45.0),
    ("WS_MAX_MESSAGE_SIZE", "2048", 2048),
    ("WS_RECONNECT_MAX_ATTEMPTS", "0", 0),
    ("WS_RECONNECT_DELAY", "0.25", 0.25),
    ("MAX_CONNECTIONS_PER_CLIENT", "3", 3),
    ("MAX_TOTAL_CONNECTIONS", "77", 77),
    ("MAX_TOTAL_GROUPS", "9", 9),
    ("SERVER_INSTANCE_ID", "node-7", "node-7"),
    ("LOG_LEVEL", "DEBUG", "DEBUG"),
    ("LOG_LEVEL", "warning", "WARNING"),
    ("LOG_STATS", "false", False),
    ("LOG_STATS", "0", False),
    ("WS_ENABLE_HEARTBEAT", "false", False),
    ("WS_ENABLE_HEARTBEAT", "1", True),
    ("REDIS_REGISTRY_EXPIRY", "5", 5),
    ("REDIS_GROUP_EXPIRY", "3600", 3600),
    ("WS_SERIALIZER", "json", "json"),
    (
        "WS_ALLOWED_ORIGINS",
        "https://a.example/, https://b.example",
        ["https://a.example", "https://b.example"],
    ),
]


@pytest.mark.parametrize(("var", "raw", "expected"), ENV_CASES)
def test_reads_env_var(monkeypatch: pytest.MonkeyPatch, var: str, raw: str, expected: object) -> None:
    default = getattr(WSConfig(), var)
    monkeypatch.setenv(var, raw)
    value = getattr(WSConfig(), var)
    assert value == expected
    assert type(value) is type(expected)
    if var not in {"SERVER_INSTANCE_ID"}:
        assert value != default or raw.lower() in {"1", "true"}


def test_env_var_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ws_heartbeat_interval", "3")
    assert WSConfig().WS_HEARTBEAT_INTERVAL == 3.0


def test_server_instance_id_generated_and_unique() -> None:
    ids = {WSConfig().SERVER_INSTANCE_ID for _ in range(20)}
    assert len(ids) == 20
    for server_id in ids:
        assert server_id.startswith("server-")
        assert len(server_id) == len("server-") + 12
        assert validate_name("server", server_id) == server_id
        assert server_of(server_id + "!tok") == server_id


def test_reads_dot_env_file(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "BACKEND_TYPE=redis\n"
        "REDIS_URL=redis://from-dotenv:6379/1\n"
        "WS_HEARTBEAT_INTERVAL=7\n"
        "MAX_TOTAL_GROUPS=11\n"
        "SERVER_INSTANCE_ID=dotenv-node\n"
        "LOG_STATS=false\n"
        "UNRELATED_SETTING=ignored\n",
        encoding="utf-8",
    )
    config = WSConfig()
    assert config.BACKEND_TYPE == "redis"
    assert config.REDIS_URL == "redis://from-dotenv:6379/1"
    assert config.WS_HEARTBEAT_INTERVAL == 7.0
    assert config.MAX_TOTAL_GROUPS == 11
    assert config.SERVER_INSTANCE_ID == "dotenv-node"
    assert config.LOG_STATS is False


def test_environment_overrides_dot_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("WS_HEARTBEAT_INTERVAL=7\n", encoding="utf-8")
    monkeypatch.setenv("WS_HEARTBEAT_INTERVAL", "9")
    assert WSConfig().WS_HEARTBEAT_INTERVAL == 9.0


def test_bad_value_in_dot_env_names_the_variable(clean_env: Path) -> None:
    (clean_env / ".env").write_text("MAX_TOTAL_CONNECTIONS=lots\n", encoding="utf-8")
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    assert "MAX_TOTAL_CONNECTIONS" in str(info.value)


def test_keyword_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TOTAL_GROUPS", "9")
    assert WSConfig(MAX_TOTAL_GROUPS=4).MAX_TOTAL_GROUPS == 4


BAD_VALUES = [
    ("BACKEND_TYPE", "kafka"),
    ("REDIS_REGISTRY_EXPIRY", "1"),
    ("REDIS_REGISTRY_EXPIRY", "soon"),
    ("REDIS_GROUP_EXPIRY", "0"),
    ("REDIS_GROUP_EXPIRY", "2"),  # could end between two refreshes (at least 3)
    ("WS_HEARTBEAT_INTERVAL", "0"),
    ("WS_HEARTBEAT_INTERVAL", "often"),
    ("WS_HEARTBEAT_TIMEOUT", "-1"),
    ("WS_MAX_MESSAGE_SIZE", "0"),
    ("WS_MAX_MESSAGE_SIZE", "1.5"),
    ("WS_RECONNECT_MAX_ATTEMPTS", "-1"),
    ("WS_RECONNECT_DELAY", "-0.5"),
    ("MAX_CONNECTIONS_PER_CLIENT", "0"),
    ("MAX_TOTAL_CONNECTIONS", "0"),
    ("MAX_TOTAL_GROUPS", "-3"),
    ("SERVER_INSTANCE_ID", "bad:id"),
    ("SERVER_INSTANCE_ID", "has space"),
    ("SERVER_INSTANCE_ID", "srv!1"),
    ("SERVER_INSTANCE_ID", "x" * 101),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_STATS", "maybe"),
    ("WS_ENABLE_HEARTBEAT", "sometimes"),
    ("WS_SERIALIZER", "yaml"),
    ("WS_ALLOW_PICKLE", "perhaps"),
]


@pytest.mark.parametrize(("var", "raw"), BAD_VALUES)
def test_bad_value_raises_naming_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, raw: str) -> None:
    monkeypatch.setenv(var, raw)
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    assert var in str(info.value)


@pytest.mark.parametrize("url", ["localhost:6379", "http://localhost:6379/0", "not a url"])
def test_bad_redis_url_raises_naming_the_variable(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """The module promises a bad value fails when WSConfig() is built; a URL redis-py cannot parse is one."""
    monkeypatch.setenv("BACKEND_TYPE", "redis")
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    assert "REDIS_URL" in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://user:pw@host:6380/2", "unix:///tmp/r.sock"]
)
def test_good_redis_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert url == WSConfig().REDIS_URL


def test_pickle_refused_without_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_SERIALIZER", "pickle")
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    assert "WS_ALLOW_PICKLE" in str(info.value)


def test_pickle_refused_when_opt_in_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_SERIALIZER", "pickle")
    monkeypatch.setenv("WS_ALLOW_PICKLE", "false")
    with pytest.raises(pydantic.ValidationError):
        WSConfig()


def test_pickle_allowed_with_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_SERIALIZER", "pickle")
    monkeypatch.setenv("WS_ALLOW_PICKLE", "true")
    config = WSConfig()
    assert config.WS_SERIALIZER == "pickle"
    assert config.WS_ALLOW_PICKLE is True


def test_allow_pickle_alone_does_not_select_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_ALLOW_PICKLE", "true")
    assert WSConfig().WS_SERIALIZER == "orjson"


def test_config_pickle_round_trip() -> None:
    """A config can be handed to a worker process: it carries values, not a link to os.environ."""
    config = WSConfig(MAX_TOTAL_GROUPS=4)
    clone = pickle.loads(pickle.dumps(config))
    assert clone.MAX_TOTAL_GROUPS == 4
    assert clone.SERVER_INSTANCE_ID == config.SERVER_INSTANCE_ID


def test_an_invalid_value_is_never_shown_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: credentials never reach an error. pydantic showed the input (a REDIS_URL with
    its password) in the ValidationError that `fastapi-channels run` or an app prints."""
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@redis.example")
    with pytest.raises(pydantic.ValidationError) as info:
        WSConfig()
    assert "hunter2" not in str(info.value) and "REDIS_URL" in str(info.value)
