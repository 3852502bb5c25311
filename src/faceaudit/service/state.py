"""What one server process holds for its lifetime: the open gallery, the engine, the thread pool, the rate limits.

Made by :func:`faceaudit.service.app.create_app` and started by the app's lifespan, once per worker process
(uvicorn's ``--workers N`` runs N processes, each with its own state): the gallery is opened (its seal checked)
and the engine loaded before the first request is served, so no request pays for loading a model.

Engine and gallery work is CPU- or IO-bound and never runs on the event loop: :meth:`ServiceState.run` hands it
to a thread pool of :data:`THREADS` threads. The engine runs one image at a time per process (it is not
thread-safe; :mod:`faceaudit.api` holds its lock), so the other threads serve requests that only need the
database (the log head, a key check) while an image is being embedded. A request that times out stops waiting
but its thread finishes the work; the pool never grows beyond its size, so a flood of slow requests queues
instead of spawning threads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from starlette.requests import Request

from faceaudit.gallery.gallery import Gallery, KeyRotation
from faceaudit.gallery.store import Store
from faceaudit.service import keys
from faceaudit.service.limits import TokenBuckets
from faceaudit.service.metrics import Metrics
from faceaudit.service.problems import Problem
from faceaudit.service.settings import ServiceSettings

T = TypeVar("T")
#: Threads per server process for engine and database work (module docstring).
THREADS = 4
#: Refused (401) requests logged per minute per client address; more are still refused but only counted (in
#: /metrics): an unauthenticated client must not be able to grow the hash-chained log without bound.
LOGGED_REFUSALS_PER_MINUTE = 60


class ServiceState:
    """One server process's gallery, engine, thread pool and rate limits (module docstring)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.rates = TokenBuckets(settings.rate_per_minute)
        self.refusal_log_rates = TokenBuckets(LOGGED_REFUSALS_PER_MINUTE)
        self._gallery: Gallery | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.engine_name: str | None = None
        self.engine_identity: dict[str, Any] | None = None

    # --- lifecycle (the app's lifespan) ---
    def start(self) -> None:
        """Open the gallery (refusing one that fails its seal), make the keys table, load the engine."""
        from faceaudit.api import load_engine

        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="faceaudit-service")
        # a fairness calibration is checked (SHA-256, engine) here and used by every view of the gallery
        gallery = Gallery.open(self.settings.gallery, key_file=self.settings.key_file, actor="service",
                               role="service", calibration=self.settings.calibration)
        gallery.max_pixels = self.settings.max_image_pixels
        self._gallery = gallery
        keys.ensure_table(gallery.store)
        engine = load_engine(gallery.settings.engine)
        self.engine_name = engine.name
        self.engine_identity = engine.identity.to_dict()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    # --- what routes use ---
    @property
    def gallery(self) -> Gallery:
        """The gallery as the service itself (actor ``service``); routes act through :meth:`gallery_for`."""
        if self._gallery is None:
            raise Problem.of("unavailable", "the service is starting or stopping")
        return self._gallery

    def gallery_for(self, name: str, role: str) -> Gallery:
        """The gallery acting for an API key: its name is the actor in the log, its role what the policy checks."""
        return self.gallery.acting_as(name, role)

    def store(self) -> Store:
        """The gallery's database, open (shared with the gallery; transactions are thread-safe)."""
        return self.gallery.store

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` in the thread pool, awaited without blocking the event loop."""
        if self._pool is None:
            raise Problem.of("unavailable", "the service is starting or stopping")
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    def ready(self) -> dict[str, bool]:
        """Whether the engine is loaded and the database answers (for /readyz)."""
        database = False
        if self._gallery is not None:
            try:
                with self._gallery.store.transaction() as tx:
                    database = tx.one("SELECT 1") is not None
            except Exception:  # any failure to answer is "not ready", reported, never raised
                database = False
        return {"engine": self.engine_identity is not None, "database": database}

    def rotate_key(self, name: str, role: str) -> KeyRotation:
        """Rotate the gallery key in the server's key file (:meth:`Gallery.rotate_key_file`) for the API key
        ``name`` with ``role``. A server whose key comes from ``$FACEAUDIT_GALLERY_KEY`` cannot change it: 409."""
        gallery = self.gallery_for(name, role)
        if self.settings.key_file is None:
            raise Problem.of("conflict", "this server reads the gallery key from $FACEAUDIT_GALLERY_KEY, which it "
                                         "cannot change: rotate with `faceaudit gallery rotate-key` and restart the "
                                         "server with the new key, or start it with `--key FILE` to rotate here")
        return gallery.rotate_key_file(self.settings.key_file)


def service(request: Request) -> ServiceState:
    """The state of the server process handling ``request``."""
    state: ServiceState = request.app.state.service
    return state


#: A route's parameter for the server's state (``state: State``).
State = Annotated[ServiceState, Depends(service)]

