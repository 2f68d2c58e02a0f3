"""The public API: names exported by the package and the import paths documented for users."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import fastapi_channels

EXPECTED_ALL = {
    "BaseBackend",
    "BaseConsumer",
    "BaseError",
    "CloseCode",
    "Connection",
    "ConnectionManager",
    "ConnectionRegistry",
    "ConnectionState",
    "Emitter",
    "ErrorResponse",
    "MemoryBackend",
    "Message",
    "SyncEmitter",
    "WSConfig",
    "get_manager",
}


def all_module_names() -> list[str]:
    names = [fastapi_channels.__name__]
    for info in pkgutil.walk_packages(fastapi_channels.__path__, prefix="fastapi_channels."):
        names.append(info.name)
    return sorted(names)


MODULES = all_module_names()


def test_package_all_is_pinned() -> None:
    assert set(fastapi_channels.__all__) == EXPECTED_ALL
    assert len(fastapi_channels.__all__) == len(EXPECTED_ALL)


def test_package_all_names_resolve() -> None:
    for name in fastapi_channels.__all__:
        assert getattr(fastapi_channels, name) is not None


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from fastapi_channels import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == EXPECTED_ALL


def test_version() -> None:
    assert fastapi_channels.__version__ == "0.1.0"


def test_documented_import_paths() -> None:
    from fastapi_channels.backends import BaseBackend, MemoryBackend
    from fastapi_channels.config import WSConfig
    from fastapi_channels.exceptions import (
        AuthenticationError,
        AuthorizationError,
        BackendError,
        BaseError,
        CloseCode,
        ConnectionError,
        ErrorResponse,
        MessageError,
        RateLimitError,
        SystemError,
        TimeoutError,
        ValidationError,
    )

    for error in (
        AuthenticationError,
        AuthorizationError,
        BackendError,
        ConnectionError,
        MessageError,
        RateLimitError,
        SystemError,
        TimeoutError,
        ValidationError,
    ):
        assert issubclass(error, BaseError)
    assert issubclass(MemoryBackend, BaseBackend)
    assert fastapi_channels.WSConfig is WSConfig
    assert fastapi_channels.BaseError is BaseError
    assert fastapi_channels.CloseCode is CloseCode
    assert fastapi_channels.ErrorResponse is ErrorResponse
    assert fastapi_channels.BaseBackend is BaseBackend
    assert fastapi_channels.MemoryBackend is MemoryBackend


def test_redis_backend_is_importable_lazily() -> None:
    from fastapi_channels.backends import RedisBackend
    from fastapi_channels.backends.base import BaseBackend

    assert issubclass(RedisBackend, BaseBackend)


def test_unknown_backend_attribute_raises_attribute_error() -> None:
    import fastapi_channels.backends as backends

    with pytest.raises(AttributeError):
        _ = backends.NoSuchBackend


def test_every_module_is_found() -> None:
    # guards the walk itself: a broken walk would make the next test vacuous
    for name in [
        "fastapi_channels.config",
        "fastapi_channels.exceptions",
        "fastapi_channels.registry",
        "fastapi_channels.routing",
        "fastapi_channels.heartbeat",
        "fastapi_channels.backends.memory",
        "fastapi_channels.backends.redis",
        "fastapi_channels.middleware",
    ]:
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_all_and_its_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert isinstance(exported, list | tuple)
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for attr in exported:
        assert isinstance(attr, str)
        assert getattr(module, attr, None) is not None, f"{name}.__all__ names missing {attr!r}"
