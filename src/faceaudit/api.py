"""The Python API: the same operations as the CLI, on paths, bytes or arrays.

    >>> import faceaudit
    >>> result = faceaudit.verify("a.jpg", "b.jpg", fmr=1e-4)
    >>> result.match, result.score, result.threshold

Threads: an engine is loaded once per process and is not thread-safe (OpenCV's detector keeps the size of the
last image), so :func:`detect`, :func:`embed_image`, :func:`embed_images` and :func:`verify` run the engine
under a lock of its own. Image decoding happens outside it; a server runs several worker processes for more
than one core's worth of engine work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from faceaudit import __version__
from faceaudit.engines.base import Engine, EnrolSettings, Face, FaceResult
from faceaudit.engines.batch import ImageOutcome, embed_files
from faceaudit.engines.cache import EmbeddingCache, config_key
from faceaudit.engines.calibration import Calibration, load_calibration
from faceaudit.engines.registry import engine_spec
from faceaudit.errors import ImageError
from faceaudit.io.embeddings import write_embeddings
from faceaudit.io.images import DEFAULT_MAX_PIXELS, load_image
from faceaudit.io.manifest import FILE_COLUMN, read_inputs

if TYPE_CHECKING:
    from faceaudit.mitigation.artefact import DeployedCalibration

ImageLike = str | Path | bytes | np.ndarray

_engines: dict[str, Engine] = {}
_engine_locks: dict[str, threading.Lock] = {}
_lock = threading.Lock()
T = TypeVar("T")


def load_engine(name: str | None = None) -> Engine:
    """The engine called ``name`` (default engine when None), loaded once per process."""
    spec = engine_spec(name)
    with _lock:
        if spec.name not in _engines:
            _engines[spec.name] = spec.load(1)
            _engine_locks[spec.name] = threading.Lock()
        return _engines[spec.name]


def _with_engine(name: str | None, work: Callable[[Engine], T]) -> T:
    """``work(engine)`` while holding the engine's lock (module docstring: engines are not thread-safe)."""
    engine = load_engine(name)
    with _engine_locks[engine_spec(name).name]:
        return work(engine)


