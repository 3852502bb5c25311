"""Slow, obviously-correct reference computations that the streaming code is checked against."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pair_table(frame: pd.DataFrame, threshold: float, attributes: list[str]) -> pd.DataFrame:
    """All unordered pairs of enrolled images of an embeddings frame, with scores and match decisions."""
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


def materialised_counts(scores: np.ndarray, subj: np.ndarray, group: np.ndarray, draws: np.ndarray,
                        threshold: float, n_groups: int = 2) -> np.ndarray:
    """Within-group counts of one bootstrap replicate, by building it: (4, G) false matches, impostor pairs,
    false non-matches, genuine pairs. Subject u drawn draws[u] times brings that many copies of its images;
    pairs between different copies of one subject are neither genuine nor impostor pairs."""
    copies = [(i, u, c) for u in range(len(draws)) for c in range(draws[u]) for i in np.flatnonzero(subj == u)]
    out = np.zeros((4, n_groups))
    for x in range(len(copies)):
        for y in range(x + 1, len(copies)):
            (i, u, cu), (j, v, cv) = copies[x], copies[y]
            if group[i] != group[j] or (u == v and cu != cv):
                continue
            k, s = group[i], scores[i, j]
            if u == v:
                out[3, k] += 1
                out[2, k] += s < threshold
            else:
                out[1, k] += 1
                out[0, k] += s >= threshold
    return out
