"""``faceaudit evaluate``: from embeddings or another system's scores to per-group error rates.

The comparison runs once, on the finest grouping (the intersection of every attribute asked for);
each analysis (one per attribute, or the intersection with ``intersect=True``) is derived from it
exactly by :func:`faceaudit.scoring.stats.coarsen`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from faceaudit.errors import InputError
from faceaudit.io.embeddings import embedding_matrix, read_embeddings
from faceaudit.io.scores import iter_pairs, read_score_manifest
from faceaudit.metrics.bootstrap import BootstrapSpec
from faceaudit.metrics.result import Analysis, EvaluationResult, GroupCounts, analyse
from faceaudit.scoring.compare import COL_BLOCK, ROW_BLOCK, ImpostorSample, compare_embeddings
from faceaudit.scoring.groups import Grouping, assign_groups, cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins, coarsen

DEFAULT_FMRS = (1e-3, 1e-4, 1e-5, 1e-6)
#: A target FMR is evaluated only when at least this many false matches are expected at it.
MIN_EXPECTED_FALSE_MATCHES = 10
MAX_TAIL = 5_000_000


def _analyses_attrs(by: Sequence[str], intersect: bool) -> list[list[str]]:
    if not by:
        raise InputError("name at least one attribute to group by (--by sex)")
    return [list(by)] if intersect else [[a] for a in by]


def _tail_size(n_impostor: int, targets: Sequence[float], top_k: int | None) -> int:
    if top_k is not None:
        return top_k
    return int(min(MAX_TAIL, math.ceil(max(targets) * n_impostor) + 2))


def _supported(targets: Sequence[float], n_impostor: int) -> tuple[list[float], list[dict[str, Any]]]:
    keep, skipped = [], []
    for t in targets:
        if t * n_impostor >= MIN_EXPECTED_FALSE_MATCHES:
            keep.append(float(t))
        else:
            skipped.append({"target_fmr": t, "reason": f"{n_impostor:,} impostor pairs give fewer than "
                            f"{MIN_EXPECTED_FALSE_MATCHES} expected false matches"})
    if not keep:
        raise InputError(f"none of the target FMRs {list(targets)} is supported by {n_impostor:,} impostor pairs "
                         f"(need target x pairs >= {MIN_EXPECTED_FALSE_MATCHES}); use a larger target FMR")
    return keep, skipped


def _group_counts(table: pd.DataFrame, grouping: Grouping, ok: np.ndarray, stats: PairStatistics) -> list[GroupCounts]:
    g = grouping.n_groups
    diag = cell_index(np.arange(g), np.arange(g), g)
    _, gcells, _ = stats.genuine()
    gen = np.bincount(gcells, minlength=stats.impostor_hist.shape[0])[diag] if len(gcells) else np.zeros(g, int)
    imp = stats.n_impostor[diag]
    out = []
    for i, lab in enumerate(grouping.labels):
        rows = grouping.index == i
        out.append(GroupCounts(group=lab, values=grouping.values(i),
                               subjects=int(table.loc[rows, "subject_id"].nunique()), images=int(rows.sum()),
                               failed_to_enrol=int((rows & ~ok).sum()), genuine_pairs=int(gen[i]),
                               impostor_pairs=int(imp[i])))
    return out


def _coarse_map(fine: Grouping, coarse: Grouping) -> np.ndarray:
    mapping = np.empty(fine.n_groups, np.int64)
    mapping[fine.index] = coarse.index
    return mapping


def _build(table: pd.DataFrame, ok: np.ndarray, fine: Grouping, stats: PairStatistics, by: Sequence[str],
           intersect: bool, targets: Sequence[float], alpha: float, subjects: np.ndarray | None = None,
           bootstrap: BootstrapSpec | None = None, permutations: int = 0) -> list[Analysis]:
    out = []
    for attrs in _analyses_attrs(by, intersect):
        grouping = assign_groups(table, attrs)
        s = stats if grouping.labels == fine.labels else coarsen(stats, _coarse_map(fine, grouping), grouping.n_groups)
        per_subject = None
        if subjects is not None:
            per_subject = np.zeros((int(subjects.max()) + 1, grouping.n_groups))
            np.add.at(per_subject, (subjects[ok], grouping.index[ok]), 1)
        out.append(analyse(s, grouping, _group_counts(table, grouping, ok, s), list(targets), alpha,
                           per_subject, bootstrap, permutations))
    return out


def _uncertainty(spec: BootstrapSpec) -> dict[str, Any]:
    if spec.replicates <= 0:
        return {"method": None, "note": "bootstrap switched off (--bootstrap 0)"}
    return {
        "method": "subject-level bootstrap, stratified by group, percentile intervals",
        "replicates": spec.replicates, "seed": spec.seed, "confidence": spec.confidence,
        "zero_errors": "rule of 3: [0, 3/n] when a group has no observed errors",
        "effective_sample_size": "n_eff = p (1 - p) / bootstrap variance of p",
        "threshold": "fixed at its full-data value; intervals only where the threshold is exact",
    }


def evaluate_embeddings(
    path: str | Path,
    by: Sequence[str],
    *,
    intersect: bool = False,
    target_fmrs: Sequence[float] = DEFAULT_FMRS,
    alpha: float = 0.5,
    bins: ScoreBins | None = None,
    top_k: int | None = None,
    bootstrap: int = 1000,
    permutations: int = 1000,
    seed: int = 0,
    impostor_sample: float | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate an embeddings file from ``faceaudit embed``: all pairs of enrolled images.

    ``bootstrap`` replicates of a subject-level bootstrap give the intervals, and ``permutations``
    shuffles of group labels between subjects test FPD and FND (0: none). ``impostor_sample``: keep
    each impostor pair with this probability (declared in the result; genuine pairs are all kept).
    Intervals and permutation tests assume all pairs, so they are not computed for a sample.
    """
    df, meta = read_embeddings(path)
    fine = assign_groups(df, list(by))
    ok = df["ok"].to_numpy(bool)
    subjects = np.unique(df["subject_id"].astype(str).to_numpy(), return_inverse=True)[1].astype(np.int32)
    emb = embedding_matrix(df)
    n = len(emb)
    sample = None if impostor_sample is None or impostor_sample >= 1.0 else ImpostorSample(impostor_sample, seed)
    n_pairs = n * (n - 1) // 2
    n_expected = int(n_pairs * (sample.rate if sample else 1.0))
    targets, skipped = _supported(target_fmrs, n_expected)
    bins = bins or ScoreBins(-1.0, 1.0, 20_000)
    # a Bernoulli sample may hold more pairs than expected: six standard deviations of margin
    margin = n_expected + (6 * math.sqrt(n_pairs * sample.rate * (1 - sample.rate)) if sample else 0)
    k = _tail_size(int(margin), targets, top_k)
    stats = compare_embeddings(emb, subjects[ok], fine.index[ok], fine.n_groups, bins=bins, top_k=k,
                               progress=progress, sample=sample)
    if stats.n_impostor.sum() == 0:
        raise InputError(f"{path}: no impostor pairs (all enrolled images belong to one subject)")
    spec = BootstrapSpec(replicates=0 if sample else bootstrap, seed=seed)
    uncertainty = {**_uncertainty(spec), "permutation_test": {
        "permutations": 0 if sample else permutations, "seed": seed,
        "method": "group labels shuffled between subjects; p = (1 + #(statistic >= observed)) / (1 + #)"}}
    if sample:
        uncertainty["note"] = ("impostor pairs were sampled: intervals and permutation tests assume all pairs "
                               "and are not computed")
    return EvaluationResult(
        analyses=_build(df, ok, fine, stats, by, intersect, targets, alpha, subjects, spec,
                        0 if sample else permutations),
        uncertainty=uncertainty,
        inputs={"embeddings": str(path), "engine": meta.get("engine"), "images": len(df), "enrolled": n},
        settings={"by": list(by), "intersect": intersect, "target_fmrs": targets, "skipped_targets": skipped,
                  "alpha": alpha, "score_bins": {"lo": bins.lo, "hi": bins.hi, "n": bins.n}, "tail_size": k,
                  "impostor_pairs": "all" if sample is None else
                  f"Bernoulli sample: each impostor pair kept with probability {sample.rate:g}, seed {sample.seed}, "
                  f"draws per comparison block of {ROW_BLOCK} x {COL_BLOCK} (genuine pairs: all)",
                  "scores": "cosine similarity; a pair matches when score >= threshold"},
        excluded={"failed_to_enrol": int((~ok).sum())},
    )