def _rgb(image: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        return image
    return load_image(image, max_pixels=max_pixels).rgb


def detect(image: ImageLike, *, engine: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Face]:
    """Every face in ``image`` (path, bytes, or RGB array) with box, 5 landmarks and score. An image over
    ``max_pixels`` is refused from its header (ImageError ``too_large``) before it is decoded."""
    rgb = _rgb(image, max_pixels)
    return _with_engine(engine, lambda e: e.detect(rgb))


def embed_image(
    image: ImageLike, *, engine: str | None = None, settings: EnrolSettings | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[FaceResult]:
    """Enrol the subject face(s) of one image: embeddings, or failures to enrol with a reason."""
    rgb = _rgb(image, max_pixels)
    return _with_engine(engine, lambda e: e.enrol(rgb, settings))


def embed_images(
    images: Sequence[ImageLike], *, engine: str | None = None, settings: EnrolSettings | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, names: Sequence[str] | None = None,
) -> list[list[FaceResult]]:
    """:func:`embed_image` of each image, in order, in this process (for a handful of images, such as an upload;
    :func:`embed` is for datasets). An unusable image raises ImageError naming it (``names[i]``, else
    "image i+1"); a face that fails to enrol is a result with its reason, as with :func:`embed_image`. One image
    is decoded at a time, so memory holds one decoded image however many are given."""
    out = []
    for i, image in enumerate(images):
        try:
            rgb = _rgb(image, max_pixels)
        except ImageError as exc:
            name = names[i] if names is not None else f"image {i + 1}"
            raise ImageError(exc.reason, str(exc), name) from None  # the message is prefixed with the name
        out.append(embed_image(rgb, engine=engine, settings=settings))
    return out


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


def _embed_on_cluster(cluster: Any, files: list[str], engine: str, settings: EnrolSettings,
                      store: EmbeddingCache | None, batch_size: int, progress: bool,
                      max_pixels: int) -> list[ImageOutcome]:
    from faceaudit.distributed import enrol_on_cluster

    got = enrol_on_cluster(cluster, files, list(range(len(files))), engine=engine, settings=settings,
                           max_pixels=max_pixels, batch_size=batch_size, progress=progress)
    by_index = {idx: ImageOutcome(sha, results) for idx, sha, results in got}
    if store is not None:
        key = config_key(engine_spec(engine).identity(), settings, max_pixels)
        store.put_many([(o.sha256, key, o.results) for o in by_index.values() if o.sha256])
    return [by_index[i] for i in range(len(files))]


@dataclass(frozen=True)
class EmbedRun:
    """The result of :func:`embed`: the rows written, the file's metadata, and counts."""

    frame: pd.DataFrame
    metadata: dict[str, Any]
    out: Path | None
    n_images: int
    n_ok: int
    n_cached: int
    reasons: dict[str, int] = field(default_factory=dict)


def embed(
    source: str | Path | pd.DataFrame,
    out: str | Path | None = None,
    *,
    engine: str | None = None,
    settings: EnrolSettings | None = None,
    workers: int | None = None,
    cache: str | Path | bool = True,
    batch_size: int = 4,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cluster: Any = None,
) -> EmbedRun:
    """Embed every image of a folder (one subfolder per subject) or manifest; write Parquet to ``out``.

    ``source`` may also be a table already read (columns ``path``, ``subject_id``, ``_file``, as
    :func:`faceaudit.io.manifest.read_inputs` returns). ``cache``: True for the default cache file,
    a path for another, False for none. ``cluster``: a ``distributed.Client``; workers then read and
    enrol the images (from paths they must all see) and the results fill this machine's cache.
    """
    inputs = source if isinstance(source, pd.DataFrame) else read_inputs(source)
    spec = engine_spec(engine)
    settings = (settings or EnrolSettings()).resolve(spec.min_det_score)
    store = None if cache is False else EmbeddingCache(None if cache is True else cache)
    try:
        if cluster is not None:
            outcomes = _embed_on_cluster(cluster, list(inputs[FILE_COLUMN]), spec.name, settings, store,
                                         batch_size, progress, max_pixels)
        else:
            outcomes = embed_files(
                list(inputs[FILE_COLUMN]), engine=spec.name, settings=settings, workers=workers, cache=store,
                batch_size=batch_size, progress=progress, max_pixels=max_pixels,
            )
    finally:
        if store is not None:
            store.close()
    frame = outcomes_to_frame(inputs, outcomes)
    metadata = {
        "faceaudit_version": __version__,
        "engine": spec.identity().to_dict(),
        "settings": {**settings.to_dict(), "max_pixels": max_pixels},
        "source": "table" if isinstance(source, pd.DataFrame) else str(source),
    }
    if out is not None:
        write_embeddings(frame, out, metadata)
    failed = frame.loc[~frame["ok"], "reason"].value_counts()
    return EmbedRun(
        frame=frame, metadata=metadata, out=None if out is None else Path(out), n_images=len(inputs),
        n_ok=int(frame["ok"].sum()), n_cached=sum(o.cached for o in outcomes),
        reasons={str(k): int(v) for k, v in failed.items()},
    )


@dataclass(frozen=True)
class VerifyResult:
    """A 1:1 decision. ``match`` is None when a face could not be enrolled (see ``failures``)."""

    match: bool | None
    score: float | None
    threshold: float
    target_fmr: float
    calibrated_fmr: float  # the calibration data's FMR at this threshold
    calibrated_fnmr: float  # the calibration data's FNMR at this threshold
    score_fmr: float | None  # the calibration data's FMR at the pair's own score
    engine: str
    calibration: str
    faces: tuple[FaceResult, FaceResult]
    failures: tuple[str, ...] = ()
    #: with a fairness calibration (``calibration=`` of :func:`verify`): its identity (method, SHA-256, engine,
    #: dataset); ``score`` and ``threshold`` are then calibrated, and ``raw_score`` is the plain cosine
    fairness_calibration: dict[str, Any] | None = None
    raw_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "score": self.score,
            "raw_score": self.raw_score,
            "threshold": self.threshold,
            "fairness_calibration": self.fairness_calibration,
            "target_fmr": self.target_fmr,
            "calibrated_fmr": self.calibrated_fmr,
            "calibrated_fnmr": self.calibrated_fnmr,
            "score_fmr": self.score_fmr,
            "engine": self.engine,
            "calibration": self.calibration,
            "faces": [f.to_dict() for f in self.faces],
            "failures": list(self.failures),
        }


def calibration_for(engine: str | None = None) -> Calibration:
    """The calibration shipped with the engine."""
    return load_calibration(engine_spec(engine).identity())


def _fairness_calibration(calibration: DeployedCalibration | str | Path | None,
                          engine: Engine) -> DeployedCalibration | None:
    """The fairness calibration given (a path is loaded and checked), refused if fitted for another engine."""
    if calibration is None:
        return None
    from faceaudit.mitigation.artefact import load_calibration as load_fairness_calibration

    if isinstance(calibration, str | Path):
        return load_fairness_calibration(calibration, engine.identity)
    calibration.check_engine(engine.identity)
    return calibration


def verify(
    a: ImageLike, b: ImageLike, *, fmr: float | None = None, engine: str | None = None,
    settings: EnrolSettings | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    calibration: DeployedCalibration | str | Path | None = None,
) -> VerifyResult:
    """Do images ``a`` and ``b`` show the same person, at the threshold calibrated for ``fmr``?

    Score: cosine similarity of the two embeddings. Match when score >= threshold. ``fmr`` defaults to 1e-4.

    ``calibration``: a fairness calibration (path of a ``faceaudit calibrate --method`` artefact, or one loaded
    with :func:`faceaudit.mitigation.artefact.load_calibration`), refused if fitted for another engine. The score
    is then the calibrated score of the pair (from both raw embeddings), the threshold the calibration's own for
    ``fmr`` (default: the FMR it was fitted at), and the result carries its identity (``fairness_calibration``).
    """
    eng = load_engine(engine)
    fair = _fairness_calibration(calibration, eng)
    rgb_a, rgb_b = _rgb(a, max_pixels), _rgb(b, max_pixels)
    if fair is None:
        target = 1e-4 if fmr is None else fmr
        cal = load_calibration(eng.identity)
        threshold = cal.threshold_for(target)
        table_fmr, table_fnmr, dataset = cal.fmr_at, cal.fnmr_at, str(cal.source.get("dataset", ""))
    else:
        target = next(iter(fair.thresholds)) if fmr is None else fmr
        threshold = fair.threshold_for(target)  # a bad fmr fails before embedding
        table_fmr, table_fnmr, dataset = fair.fmr_at, fair.fnmr_at, str(fair.dataset.get("name", ""))
    enrolled = _with_engine(engine, lambda e: (e.enrol(rgb_a, settings)[0], e.enrol(rgb_b, settings)[0]))
    failures = tuple(f"{name}: {r.reason} ({r.message})" for name, r in zip("AB", enrolled, strict=True) if not r.ok)
    score = raw = None
    if not failures:
        ea, eb = enrolled[0].embedding, enrolled[1].embedding
        assert ea is not None and eb is not None
        raw = float(np.dot(ea, eb))
        score = raw if fair is None else float(fair.score(ea, eb)[0])
    return VerifyResult(
        match=None if score is None else score >= threshold,
        score=score,
        threshold=threshold,
        target_fmr=target,
        calibrated_fmr=table_fmr(threshold),
        calibrated_fnmr=table_fnmr(threshold),
        score_fmr=None if score is None else table_fmr(score),
        engine=eng.name,
        calibration=dataset,
        faces=enrolled,
        failures=failures,
        fairness_calibration=None if fair is None else fair.provenance(),
        raw_score=raw,
    )
