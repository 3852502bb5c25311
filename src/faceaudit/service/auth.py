"""Who is calling: API keys checked on every protected request, the key's role checked against the gallery policy.

A request presents its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(:mod:`faceaudit.service.keys`). Then, in this order:

1. No key, or a malformed, unknown or revoked one: 401 (``unauthorized``, with ``WWW-Authenticate: Bearer``),
   and an entry ``<operation>-refused`` with rule ``auth.key`` in the gallery's log (actor ``anonymous``, or the
   key's name for a revoked key). Up to :data:`~faceaudit.service.state.LOGGED_REFUSALS_PER_MINUTE` such
   entries per minute per client address; beyond that refusals are only counted in ``/metrics``, so that
   nobody can grow the hash-chained log without a key.
2. The key's request rate (:class:`~faceaudit.service.limits.TokenBuckets`): 429 with ``Retry-After``.
3. The key's role against the policy for the route's operation: 403 (``forbidden``) naming the rule, logged by
   the gallery. Search, export and delete are checked by the gallery itself, with what the request declares
   (purpose and legal basis; whether the subject asked), so only their key and rate are checked here.

The key's name is the actor of every log entry the request writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from faceaudit.service import keys
from faceaudit.service.limits import rate_limited
from faceaudit.service.problems import Problem
from faceaudit.service.state import ServiceState, service

#: Operations whose policy check needs what the request declares: done by the gallery function the route calls.
CHECKED_BY_GALLERY = frozenset({"search", "export", "delete"})

_bearer = HTTPBearer(auto_error=False, description="An API key (`faceaudit keys create`) as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (`faceaudit keys create`).")


@dataclass(frozen=True)
class Principal:
    name: str   # the key's name: the actor in the hash-chained log
    role: str   # a role of the gallery policy


def _unauthorized(why: str) -> Problem:
    problem = Problem.of("unauthorized", why)
    problem.headers["WWW-Authenticate"] = 'Bearer realm="faceaudit"'
    return problem


_WHY = {"missing": "no API key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        "malformed": "the API key is not one this server issues (fa_<id>_<secret>)",
        "unknown": "the API key is not valid",
        "revoked": "the API key was revoked"}


async def _principal(request: Request, operation: str, bearer: HTTPAuthorizationCredentials | None,
                     header: str | None) -> Principal:
    """The key's holder, or a logged 401 (module docstring, step 1), then the rate limit (step 2)."""
    state = service(request)
    key = bearer.credentials if bearer is not None else header
    if not key:
        record, why = None, "missing"
    else:
        record, why = await state.run(keys.lookup, state.store(), key)
    if record is None or why != "ok":
        await _log_refusal(state, request, operation, why, None if record is None else record.name,
                           None if record is None else record.role, key)
        raise _unauthorized(_WHY[why])
    wait = state.rates.take(record.name)
    if wait is not None:
        raise rate_limited(wait, f"the key {record.name!r}")
    return Principal(record.name, record.role)


async def _log_refusal(state: ServiceState, request: Request, operation: str, why: str, name: str | None,
                       role: str | None, key: str | None) -> None:
    client = request.client.host if request.client is not None else "unknown"
    if state.refusal_log_rates.take(client) is not None:
        state.metrics.unlogged_refusals.inc()
        return
    params = {"reason": why, "method": request.method, "route": _route(request), "client": client}
    claimed = keys.parse_key_id(key) if key else None
    if claimed is not None:
        params["key_id"] = claimed  # the id part only: it names a row, it is not the secret
    gallery = state.gallery_for(name or "anonymous", role or "none")
    await state.run(gallery.log_refusal, operation, "auth.key", params)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path))


def authorized(operation: str) -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency: 401 problem without a valid key (Authorization: Bearer <key> or X-API-Key),
    403 problem naming the policy rule when the key's role may not run `operation` (a policy operation
    name: enrol, verify, search, delete, export, rotate-key, policy, detect, embed, audit, log).
    Both refusals are appended to the gallery's log. Also applies the per-key rate limit (429 + Retry-After)."""

    async def dependency(request: Request,
                         bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                         header: Annotated[str | None, Depends(_header)]) -> Principal:
        principal = await _principal(request, operation, bearer, header)
        if operation not in CHECKED_BY_GALLERY:
            state = service(request)
            gallery = state.gallery_for(principal.name, principal.role)
            await state.run(gallery.require, operation, {"route": _route(request)})
        return principal

    return dependency


def authenticated() -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency: any valid key, whatever its role (for what every caller may know, such as the policy
    that binds them); 401 and 429 as for :func:`authorized`."""

    async def dependency(request: Request,
                         bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                         header: Annotated[str | None, Depends(_header)]) -> Principal:
        return await _principal(request, "read", bearer, header)

    return dependency