def evaluate_scores(
    pairs: str | Path,
    manifest: str | Path,
    by: Sequence[str],
    *,
    higher_is_similar: bool = True,
    intersect: bool = False,
    target_fmrs: Sequence[float] = DEFAULT_FMRS,
    alpha: float = 0.5,
    n_bins: int = 20_000,
    top_k: int | None = None,
    chunk_rows: int = 2_000_000,
) -> EvaluationResult:
    """Evaluate another system's comparison scores (pairs file + manifest), read in chunks.

    Distances (``higher_is_similar=False``) are negated on reading, so every threshold in the result
    is a negated distance: a pair matches when -distance >= threshold.
    """
    table = read_score_manifest(manifest)
    fine = assign_groups(table, list(by))
    index = pd.Index(table["id"])
    subj = np.unique(table["subject_id"].to_numpy(), return_inverse=True)[1].astype(np.int32)
    sign = 1.0 if higher_is_similar else -1.0
    lo, hi, n_rows = np.inf, -np.inf, 0
    for chunk in iter_pairs(pairs, chunk_rows):  # pass 1: score range and count, for the bins and tail
        s = chunk["score"].to_numpy(np.float64) * sign
        s = s[np.isfinite(s)]
        if s.size:
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        n_rows += len(chunk)
    if not np.isfinite(lo):
        raise InputError(f"{pairs}: no finite scores")
    pad = (hi - lo) * 1e-6 or 1e-6
    bins = ScoreBins(lo - pad, hi + pad, n_bins)
    targets, skipped = _supported(target_fmrs, n_rows)
    stats = PairStatistics(n_groups=fine.n_groups, bins=bins, top_k=_tail_size(n_rows, targets, top_k))
    excluded = {"unknown_id": 0, "same_image": 0, "missing_score": 0}
    for chunk in iter_pairs(pairs, chunk_rows):  # pass 2: fold
        ia, ib = index.get_indexer(chunk["id_a"]), index.get_indexer(chunk["id_b"])
        s = chunk["score"].to_numpy(np.float64) * sign
        unknown = (ia < 0) | (ib < 0)
        same = ~unknown & (ia == ib)
        missing = ~unknown & ~same & ~np.isfinite(s)
        excluded["unknown_id"] += int(unknown.sum())
        excluded["same_image"] += int(same.sum())
        excluded["missing_score"] += int(missing.sum())
        keep = ~(unknown | same | missing)
        ia, ib, s = ia[keep], ib[keep], s[keep].astype(np.float32)
        cells = cell_index(fine.index[ia], fine.index[ib], fine.n_groups)
        gen = subj[ia] == subj[ib]
        stats.add_genuine(s[gen], cells[gen], subj[ia][gen])
        stats.add_impostor_pairs(s[~gen], cells[~gen], subj[ia][~gen], subj[ib][~gen])
    if stats.n_impostor.sum() == 0:
        raise InputError(f"{pairs}: no impostor pairs among the usable rows ({excluded})")
    ok = np.ones(len(table), bool)
    return EvaluationResult(
        uncertainty={"method": None, "note": "intervals need all pairs among the subjects; a pairs file gives "
                                             "only the pairs it lists, so no intervals are computed for it"},
        analyses=_build(table, ok, fine, stats, by, intersect, targets, alpha),
        inputs={"pairs": str(pairs), "manifest": str(manifest), "pairs_read": n_rows},
        settings={"by": list(by), "intersect": intersect, "target_fmrs": targets, "skipped_targets": skipped,
                  "alpha": alpha, "score_bins": {"lo": bins.lo, "hi": bins.hi, "n": bins.n},
                  "tail_size": stats.top_k, "impostor_pairs": "as given in the pairs file",
                  "scores": "similarity (higher = more alike)" if higher_is_similar
                  else "distance, negated: a pair matches when -distance >= threshold"},
        excluded=excluded,
    )


