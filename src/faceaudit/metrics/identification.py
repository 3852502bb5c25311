"""Identification (1:N) accuracy by the probe's demographic group.

Definitions (NISTIR 8271, FRVT Part 2: Identification, Grother, Ngan, Hanaoka 2019; ISO/IEC 19795-1):
a search of a probe against a gallery of N subjects returns candidates sorted by score.

- FNIR(N, R, T): the fraction of mated searches (the probe's subject is in the gallery) whose mate is
  not among the top R candidates with a score >= T.
- FPIR(N, T): the fraction of non-mated searches (the subject is not in the gallery) that return any
  candidate with score >= T, i.e. whose top score is >= T.
- Rank-k accuracy: the fraction of mated searches with the mate among the top k candidates (no
  threshold), the cumulative match characteristic.
- T for a target FPIR: the smallest T with FPIR(T) <= target over all non-mated searches (next float
  above the (k+1)-th largest top score, k = floor(target * #non-mated)), as for the FMR threshold.
- The demographic make-up of false positives: for non-mated searches whose top candidate scores >= T,
  the group of that candidate, counted by the probe's group.

A subject's gallery entry is its best-scoring image (max over its gallery images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Split:
    """Which images form the gallery, the mated probes and the non-mated probes (indices into rows)."""

    gallery: np.ndarray
    mated: np.ndarray
    non_mated: np.ndarray


def split_gallery_probes(subjects: np.ndarray, seed: int = 0) -> Split:
    """Subjects with 2+ images: first image to the gallery, the others are mated probes. Subjects with
    one image: a seeded half join the gallery (distractors), the other half are non-mated probes."""
    subjects = np.asarray(subjects)
    order = np.argsort(subjects, kind="stable")
    _, first, counts = np.unique(subjects[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    gallery: list[int] = []
    mated: list[int] = []
    non_mated: list[int] = []
    singles = np.flatnonzero(counts == 1)
    to_gallery = set(rng.permutation(singles)[: len(singles) // 2].tolist())
    for k, (f, c) in enumerate(zip(first, counts, strict=True)):
        rows = order[f:f + c]
        if c >= 2:
            gallery.append(rows[0])
            mated.extend(rows[1:])
        elif k in to_gallery:
            gallery.append(rows[0])
        else:
            non_mated.append(rows[0])
    return Split(np.array(gallery, int), np.array(mated, int), np.array(non_mated, int))


@dataclass(frozen=True)
class Searches:
    """Per probe: top candidates (subject codes, scores) and, for mated probes, the mate's rank and score."""

    top_subjects: np.ndarray  # (P, L)
    top_scores: np.ndarray  # (P, L)
    mate_rank: np.ndarray  # (P,) 1-based; 0 for non-mated probes
    mate_score: np.ndarray  # (P,) nan for non-mated


def search(probes: np.ndarray, probe_subjects: np.ndarray, gallery: np.ndarray, gallery_subjects: np.ndarray,
           candidates: int = 50, block: int = 1024) -> Searches:
    """Search every probe against the gallery (cosine scores), one subject per candidate."""
    g_subj, g_index = np.unique(gallery_subjects, return_inverse=True)
    n_sub = len(g_subj)
    L = min(candidates, n_sub)
    p = len(probes)
    top_s = np.empty((p, L), dtype=g_subj.dtype)
    top_v = np.empty((p, L), np.float32)
    rank = np.zeros(p, np.int64)
    mate = np.full(p, np.nan, np.float32)
    pos_of = {s: i for i, s in enumerate(g_subj)}
    for r0 in range(0, p, block):
        r1 = min(p, r0 + block)
        raw = probes[r0:r1] @ gallery.T
        per_subject = np.full((r1 - r0, n_sub), -np.inf, np.float32)
        np.maximum.at(per_subject.T, g_index, raw.T)  # best image per gallery subject
        part = np.argpartition(-per_subject, L - 1, axis=1)[:, :L]
        vals = np.take_along_axis(per_subject, part, axis=1)
        o = np.argsort(-vals, axis=1, kind="stable")
        top_s[r0:r1] = g_subj[np.take_along_axis(part, o, axis=1)]
        top_v[r0:r1] = np.take_along_axis(vals, o, axis=1)
        for k in range(r1 - r0):
            j = pos_of.get(probe_subjects[r0 + k])
            if j is not None:
                ms = per_subject[k, j]
                mate[r0 + k] = ms
                rank[r0 + k] = 1 + int(np.count_nonzero(per_subject[k] > ms))
    return Searches(top_s, top_v, rank, mate)


