"""Health of one server for a load balancer or an orchestrator: live, and ready for new clients.

*Live* means the event loop answers (the check runs on it). *Ready* means this server can
take new clients now: it is started and not shutting down, its backend is connected (on
Redis: the pub/sub connection is up, every wanted topic confirmed, and the cluster state is
not being written back after Redis lost it) and its own inbox and broadcast topics are
confirmed. `ConnectionManager.health()` makes the judgement; `health_routes` serves it as
`/health/live` and `/health/ready` (200, or 503 with a JSON reason).

Not for metrics: see `fastapi_channels.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from fastapi_channels.manager import ConnectionManager

__all__ = ["REASONS", "Health", "health_routes", "judge"]

REASONS = {
    "not_started": "the manager has not started (start_tasks)",
    "stopped": "the manager has stopped",
    "shutting_down": "the server is shutting down: closing its connections",
    "backend_stopped": "the backend is not running",
    "backend_connecting": "the backend is (re)connecting",
    "backend_down": "the backend is unreachable",
    "backend_resyncing": "Redis lost its data: the servers are writing their state back",
    "backend_misconfigured": "the servers on this Redis Cluster split their state into another "
    "number of partitions (REDIS_CLUSTER_PARTITIONS)",
    "subscriptions_unconfirmed": "this server's inbox or broadcast subscription is not confirmed",
}
"""Every reason a server may be not ready, with the sentence shown next to it."""


@dataclass(frozen=True, slots=True)
class Health:
    """`live`: the event loop answered; `ready`: take new clients; `reason`: a REASONS key."""

    live: bool
    ready: bool
    reason: str | None = None

    @property
    def detail(self) -> str | None:
        return None if self.reason is None else REASONS.get(self.reason, self.reason)


def judge(
    *, started: bool, stopping: bool, ever_started: bool, backend: str | None, confirmed: bool
) -> Health:
    """The health of a server in this state (pure: the manager gathers the facts)."""
    if stopping:
        reason: str | None = "shutting_down"
    elif not started:
        reason = "stopped" if ever_started else "not_started"
    elif backend is not None:
        reason = backend
    elif not confirmed:
        reason = "subscriptions_unconfirmed"
    else:
        reason = None
    return Health(live=True, ready=reason is None, reason=reason)


def health_routes(manager: ConnectionManager, prefix: str = "/health") -> list[Route]:
    """`<prefix>/live` (always 200 while the loop answers) and `<prefix>/ready` (200 or 503)."""

    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"status": "live", "server_id": manager.server_id})

    async def ready(_: Request) -> JSONResponse:
        health = manager.health()
        body: dict[str, Any] = {
            "status": "ready" if health.ready else "not_ready",
            "server_id": manager.server_id,
        }
        if not health.ready:
            body["reason"] = health.reason
            body["detail"] = health.detail
        # A 503 must not be cached by a proxy: the next probe has to reach the server.
        return JSONResponse(
            body, status_code=200 if health.ready else 503, headers={"Cache-Control": "no-store"}
        )

    return [
        Route(f"{prefix}/live", live, methods=["GET", "HEAD"], name="fastapi_channels_live"),
        Route(f"{prefix}/ready", ready, methods=["GET", "HEAD"], name="fastapi_channels_ready"),
    ]