DEFAULT_FPIRS = (1e-1, 1e-2)
DEFAULT_RANKS = (1, 5, 10, 20)


def evaluate_identification(
    path: str | Path,
    by: Sequence[str],
    *,
    intersect: bool = False,
    target_fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """1:N accuracy by the probe's group, from a gallery/probe split of an embeddings file.

    Split (:func:`faceaudit.metrics.identification.split_gallery_probes`): each subject with several
    enrolled images puts its first in the gallery and searches with the rest (mated); of subjects with
    one image, a seeded half join the gallery and the other half search it (non-mated).
    """
    from faceaudit.metrics.identification import identification_table, search, split_gallery_probes

    df, _ = read_embeddings(path)
    ok = df[df["ok"]].reset_index(drop=True)
    emb = embedding_matrix(df)
    subj = ok["subject_id"].astype(str).to_numpy()
    split = split_gallery_probes(subj, seed)
    probes = np.concatenate([split.mated, split.non_mated])
    if len(split.mated) == 0 or len(split.non_mated) == 0:
        raise InputError(f"{path}: identification needs subjects with several images (mated searches) and "
                         "subjects with one image (non-mated searches)")
    res = search(emb[probes], subj[probes], emb[split.gallery], subj[split.gallery], candidates=max(ranks))
    mated = np.arange(len(probes)) < len(split.mated)
    out = []
    for attrs in _analyses_attrs(by, intersect):
        grouping = assign_groups(ok, attrs)
        cand = {s: grouping.labels[g] for s, g in zip(subj[split.gallery], grouping.index[split.gallery], strict=True)}
        table = identification_table(res, mated, grouping.index[probes], list(grouping.labels), cand,
                                     list(target_fpirs), list(ranks))
        out.append({"attributes": list(attrs), "gallery_subjects": len(np.unique(subj[split.gallery])),
                    "split_seed": seed, **table})
    return out
