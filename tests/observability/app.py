"""The test app (tests/app.py) with the observability routes: /metrics, /health/live, /health/ready."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.observability import add_observability_routes
from tests.app import create_app


def create_observed_app(config: WSConfig, **manager_options: Any) -> tuple[FastAPI, ConnectionManager]:
    app, manager = create_app(config, **manager_options)
    add_observability_routes(app, manager)
    return app, manager


def app_from_env() -> FastAPI:
    """Factory for `fastapi-channels run --factory tests.observability.app:app_from_env`."""
    return create_observed_app(WSConfig())[0]
