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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from faceaudit.engines.base import Engine, EnrolSettings, FacePolicy, FaceResult
from faceaudit.engines.cache import EmbeddingCache, config_key
from faceaudit.engines.registry import engine_spec
from faceaudit.errors import ImageError
from faceaudit.io.images import DEFAULT_MAX_PIXELS, decode_image, read_bytes, sha256_bytes


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one input file: its content hash ('' if unreadable) and one result per face."""

    sha256: str
    results: list[FaceResult]
    cached: bool = False


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


# --- worker process state (one engine per process, loaded once) ---
_WORKER: dict[str, Any] = {}


def _init_worker(engine_name: str, settings: dict[str, Any], max_pixels: int) -> None:
    _WORKER["engine"] = engine_spec(engine_name).load(1)
    _WORKER["settings"] = EnrolSettings(
        policy=FacePolicy(settings["policy"]), min_det_score=settings["min_det_score"],
        min_face_px=settings["min_face_px"],
    )
    _WORKER["max_pixels"] = max_pixels


def _work(chunk: Chunk) -> list[tuple[int, list[FaceResult]]]:
    return enrol_chunk(_WORKER["engine"], chunk, _WORKER["settings"], _WORKER["max_pixels"])


class _Inline:
    """Runs chunks in this process (``workers=1``), loading the engine on first use."""

    def __init__(self, engine_name: str, settings: EnrolSettings, max_pixels: int, threads: int) -> None:
        self._args = (engine_name, settings, max_pixels, threads)
        self._engine: Engine | None = None

    def submit(self, chunk: Chunk) -> cf.Future[list[tuple[int, list[FaceResult]]]]:
        name, settings, max_pixels, threads = self._args
        if self._engine is None:
            self._engine = engine_spec(name).load(threads)
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
    batch_size: int = 8,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[ImageOutcome]:
    """Enrol every file; returns one :class:`ImageOutcome` per file, in order.

    ``workers``: processes (default: all cores); 1 runs in this process. Unreadable and bad files
    become failed results with a reason; the batch always completes.
    """
    settings = settings or EnrolSettings()
    spec = engine_spec(engine)
    key = config_key(spec.identity(), settings, max_pixels)
    workers = max(1, workers or os.cpu_count() or 1)
    outcomes: list[ImageOutcome | None] = [None] * len(files)
    hashes: dict[int, str] = {}
    executor: Any = None
    in_flight: set[cf.Future[list[tuple[int, list[FaceResult]]]]] = set()
    bar = tqdm(total=len(files), unit="img", desc="embed", disable=not progress, leave=False)

    def collect(done: set[cf.Future[list[tuple[int, list[FaceResult]]]]]) -> None:
        to_cache = []
        for fut in done:
            for idx, results in fut.result():
                outcomes[idx] = ImageOutcome(hashes[idx], results)
                to_cache.append((hashes[idx], key, results))
            in_flight.discard(fut)
        if cache is not None and to_cache:
            cache.put_many(to_cache)
        bar.update(sum(len(f.result()) for f in done))

    def submit(chunk: Chunk) -> None:
        nonlocal executor
        if executor is None:
            if workers == 1:
                executor = _Inline(spec.name, settings, max_pixels, threads=1)
            else:
                executor = cf.ProcessPoolExecutor(
                    max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                    initargs=(spec.name, settings.to_dict(), max_pixels),
                )
        in_flight.add(executor.submit(_work, chunk) if workers > 1 else executor.submit(chunk))
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


def outcomes_to_frame(inputs: pd.DataFrame, outcomes: Sequence[ImageOutcome]) -> pd.DataFrame:
    """One row per result (per image, or per face with policy 'all'): the embeddings file's columns."""
    if len(inputs) != len(outcomes):
        raise ValueError(f"{len(inputs)} inputs but {len(outcomes)} outcomes")
    passthrough = [c for c in inputs.columns if c not in ("path", "subject_id") and not c.startswith("_")]
    rows = []
    records = inputs.to_dict("records")
    for rec, outcome in zip(records, outcomes, strict=True):
        for r in outcome.results:
            row: dict[str, Any] = {
                "path": rec["path"],
                "subject_id": rec["subject_id"],
                "sha256": outcome.sha256,
                "ok": r.ok,
                "reason": r.reason,
                "message": r.message,
                "embedding": r.embedding,
                "det_score": None if r.face is None else float(r.face.score),
                "face_index": r.face_index,
                "n_faces": r.n_faces,
                "box": None if r.face is None else list(r.face.box),
                "landmarks": None if r.face is None else r.face.landmarks.ravel().tolist(),
            }
            for c in passthrough:
                row[c] = rec[c]
            rows.append(row)
    return pd.DataFrame(rows)