def fpir_threshold(nonmated_top: np.ndarray, target: float) -> float:
    """Smallest T with FPIR(T) = #(top score >= T) / #non-mated <= target."""
    s = np.sort(np.asarray(nonmated_top, np.float32))[::-1]
    k = int(np.floor(target * len(s)))
    if k >= len(s):
        return float(np.nextafter(s[-1], np.float32(-np.inf)))
    return float(np.nextafter(s[k], np.float32(np.inf)))


def identification_table(res: Searches, mated: np.ndarray, probe_groups: np.ndarray, labels: list[str],
                         candidate_groups: dict[Any, str], fpirs: list[float], ranks: list[int]) -> dict[str, Any]:
    """Rank-k accuracy, and FPIR / FNIR at thresholds for target FPIRs, overall and by probe group."""
    mated = np.asarray(mated, bool)
    probe_groups = np.asarray(probe_groups)
    nm = ~mated
    if nm.sum() == 0 or mated.sum() == 0:
        raise ValueError("identification needs both mated and non-mated probes")
    out: dict[str, Any] = {"mated_searches": int(mated.sum()), "non_mated_searches": int(nm.sum()),
                           "gallery_candidates": int(res.top_scores.shape[1]), "rank_accuracy": [],
                           "operating_points": []}
    for k in ranks:
        hit = (res.mate_rank >= 1) & (res.mate_rank <= k)
        by_group: dict[str, float | None] = {}
        for gi, lab in enumerate(labels):
            sel = mated & (probe_groups == gi)
            by_group[lab] = float(hit[sel].mean()) if sel.any() else None
        row = {"rank": k, "accuracy": float(hit[mated].mean()), "groups": by_group}
        out["rank_accuracy"].append(row)
    top = res.top_scores[:, 0]
    for target in fpirs:
        t = fpir_threshold(top[nm], target)
        fp = nm & (top >= t)
        miss = mated & ~((res.mate_rank == 1) & (res.mate_score >= t))  # FNIR at rank 1
        fnir_by_rank = {}
        for r in ranks:  # FNIR(N, R, T): mate not among the top R with a score >= T
            found = (res.mate_rank >= 1) & (res.mate_rank <= r) & (res.mate_score >= t)
            fnir_by_rank[str(r)] = float((~found)[mated].mean())
        op: dict[str, Any] = {"target_fpir": target, "threshold": t, "fpir": float(fp[nm].mean()),
                              "fnir_rank1": float(miss[mated].mean()), "fnir_by_rank": fnir_by_rank,
                              "groups": [], "false_positive_candidates": {}}
        for gi, lab in enumerate(labels):
            sel_nm, sel_m = nm & (probe_groups == gi), mated & (probe_groups == gi)
            op["groups"].append({
                "group": lab, "non_mated": int(sel_nm.sum()), "mated": int(sel_m.sum()),
                "fpir": float(fp[sel_nm].mean()) if sel_nm.any() else None,
                "fnir_rank1": float(miss[sel_m].mean()) if sel_m.any() else None,
            })
            cands = pd.Series([candidate_groups[s] for s in res.top_subjects[fp & (probe_groups == gi), 0]])
            op["false_positive_candidates"][lab] = {str(k): int(v) for k, v in cands.value_counts().items()}
        out["operating_points"].append(op)
    return out
