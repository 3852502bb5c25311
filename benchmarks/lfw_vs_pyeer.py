"""LFW all pairs by sex: faceaudit's evaluation against pyeer on the same scores (EER, FMR100, FMR1000, time).

faceaudit: `evaluate_embeddings` end to end (blocked comparison of all 87.5 million pairs, the
per-group statistics, thresholds, EER), without bootstrap or permutations, which pyeer does not do.
pyeer: `get_eer_stats` per sex on that group's genuine and same-group impostor scores, computed
beforehand and not timed (this favours pyeer). Every score is used: nothing is sampled.
Usage: python benchmarks/lfw_vs_pyeer.py [--embeddings LFW.parquet]   (default: embed LFW, cached)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from pyeer.eer_info import get_eer_stats

import faceaudit
from _common import require_lfw, write_result
from faceaudit.evaluate import evaluate_embeddings
from faceaudit.io.embeddings import embedding_matrix, read_embeddings


def group_scores(emb: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All genuine and impostor scores among ``emb`` (blocked, float64 for pyeer)."""
    gen, imp = [], []
    for i0 in range(0, len(emb), 2048):
        s = emb[i0:i0 + 2048] @ emb[i0:].T
        r = np.arange(i0, min(i0 + 2048, len(emb)))[:, None]
        c = np.arange(i0, len(emb))[None, :]
        upper = c > r
        same = subjects[i0:i0 + 2048, None] == subjects[None, i0:]
        gen.append(s[upper & same].astype(np.float64))
        imp.append(s[upper & ~same].astype(np.float64))
    return np.concatenate(gen), np.concatenate(imp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embeddings", default=None)
    args = ap.parse_args()
    path = args.embeddings
    tmp = None
    if path is None:
        lfw = require_lfw()
        tmp = tempfile.TemporaryDirectory()
        path = str(Path(tmp.name) / "lfw.parquet")
        faceaudit.embed(lfw / "manifest.csv", path, progress=True)
    t0 = time.perf_counter()
    res = evaluate_embeddings(path, ["sex"], target_fmrs=[1e-2, 1e-3], bootstrap=0, permutations=0)
    ours_s = time.perf_counter() - t0
    analysis = res.analyses[0]
    df, _ = read_embeddings(path)
    ok = df[df["ok"]].reset_index(drop=True)
    emb = embedding_matrix(df)
    rows = []
    pyeer_s = 0.0
    for gi, label in enumerate(analysis.grouping.labels):
        sel = (ok["sex"].fillna("unknown").astype(str) == label.split("=", 1)[1]).to_numpy()
        gen, imp = group_scores(emb[sel], ok.loc[sel, "subject_id"].to_numpy())
        t0 = time.perf_counter()
        ref = get_eer_stats(gen, imp)
        pyeer_s += time.perf_counter() - t0
        ops = {op.target_fmr: op for op in analysis.operating_points}
        ours_fnmr = {f: op.counts.false_non_matches[gi] / op.counts.genuine_pairs[gi] for f, op in ops.items()}
        rows.append({"group": label, "genuine": len(gen), "impostor": len(imp),
                     "eer_faceaudit": analysis.det[gi].eer, "eer_pyeer": float(ref.eer),
                     "fnmr_at_global_fmr100_faceaudit": ours_fnmr[1e-2], "fmr100_pyeer_group": float(ref.fmr100),
                     "fnmr_at_global_fmr1000_faceaudit": ours_fnmr[1e-3], "fmr1000_pyeer_group": float(ref.fmr1000)})
        print(f"{label}: {len(gen):,} genuine, {len(imp):,} impostor; EER faceaudit {analysis.det[gi].eer:.5f}, "
              f"pyeer {ref.eer:.5f}", flush=True)
    print(f"faceaudit {ours_s:.1f} s (comparison included) vs pyeer {pyeer_s:.1f} s (scores given): "
          f"{pyeer_s / ours_s:.1f}x (target >= 10x)")
    print("note: FMR100/FMR1000 differ in meaning: faceaudit's threshold is global (all impostor pairs, "
          "cross-group too), pyeer's is per group; both are reported, the EERs are comparable.")
    write_result("lfw_vs_pyeer", {"embeddings": str(path), "faceaudit_seconds": ours_s, "pyeer_seconds": pyeer_s,
                                  "speedup": pyeer_s / ours_s, "groups": rows, "sampled": False})
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
