"""Operations endpoints, without a key: liveness, readiness, version, metrics. They reveal no personal data;
put /metrics and /version behind the reverse proxy's access rules if the counts or the engine are not public."""

from __future__ import annotations

from fastapi import APIRouter, Response

from faceaudit import __version__
from faceaudit.service.models import Health, Readiness, Version
from faceaudit.service.problems import Problem, problem_responses
from faceaudit.service.state import State

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503),
            summary="Readiness: the engine is loaded and the gallery's database answers")
async def readyz(state: State) -> Readiness:
    ready = await state.run(state.ready)
    if not all(ready.values()):
        missing = ", ".join(k for k, ok in ready.items() if not ok)
        raise Problem.of("unavailable", f"not ready: {missing} not available", **ready)
    return Readiness(status="ready", **ready)


@router.get("/version", response_model=Version, responses=problem_responses(503),
            summary="faceaudit's version and the identity of the engine in use")
async def version(state: State) -> Version:
    if state.engine_identity is None:
        raise Problem.of("unavailable", "the engine is not loaded yet")
    return Version(faceaudit=__version__, api="v1", engine=state.engine_identity)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
