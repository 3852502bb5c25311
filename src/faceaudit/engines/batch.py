"""Batch enrolment of many image files: all cores, batched inference, bounded memory, cached, resumable.

The main process reads each file once, hashes it and asks the cache; only misses go to worker
processes, in chunks of ``batch_size`` images whose crops are embedded in one inference call. At most
``2 * workers`` chunks are in flight, so memory does not grow with the number of images. Every
finished chunk is written to the cache in one transaction: an interrupted run resumes where it
stopped, and a rerun over the same images never loads a model.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from faceaudit.engines.base import Engine, EnrolSettings, FaceResult
from faceaudit.engines.cache import EmbeddingCache, config_key
from faceaudit.engines.registry import engine_spec
from faceaudit.engines.worker import Chunk, check_identity, enrol_chunk, init_worker, work
from faceaudit.errors import FaceauditError, ImageError
from faceaudit.io.images import DEFAULT_MAX_PIXELS, read_bytes, sha256_bytes


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one input file: its content hash ('' if unreadable) and one result per face."""

    sha256: str
    results: list[FaceResult]
    cached: bool = False



def _mp_context() -> Any:
    """'spawn': each worker starts a fresh interpreter. 'fork' hangs when the parent has already used
    OpenCV's thread pool (seen here: a fork after cv2 detection deadlocked both workers), so it is not
    used. Like every spawn-based pool, a calling script needs an ``if __name__ == "__main__":`` guard."""
    return mp.get_context("spawn")


class _Inline:
    """Runs chunks in this process (``workers=1``), loading the engine on first use."""

    def __init__(self, engine_name: str, settings: EnrolSettings, max_pixels: int, threads: int,
                 fingerprint: str | None = None) -> None:
        self._args = (engine_name, settings, max_pixels, threads)
        self._fingerprint = fingerprint
        self._engine: Engine | None = None

    def submit(self, chunk: Chunk) -> cf.Future[list[tuple[int, list[FaceResult]]]]:
        name, settings, max_pixels, threads = self._args
        if self._engine is None:
            self._engine = engine_spec(name).load(threads)
            check_identity(self._engine, self._fingerprint)
        fut: cf.Future[list[tuple[int, list[FaceResult]]]] = cf.Future()
        fut.set_result(enrol_chunk(self._engine, chunk, settings, max_pixels))
        return fut

    def shutdown(self) -> None:
        self._engine = None


def embed_files(
    files: Sequence[str],
    *,
    engine: str | None = None,
    settings: EnrolSettings | None = None,
    workers: int | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 4,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[ImageOutcome]:
    """Enrol every file; returns one :class:`ImageOutcome` per file, in order.

    ``workers``: processes (default: all cores); 1 runs in this process. Unreadable and bad files
    become failed results with a reason; the batch always completes.
    """
    spec = engine_spec(engine)
    settings = (settings or EnrolSettings()).resolve(spec.min_det_score)
    identity = spec.identity()
    key = config_key(identity, settings, max_pixels)
    workers = max(1, workers or os.cpu_count() or 1)
    outcomes: list[ImageOutcome | None] = [None] * len(files)
    hashes: dict[int, str] = {}
    executor: Any = None
    in_flight: set[cf.Future[list[tuple[int, list[FaceResult]]]]] = set()
    bar = tqdm(total=len(files), unit="img", desc="embed", disable=not progress, leave=False)

    def collect(done: set[cf.Future[list[tuple[int, list[FaceResult]]]]]) -> None:
        to_cache = []
        for fut in done:
            try:
                chunk_results = fut.result()
            except BrokenProcessPool as exc:
                raise FaceauditError(
                    "the worker processes stopped unexpectedly. If you call faceaudit from a script, put the "
                    "call under `if __name__ == \"__main__\":` (worker processes re-import the script), or "
                    "pass workers=1; if memory ran out, use fewer workers"
                ) from exc
            for idx, results in chunk_results:
                outcomes[idx] = ImageOutcome(hashes[idx], results)
                to_cache.append((hashes[idx], key, results))
            in_flight.discard(fut)
            bar.update(len(chunk_results))
        if cache is not None and to_cache:
            cache.put_many(to_cache)

    def submit(chunk: Chunk) -> None:
        nonlocal executor
        if executor is None:
            if workers == 1:
                executor = _Inline(spec.name, settings, max_pixels, threads=1, fingerprint=identity.fingerprint)
            else:
                executor = cf.ProcessPoolExecutor(
                    max_workers=workers, mp_context=_mp_context(), initializer=init_worker,
                    initargs=(spec.name, settings.to_dict(), max_pixels, identity.fingerprint),
                )
        in_flight.add(executor.submit(work, chunk) if workers > 1 else executor.submit(chunk))
        while len(in_flight) >= 2 * workers:
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            collect(set(done))

    try:
        chunk: Chunk = []
        for idx, path in enumerate(files):
            try:
                data = read_bytes(path)
            except ImageError as exc:
                outcomes[idx] = ImageOutcome("", [FaceResult(ok=False, reason=exc.reason, message=str(exc))])
                bar.update(1)
                continue
            sha = sha256_bytes(data)
            hashes[idx] = sha
            hit = cache.get(sha, key) if cache is not None else None
            if hit is not None:
                outcomes[idx] = ImageOutcome(sha, hit, cached=True)
                bar.update(1)
                continue
            chunk.append((idx, str(path), data))
            if len(chunk) >= batch_size:
                submit(chunk)
                chunk = []
        if chunk:
            submit(chunk)
        while in_flight:
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            collect(set(done))
    finally:
        bar.close()
        if executor is not None:
            if isinstance(executor, cf.ProcessPoolExecutor):
                executor.shutdown(wait=True, cancel_futures=True)
            else:
                executor.shutdown()
    return [o for o in outcomes if o is not None]
