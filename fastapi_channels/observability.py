"""One call to give an app its operational routes: /metrics, /health/live and /health/ready.

    add_observability_routes(app, manager)

For a FastAPI or Starlette app (the routes stay out of the OpenAPI schema). Pass
`metrics_path=None` to serve health only (then prometheus-client is not needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from fastapi_channels.health import health_routes

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette

    from fastapi_channels.manager import ConnectionManager

__all__ = ["add_observability_routes"]


def add_observability_routes(
    app: Starlette,
    manager: ConnectionManager,
    *,
    metrics_path: str | None = "/metrics",
    health_prefix: str = "/health",
    registry: CollectorRegistry | None = None,
) -> None:
    """Add `<health_prefix>/live`, `<health_prefix>/ready` and, unless None, `metrics_path`.

    `registry` is passed to `MetricsApp` (e.g. `prometheus_client.REGISTRY` to serve the
    manager's metrics with the process's and your own).
    """
    routes = health_routes(manager, health_prefix)
    if metrics_path is not None:
        try:
            from fastapi_channels.metrics import MetricsApp

            metrics = MetricsApp(manager, registry=registry)
        except ImportError as exc:
            raise ImportError(
                "the /metrics route needs prometheus-client: pip install 'fastapi-channels[prometheus]' "
                "(or pass metrics_path=None)"
            ) from exc
        routes.append(Route(metrics_path, metrics, name="fastapi_channels_metrics"))
    app.router.routes.extend(routes)
