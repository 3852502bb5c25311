"""Prometheus metrics of the service: requests by route, method and status, and their latency.

Per process by default: each uvicorn worker counts what it served, and a scrape reaches one of them. With
``$PROMETHEUS_MULTIPROC_DIR`` set (before the workers start) prometheus_client keeps the values in files in that
folder and ``/metrics`` adds up every worker's; ``faceaudit serve --workers N`` (N > 1) sets it to a fresh
temporary folder of its own when it is not set, so a scrape then sees the whole server.

Routes are labelled by their template (``/v1/subjects/{subject_id}/export``), never by the path as sent, so a
client cannot create a label per subject id; a path that matches no route is ``unmatched``.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets (seconds): from a key check to a large enrolment.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess() -> bool:
    """Whether prometheus_client keeps values in files shared by the worker processes."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The service's metrics, in a registry of their own (so that apps made in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("faceaudit_http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("faceaudit_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["route", "method"], buckets=BUCKETS, registry=self.registry)
        self.unlogged_refusals = Counter("faceaudit_auth_refusals_unlogged",
                                         "Requests refused for want of a valid key beyond the per-address number "
                                         "written to the gallery's log", registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type: every worker's values when multiprocess, else this process's."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: count every HTTP request and time it, labelled by the route that answered it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(template, scope.get("method", ""), status, time.perf_counter() - start)
