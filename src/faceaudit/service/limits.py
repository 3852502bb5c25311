"""Limits that keep one client from exhausting the server: body size, images per request, content type, request
time, and a per-key request rate.

* Body size (:class:`BodyLimit`, ASGI middleware): a request whose ``Content-Length`` is over the limit is
  answered 413 before a byte of it is read; a body sent without a length (chunked) is counted as it arrives and
  refused once it passes the limit, so nothing larger is ever buffered or spooled.
* Image pixels: decoded by :func:`faceaudit.io.images.load_image` with ``max_pixels``, which reads the width and
  height from the header and refuses (``too_large``) before any pixel memory is allocated; done by the API
  functions the routes call, with the service's ``max_image_pixels``.
* Images per request (:func:`read_images`): counted before any is read.
* Content type (:func:`require_content_type`): 415 when a route gets what it does not read.
* Request time (:class:`Timeout`, ASGI middleware): past ``request_timeout_s`` the client gets 504; the work
  itself runs in the server's thread pool and cannot be interrupted, so it may still finish (and, for a write,
  be in the gallery and its log): a 504 says the answer was not waited for, not that nothing happened.
* Rate (:class:`TokenBuckets`): a token bucket per API key, refilled at ``rate_per_minute`` / 60 per second and
  holding at most ``rate_per_minute`` tokens (a minute's worth of burst). Kept in each server process's memory:
  with ``--workers N`` a key may make up to N times the rate, one share per process (stated in the README).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
from fastapi import Depends, Request, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faceaudit.service.problems import Problem


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a 413 problem (module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > self.max_bytes:
                problem = (Problem.of("payload-too-large", f"the request body ({declared:,} bytes) is over the limit "
                                                           f"of {self.max_bytes:,} bytes")
                           if declared >= 0 else Problem.of("invalid-input", "the Content-Length header is not a "
                                                                             "number"))
                await problem.response()(scope, receive, send)
                return
        seen = 0
        limit = self.max_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # raised inside the route's body parsing, which passes HTTPExceptions on: answered as a problem
                    raise HTTPException(413, f"the request body is over the limit of {limit:,} bytes")
            return message

        await self.app(scope, counted, send)


class Timeout:
    """ASGI middleware: answer 504 when a request has not been answered within ``seconds``."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with anyio.move_on_after(self.seconds) as scope_:
            await self.app(scope, receive, tracked)
        if scope_.cancelled_caught and not started:
            problem = Problem.of("timeout", f"no answer within {self.seconds:g} s; the work may still complete on the "
                                            "server (check the gallery's log before repeating a write)")
            await problem.response()(scope, receive, send)


class TokenBuckets:
    """A token bucket per name: ``rate_per_minute`` per minute, bursts up to that many."""

    #: How many buckets to keep before full (idle) ones are forgotten: a full bucket is the same as none.
    MAX_BUCKETS = 10_000

    def __init__(self, rate_per_minute: int) -> None:
        self.capacity = float(rate_per_minute)
        self.per_second = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, name: str) -> float | None:
        """Take one token for ``name``: None if there was one, else the seconds until there will be."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(name, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.per_second)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                if len(self._buckets) > self.MAX_BUCKETS:
                    self._forget_full(now)
                return None
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.per_second

    def _forget_full(self, now: float) -> None:
        for name, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.per_second >= self.capacity:
                del self._buckets[name]


def rate_limited(retry_after: float, who: str) -> Problem:
    """The 429 problem for ``who``, with ``Retry-After`` (whole seconds, rounded up)."""
    seconds = max(1, math.ceil(retry_after))
    problem = Problem.of("rate-limited", f"{who} is over its request rate; retry in {seconds} s",
                         retry_after=seconds)
    problem.headers["Retry-After"] = str(seconds)
    return problem


def require_content_type(*media_types: str) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency: 415 unless the request's content type is one of ``media_types`` (a request without a
    body passes: its fields are then missing, which validation reports)."""

    async def check(request: Request) -> None:
        given = request.headers.get("content-type")
        if given is None and request.headers.get("content-length") in (None, "0"):
            return
        media = (given or "").split(";")[0].strip().lower()
        if media not in media_types:
            raise Problem.of("unsupported-media-type", f"this endpoint reads {' or '.join(media_types)}, not "
                                                       f"{media or 'a body without a content type'}")

    return check


async def read_images(files: list[UploadFile], max_images: int) -> list[bytes]:
    """The bytes of the uploaded images, refused (413) when there are more than ``max_images``; the body limit has
    already bounded their total size."""
    if len(files) > max_images:
        raise Problem.of("payload-too-large", f"{len(files)} images in one request; at most {max_images}")
    return [await f.read() for f in files]


#: Route dependencies refusing any other content type (415) before the body is parsed.
MULTIPART = [Depends(require_content_type("multipart/form-data"))]
JSON = [Depends(require_content_type("application/json"))]
