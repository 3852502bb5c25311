"""``faceaudit demo``: embed the bundled London faces and verify every pair at a calibrated threshold.

A first look at per-group error rates on real, self-labelled faces; the full audit report is built
on the evaluation engine. Genuine pairs are the two photos of each person; impostor pairs are all
pairs of photos of different people, counted per group when both people are in the same group.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from faceaudit.api import EmbedRun, calibration_for, embed


def bundled_manifest() -> Path:
    """The manifest of the bundled 112x112 London crops (CC BY 4.0, see its README)."""
    return Path(str(resources.files("faceaudit").joinpath("data", "london_tiny", "manifest.csv")))


@dataclass(frozen=True)
class DemoResult:
    run: EmbedRun
    threshold: float
    target_fmr: float
    pairs: pd.DataFrame  # one row per pair: a, b, genuine, score, match, and both images' groups
    by_group: pd.DataFrame


def pair_table(frame: pd.DataFrame, threshold: float, attributes: list[str]) -> pd.DataFrame:
    """All unordered pairs of enrolled images with their scores and match decisions."""
    ok = frame[frame["ok"]].reset_index(drop=True)
    emb = np.stack([np.asarray(v, np.float32) for v in ok["embedding"]])
    scores = emb @ emb.T
    ia, ib = np.triu_indices(len(ok), k=1)
    pairs = pd.DataFrame({"a": ok["path"].to_numpy()[ia], "b": ok["path"].to_numpy()[ib],
                          "genuine": ok["subject_id"].to_numpy()[ia] == ok["subject_id"].to_numpy()[ib],
                          "score": scores[ia, ib]})
    pairs["match"] = pairs["score"] >= threshold
    for attr in attributes:
        vals = ok[attr].fillna("unknown").astype(str).to_numpy()
        pairs[f"{attr}_a"], pairs[f"{attr}_b"] = vals[ia], vals[ib]
    return pairs


def group_rates(pairs: pd.DataFrame, attr: str) -> pd.DataFrame:
    """Per group: FNMR over genuine pairs, FMR over same-group impostor pairs (counts kept)."""
    same = pairs[pairs[f"{attr}_a"] == pairs[f"{attr}_b"]]
    rows = []
    for group, g in same.groupby(f"{attr}_a"):
        gen, imp = g[g["genuine"]], g[~g["genuine"]]
        rows.append({"attribute": attr, "group": group, "genuine_pairs": len(gen),
                     "false_non_matches": int((~gen["match"]).sum()),
                     "fnmr": float((~gen["match"]).mean()) if len(gen) else float("nan"),
                     "impostor_pairs": len(imp), "false_matches": int(imp["match"].sum()),
                     "fmr": float(imp["match"].mean()) if len(imp) else float("nan")})
    return pd.DataFrame(rows)


def run_demo(out: str | Path, *, fmr: float = 1e-4, workers: int | None = None, progress: bool = True) -> DemoResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = embed(bundled_manifest(), out / "embeddings.parquet", workers=workers, progress=progress)
    threshold = calibration_for(None).threshold_for(fmr)
    attrs = ["sex", "race"]
    pairs = pair_table(run.frame, threshold, attrs)
    pairs.to_csv(out / "pairs.csv", index=False)
    by_group = pd.concat([group_rates(pairs, a) for a in attrs], ignore_index=True)
    by_group.to_csv(out / "by_group.csv", index=False)
    return DemoResult(run=run, threshold=threshold, target_fmr=fmr, pairs=pairs, by_group=by_group)
