"""LFW View 2 accuracy of the default engine: 10 folds of 600 pairs, threshold chosen on 9 folds.

Embeds the 7,701 images of pairs.txt with `faceaudit.embed` (cached), scores each pair by cosine
similarity, and reports the mean accuracy over folds. A pair with an image that failed to enrol is
decided as a non-match (score -inf), so failures to enrol count against accuracy.
Usage: python benchmarks/lfw_view2.py [--engine NAME] [--cache PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import faceaudit
from _common import require_lfw, view2_manifest, write_result
from faceaudit.metrics.verification import kfold_accuracy


def pair_scores(frame: pd.DataFrame, pairs: list) -> np.ndarray:
    rows = zip(frame["path"], frame["embedding"], frame["ok"], strict=True)
    emb = {p: np.asarray(e, np.float32) for p, e, ok in rows if ok}
    out = np.full(len(pairs), -np.inf)
    for i, p in enumerate(pairs):
        if p.a in emb and p.b in emb:
            out[i] = float(emb[p.a] @ emb[p.b])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=None)
    ap.add_argument("--cache", default=None, help="embedding cache file (default: the user cache)")
    args = ap.parse_args()
    lfw = require_lfw()
    with tempfile.TemporaryDirectory() as tmp:
        pairs, images, manifest = view2_manifest(lfw, Path(tmp))
        run = faceaudit.embed(manifest, engine=args.engine, cache=args.cache or True, progress=True)
    frame = run.frame.assign(path=[str(Path(p).relative_to(lfw)) for p in run.frame["path"]])
    scores = pair_scores(frame, pairs)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    acc = kfold_accuracy(scores, same, folds)
    n_fail_pairs = int(np.isinf(scores).sum())
    print(f"engine {run.metadata['engine']['name']}: {len(images)} images, {run.n_ok} enrolled, "
          f"failures {run.reasons}")
    print(f"LFW View 2 accuracy: {acc.mean:.4%} +- {acc.standard_error:.4%} (standard error over 10 folds); "
          f"pairs with a failed image: {n_fail_pairs}")
    print("fold accuracy:", " ".join(f"{a:.4f}" for a in acc.fold_accuracy))
    write_result("lfw_view2", {
        "engine": run.metadata["engine"],
        "images": len(images), "enrolled": run.n_ok, "failures": run.reasons,
        "pairs_with_failed_image": n_fail_pairs,
        "accuracy_mean": acc.mean, "accuracy_std": acc.std, "accuracy_standard_error": acc.standard_error,
        "fold_accuracy": list(acc.fold_accuracy), "fold_threshold": list(acc.fold_threshold),
        "target": ">= 0.9940",
    })


if __name__ == "__main__":
    main()
