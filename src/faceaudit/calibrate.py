"""Build an engine's verification calibration from labelled embeddings (``faceaudit calibrate``).

Every unordered pair of successfully enrolled images is compared; pairs of different subjects are
impostor pairs. For each FMR on a grid of 20 points per decade from 2e-2 down to the smallest FMR the
data supports (10 false matches), the threshold is taken from the exact impostor tail
(:func:`faceaudit.metrics.rates.global_threshold`,
the same rule as ``faceaudit evaluate``). The result records the data it came from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path

import numpy as np

from faceaudit.engines.base import EngineIdentity
from faceaudit.engines.calibration import MIN_FALSE_MATCHES, Calibration
from faceaudit.errors import InputError
from faceaudit.io.embeddings import embedding_matrix, read_embeddings
from faceaudit.metrics.rates import counts_at, global_threshold
from faceaudit.scoring.compare import compare_embeddings

MAX_FMR = 2e-2  # so that 1e-2 lies inside the calibrated range
STEPS_PER_DECADE = 20


def calibrate_from_embeddings(path: str | Path, dataset_name: str, manifest: str | Path | None = None) -> Calibration:
    """Calibrate the engine recorded in an embeddings file on its rows (all pairs)."""
    df, meta = read_embeddings(path)
    if meta.get("foreign"):
        raise InputError(f"{path}: a verification calibration belongs to a faceaudit engine, and these vectors were "
                         "not made by one; embed the images with `faceaudit embed --engine NAME|onnx:PATH` first")
    identity = EngineIdentity.from_dict(meta["engine"])
    ok = df[df["ok"]]
    if ok["subject_id"].nunique() < 2:
        raise InputError(f"{path}: need images of at least two subjects to form impostor pairs")
    emb = embedding_matrix(df)
    n = len(emb)
    n_pairs_est = n * (n - 1) // 2
    top_k = math.ceil(MAX_FMR * n_pairs_est) + 2
    subjects = np.unique(ok["subject_id"].astype(str).to_numpy(), return_inverse=True)[1]
    stats = compare_embeddings(emb, subjects, np.zeros(n, np.int32), 1, top_k=top_k)  # one group: everyone
    n_impostor = int(stats.n_impostor.sum())
    n_genuine = len(stats.genuine()[0])
    if n_genuine == 0:
        raise InputError(f"{path}: no subject has two enrolled images, so there are no genuine pairs")
    lowest = MIN_FALSE_MATCHES / n_impostor
    n_steps = math.floor(STEPS_PER_DECADE * math.log10(MAX_FMR / lowest))
    targets = MAX_FMR * 10.0 ** (-np.arange(n_steps + 1) / STEPS_PER_DECADE)
    rows: dict[float, tuple[float, float]] = {}
    for f in targets:
        t = global_threshold(stats, float(f))
        if t.false_matches == 0:
            continue
        c = counts_at(stats, t)
        rows.setdefault(t.value, (t.fmr, c.false_non_matches_all / c.genuine_pairs_all))
    thresholds = np.array(sorted(rows))
    source = {
        "dataset": dataset_name,
        "embeddings_file": Path(path).name,
        "images": len(df),
        "enrolled": int(n),
        "failed_to_enrol": int((~df["ok"]).sum()),
        "subjects": int(ok["subject_id"].nunique()),
        "pairs": "all unordered pairs of enrolled images; impostor = different subject_id",
        "rule": "FMR(t) = #(impostor score >= t) / #impostor; threshold = next float above the (k+1)-th "
                "largest impostor score, k = floor(target * #impostor)",
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "engine_identity": identity.to_dict(),
    }
    if manifest is not None:
        source["manifest_sha256"] = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    return Calibration(
        engine=identity.name,
        engine_version=identity.version,
        model_sha256=tuple(str(m["sha256"]) for m in identity.models),
        fmr=np.array([rows[t][0] for t in thresholds]),
        threshold=thresholds,
        fnmr=np.array([rows[t][1] for t in thresholds]),
        n_impostor=n_impostor,
        n_genuine=n_genuine,
        source=source,
    )
