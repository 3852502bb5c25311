"""The FastAPI app: :func:`create_app` for a given :class:`ServiceSettings` (tests), :func:`app_from_env` for
uvicorn's worker processes (``faceaudit serve``: the settings come through environment variables).

Layers, outside in: metrics (every request counted and timed), the request timeout (504), the body limit (413),
FastAPI's routing, the key check and policy (:mod:`faceaudit.service.auth`), the route, which calls the Python
API in the thread pool (:meth:`ServiceState.run`). Every error leaves as a problem
(:mod:`faceaudit.service.problems`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from faceaudit import __version__
from faceaudit.service import problems
from faceaudit.service.jobrunner import JobRunner
from faceaudit.service.limits import BodyLimit, Timeout
from faceaudit.service.metrics import MetricsMiddleware
from faceaudit.service.openapi import openapi_document
from faceaudit.service.routes import audits, gallery, ops, pages, recognition
from faceaudit.service.settings import ServiceSettings
from faceaudit.service.state import ServiceState

log = logging.getLogger("faceaudit.service")

DESCRIPTION = """Face recognition with demographic-bias audits and an encrypted, policy-bound gallery.

Every endpoint under `/v1` needs an API key (`faceaudit keys create`), sent as `Authorization: Bearer <key>`
or `X-API-Key: <key>`. What a key may do is what the gallery's policy allows its role; every refusal names the
policy rule and is written to the gallery's hash-chained log, where the key's name is the actor. Errors are
RFC 9457 problem details (`application/problem+json`) with a stable `type`."""


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for ``settings``; nothing is opened until the app starts (its lifespan), once per process."""
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # opening the gallery and loading the engine block for a while: not on the event loop
        await anyio.to_thread.run_sync(state.start)
        runner = JobRunner.for_service(settings, state.gallery, sign=settings.report_key)
        await anyio.to_thread.run_sync(runner.start)
        app.state.jobs = runner
        log.info("faceaudit service ready: gallery %s, engine %s", settings.gallery, state.engine_name)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(runner.stop)  # requeues its running jobs for the next server
            await anyio.to_thread.run_sync(state.close)

    # no /docs: Swagger UI would have browsers fetch its scripts from a CDN; the schema is at /openapi.json
    app = FastAPI(title="faceaudit", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    app.state.service = state
    problems.install(app)
    app.include_router(ops.router)
    app.include_router(recognition.router)
    app.include_router(gallery.router)
    app.include_router(audits.router)
    app.include_router(pages.router)
    # Middleware added last runs first: metrics see every answer, including the timeout's and the body limit's.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Timeout, seconds=settings.request_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """The app for a uvicorn worker process started by ``faceaudit serve`` (``factory=True``): the settings are
    in ``$FACEAUDIT_SERVICE_*`` (:meth:`ServiceSettings.to_env`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServiceSettings.from_env())
