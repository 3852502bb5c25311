"""Errors as RFC 9457 problem details (``application/problem+json``), one stable ``type`` per kind of error.

Every error the service returns has the body ``{"type": "/problems/<kind>", "title", "status", "detail", ...}``;
clients branch on ``type`` (stable), people read ``detail``. Extension members carry what a client acts on:
``reason`` for an image that cannot be used (the reason codes of :mod:`faceaudit.io.images`), ``rule`` for a
policy refusal, ``retry_after`` beside the ``Retry-After`` header of a 429, ``errors`` for a request that does
not match the schema. An unexpected exception becomes ``internal`` with an incident id; its traceback is
logged on the server and never sent.

How faceaudit's exceptions map (:func:`problem_from`): ImageError -> 422 ``invalid-image`` (with ``reason``);
PolicyError -> 403 ``forbidden`` (with ``rule``); an unknown subject -> 404 ``not-found``; any other
InputError or CalibrationError -> 400 ``invalid-input``; gallery IntegrityError -> 500 ``integrity`` (stored
data fails authentication: the operator's problem, not the client's, and no retry helps); StoreError -> 503
``unavailable`` with ``Retry-After`` (the database refused, is locked beyond its wait, or is unreachable).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceaudit.errors import CalibrationError, FaceauditError, ImageError, InputError
from faceaudit.gallery.crypto import IntegrityError
from faceaudit.gallery.gallery import EnrolmentError, UnknownSubjectError
from faceaudit.gallery.policy import PolicyError
from faceaudit.gallery.store import StoreError

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("faceaudit.service")

#: Every kind of problem: its HTTP status and title. ``type`` is ``/problems/<kind>``.
KINDS: dict[str, tuple[int, str]] = {
    "invalid-input": (400, "The request is not valid"),
    "invalid-config": (400, "The audit config is not valid"),
    "invalid-upload": (400, "An uploaded file is not usable"),
    "outside-data-root": (400, "The audit names data outside the server's data root"),
    "no-data-root": (400, "The server takes no audit configs (it has no data root)"),
    "unauthorized": (401, "An API key is needed"),
    "forbidden": (403, "Refused by the gallery policy"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict with the server's state"),
    "payload-too-large": (413, "The request is too large"),
    "unsupported-media-type": (415, "Unsupported content type"),
    "invalid-image": (422, "An image cannot be used"),
    "validation": (422, "The request does not match the schema"),
    "rate-limited": (429, "Too many requests"),
    "internal": (500, "Internal error"),
    "integrity": (500, "The gallery fails its integrity check"),
    "unavailable": (503, "Service unavailable"),
    "timeout": (504, "The request took too long"),
}


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; extension members (``reason``, ``rule``, ...) depend on ``type``."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class Problem(Exception):
    """An error the service answers with; ``kind`` picks ``type`` (``/problems/<kind>``), ``extra`` adds members."""

    def __init__(self, status: int, kind: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}

    @classmethod
    def of(cls, kind: str, detail: str, **extra: Any) -> Problem:
        """A problem of a known ``kind``, with its status and title from :data:`KINDS`."""
        status, title = KINDS[kind]
        return cls(status, kind, title, detail, **extra)

    def body(self) -> dict[str, Any]:
        return {**self.extra, "type": f"/problems/{self.kind}", "title": self.title, "status": self.status,
                "detail": self.detail}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, media_type=MEDIA_TYPE, headers=self.headers)


def problem_from(exc: BaseException) -> Problem:
    """The problem an exception raised by faceaudit (or anything else) is answered with."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ImageError):
        return Problem.of("invalid-image", str(exc), reason=exc.reason)
    if isinstance(exc, EnrolmentError):
        return Problem.of("invalid-image", str(exc), reason=exc.reason)
    if isinstance(exc, PolicyError):
        return Problem.of("forbidden", str(exc), rule=exc.rule)
    if isinstance(exc, UnknownSubjectError):
        return Problem.of("not-found", str(exc))
    if isinstance(exc, InputError | CalibrationError):
        return Problem.of("invalid-input", str(exc))
    if isinstance(exc, IntegrityError):
        log.error("gallery integrity check failed: %s", exc)
        return Problem.of("integrity", "the gallery's stored data fails authentication; the operator must check "
                                       "it (`faceaudit log verify`) before it can be used", problems=exc.problems)
    if isinstance(exc, StoreError | sqlite3.OperationalError | psycopg.OperationalError):
        # a busy or unreachable database (SQLite locked by another worker beyond its wait, PostgreSQL gone):
        # worth retrying, unlike an internal error
        incident = _incident(exc)
        problem = Problem.of("unavailable", f"the gallery database refused or failed the operation (incident "
                                            f"{incident}); retry shortly", incident=incident)
        problem.headers["Retry-After"] = "1"
        return problem
    if isinstance(exc, UnicodeError):
        return Problem.of("invalid-input", "the request holds text that is not valid Unicode (an unpaired "
                                           "surrogate?)")
    incident = _incident(exc)
    return Problem.of("internal", f"an internal error occurred (incident {incident}); it is in the server's log",
                      incident=incident)


def _incident(exc: BaseException) -> str:
    """Log ``exc`` with its traceback under a new incident id (returned, for the client to quote)."""
    incident = uuid.uuid4().hex[:12]
    log.error("incident %s: %s: %s", incident, type(exc).__name__, exc, exc_info=exc)
    return incident


_HTTP_KINDS = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large", 415: "unsupported-media-type",
               401: "unauthorized", 403: "forbidden", 429: "rate-limited", 504: "timeout"}


def _http_problem(exc: StarletteHTTPException) -> Problem:
    kind = _HTTP_KINDS.get(exc.status_code, "invalid-input" if exc.status_code < 500 else "internal")
    detail = exc.detail if isinstance(exc.detail, str) else KINDS[kind][1]
    problem = Problem(exc.status_code, kind, KINDS[kind][1], detail)
    problem.headers = dict(exc.headers or {})
    return problem


def _validation_problem(exc: RequestValidationError) -> Problem:
    # only where and what: the offending input is left out, since it may be an uploaded image or a secret
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return Problem.of("validation", f"the request does not match the API's schema ({where})", errors=errors)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem: ours, FastAPI's validation and HTTP errors, and the rest."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        return problem_from(exc).response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _http_problem(exc).response()

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_problem(exc).response()

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(FaceauditError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    # Exception: Starlette routes it to ServerErrorMiddleware's handler, which answers with our problem
    app.add_exception_handler(Exception, on_problem)


#: What an authenticated request with a body can be answered besides success.
REQUEST_ERRORS = (400, 401, 403, 413, 415, 422, 429, 500, 503, 504)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for OpenAPI: each status described as a problem (the schema and the
    ``application/problem+json`` content are filled in by :mod:`faceaudit.service.openapi`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        titles = sorted({title for s, title in KINDS.values() if s == status})
        out[status] = {"description": "; ".join(titles) or "Problem"}
    return out
