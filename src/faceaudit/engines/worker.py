"""What a worker process runs: decode and enrol chunks of images with one engine loaded once.

Kept apart from :mod:`faceaudit.engines.batch` so that a worker imports only what it needs (no
pandas, pyarrow or progress bars): each worker's memory is its engine and a chunk of images.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from typing import Any

import numpy as np

from faceaudit.engines.base import Engine, EnrolSettings, FaceResult
from faceaudit.engines.registry import engine_spec
from faceaudit.errors import ImageError, ModelError
from faceaudit.io.images import decode_image

Chunk = list[tuple[int, str, bytes]]


def enrol_chunk(
    engine: Engine, chunk: Chunk, settings: EnrolSettings, max_pixels: int
) -> list[tuple[int, list[FaceResult]]]:
    """Decode and enrol a chunk of (index, path, bytes); a bad image never spoils the others."""
    out: dict[int, list[FaceResult]] = {}
    good: list[tuple[int, np.ndarray]] = []
    for idx, path, data in chunk:
        try:
            good.append((idx, decode_image(data, path=path, max_pixels=max_pixels).rgb))
        except ImageError as exc:
            out[idx] = [FaceResult(ok=False, reason=exc.reason, message=str(exc))]
    if good:
        try:
            plans = engine.enrol_many([rgb for _, rgb in good], settings)
            for (idx, _), plan in zip(good, plans, strict=True):
                out[idx] = plan
        except Exception:  # isolate the failing image: rerun one by one
            for idx, rgb in good:
                try:
                    out[idx] = engine.enrol(rgb, settings)
                except Exception as exc:
                    out[idx] = [FaceResult(ok=False, reason="engine_error", message=f"{type(exc).__name__}: {exc}")]
    return [(idx, out[idx]) for idx, _, _ in chunk]


def check_identity(engine: Engine, fingerprint: str | None) -> None:
    """Refuse to embed when the loaded engine is not the one the caller keys its results with (a model file
    given by path was replaced after the run started): its vectors would be cached under the old identity."""
    if fingerprint is not None and engine.identity.fingerprint != fingerprint:
        raise ModelError(f"the model files of engine {engine.name!r} changed after this run started; run again "
                         "(the cache keeps what was already embedded)")


# --- worker process state (one engine per process, loaded once) ---
_WORKER: dict[str, Any] = {}


def init_worker(engine_name: str, settings: dict[str, Any], max_pixels: int, fingerprint: str | None = None) -> None:
    """Load the engine once per process; ``fingerprint``: the identity the caller keys its cache with."""
    _WORKER["engine"] = engine_spec(engine_name).load(1)
    _WORKER["fingerprint"] = fingerprint
    _WORKER["settings"] = EnrolSettings.from_dict(settings)
    _WORKER["max_pixels"] = max_pixels
    release_free_memory()


def release_free_memory() -> None:
    """Return freed heap to the OS: loading a model leaves large temporary buffers behind."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def work(chunk: Chunk) -> list[tuple[int, list[FaceResult]]]:
    check_identity(_WORKER["engine"], _WORKER.get("fingerprint"))
    return enrol_chunk(_WORKER["engine"], chunk, _WORKER["settings"], _WORKER["max_pixels"])
