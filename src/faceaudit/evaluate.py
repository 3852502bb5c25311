"""``faceaudit evaluate``: from embeddings or another system's scores to per-group error rates.

The comparison runs once, on the finest grouping (the intersection of every attribute asked for);
each analysis (one attribute, or an intersection of several) is derived from it exactly by
:func:`faceaudit.scoring.stats.coarsen`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from faceaudit.errors import InputError
from faceaudit.io.embeddings import embedding_matrix, read_embeddings
from faceaudit.io.scores import iter_pairs, read_score_manifest
from faceaudit.metrics.bootstrap import BootstrapSpec
from faceaudit.metrics.rates import DEFAULT_FMRS, MIN_EXPECTED_FALSE_MATCHES
from faceaudit.metrics.result import Analysis, EvaluationResult, GroupCounts, analyse
from faceaudit.scoring.compare import (
    COL_BLOCK,
    ROW_BLOCK,
    ImpostorSample,
    ScoreMap,
    plan_comparison,
    run_plan,
    score_pairs,
)
from faceaudit.scoring.groups import Grouping, assign_groups, cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins, coarsen

MAX_TAIL = 5_000_000


def groupings_of(by: Sequence[str], intersect: bool = False) -> list[list[str]]:
    """The analyses asked for: each attribute alone, or (``intersect``) one intersection of all."""
    if not by:
        raise InputError("name at least one attribute to group by (--by sex)")
    return [list(by)] if intersect else [[a] for a in by]


def _finest(groupings: Sequence[Sequence[str]]) -> list[str]:
    """Every attribute of every analysis, in first-seen order: the grouping the comparison runs on."""
    if not groupings or not all(groupings):
        raise InputError("name at least one attribute to group by (--by sex)")
    return list(dict.fromkeys(a for g in groupings for a in g))


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


def images_per_subject(subjects: np.ndarray, ok: np.ndarray, grouping: Grouping) -> np.ndarray:
    """(S, G): enrolled images of each subject (coded 0..S-1) in each group: what the bootstrap resamples."""
    out = np.zeros((int(subjects.max()) + 1, grouping.n_groups))
    np.add.at(out, (subjects[ok], grouping.index[ok]), 1)
    return out


def coarse_stats(stats: PairStatistics, fine: Grouping, grouping: Grouping) -> PairStatistics:
    """``stats`` (on the finest grouping) folded onto ``grouping`` (exact, :func:`coarsen`)."""
    if grouping.labels == fine.labels:
        return stats
    return coarsen(stats, _coarse_map(fine, grouping), grouping.n_groups)


def _build(table: pd.DataFrame, ok: np.ndarray, fine: Grouping, stats: PairStatistics,
           groupings: Sequence[Sequence[str]], targets: Sequence[float], alpha: float,
           subjects: np.ndarray | None = None, bootstrap: BootstrapSpec | None = None,
           permutations: int = 0, own_enrolment: np.ndarray | None = None) -> list[Analysis]:
    out = []
    for attrs in groupings:
        grouping = assign_groups(table, attrs)
        s = coarse_stats(stats, fine, grouping)
        per_subject = None if subjects is None else images_per_subject(subjects, ok, grouping)
        enrolled = ok if own_enrolment is None else own_enrolment
        out.append(analyse(s, grouping, _group_counts(table, grouping, enrolled, s), list(targets), alpha,
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


def _settings(by: Sequence[str], intersect: bool, groupings: Sequence[Sequence[str]], targets: Sequence[float],
              skipped: list[dict[str, Any]], alpha: float, bins: ScoreBins, tail: int, impostor_pairs: str,
              scores: str, pairs_mode: str, score_kind: str = "similarity") -> dict[str, Any]:
    """``pairs_mode``: all | sample | listed | score_file; ``score_kind``: similarity | negated_distance."""
    return {"by": list(by) or _finest(groupings), "intersect": intersect, "groupings": [list(g) for g in groupings],
            "target_fmrs": list(targets), "skipped_targets": skipped, "alpha": alpha,
            "score_bins": {"lo": bins.lo, "hi": bins.hi, "n": bins.n}, "tail_size": tail,
            "impostor_pairs": impostor_pairs, "scores": scores, "pairs_mode": pairs_mode, "score_kind": score_kind}


def _enrolled_or_fail(df: pd.DataFrame, ok: np.ndarray) -> None:
    """Stop early, saying why, when fewer than two images enrolled."""
    if ok.sum() >= 2:
        return
    reasons = df.loc[~ok, "reason"].value_counts()
    why = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "none given"
    raise InputError(f"only {int(ok.sum())} of {len(df)} images enrolled (failures: {why}); nothing to compare. "
                     "Check the image paths and files")


COSINE = "cosine similarity; a pair matches when score >= threshold"


def _scores_name(score_map: ScoreMap | None) -> str:
    return COSINE if score_map is None else f"{score_map.name}; a pair matches when score >= threshold"


def _bins_for(bins: ScoreBins | None, score_map: ScoreMap | None) -> ScoreBins:
    """The bins asked for, else 20,000 over the scores' range: [-1, 1] for cosines, the calibration's own else."""
    if bins is not None:
        return bins
    return ScoreBins(-1.0, 1.0, 20_000) if score_map is None else ScoreBins(score_map.lo, score_map.hi, 20_000)


def evaluate_embeddings(
    path: str | Path,
    by: Sequence[str] = (),
    *,
    groupings: Sequence[Sequence[str]] | None = None,
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
    cluster: Any = None,
    system_name: str | None = None,
) -> EvaluationResult:
    """Evaluate an embeddings file (from ``faceaudit embed``, or any system's vectors): all pairs of enrolled images.

    The analyses are ``groupings`` (a list of attribute lists: ``[["sex"], ["sex", "race"]]``) or,
    without it, :func:`groupings_of` ``(by, intersect)``. ``system_name`` names the system that made
    vectors faceaudit did not (:mod:`faceaudit.io.foreign_embeddings`). See :func:`evaluate_frame`.
    """
    df, meta = read_embeddings(path, system_name=system_name)
    return evaluate_frame(df, meta, by, groupings=groupings, intersect=intersect, target_fmrs=target_fmrs,
                          alpha=alpha, bins=bins, top_k=top_k, bootstrap=bootstrap, permutations=permutations,
                          seed=seed, impostor_sample=impostor_sample, progress=progress,
                          inputs={"embeddings": str(path)}, cluster=cluster)


def evaluate_frame(
    df: pd.DataFrame,
    metadata: dict[str, Any],
    by: Sequence[str] = (),
    *,
    groupings: Sequence[Sequence[str]] | None = None,
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
    inputs: dict[str, Any] | None = None,
    cluster: Any = None,
    score_map: ScoreMap | None = None,
) -> EvaluationResult:
    """Evaluate the rows of an embeddings file (as read by ``read_embeddings``): all pairs of enrolled images.

    ``bootstrap`` replicates of a subject-level bootstrap give the intervals, and ``permutations``
    shuffles of group labels between subjects test FPD and FND (0: none). ``impostor_sample``: keep
    each impostor pair with this probability (declared in the result; genuine pairs are all kept).
    Intervals and permutation tests assume all pairs, so they are not computed for a sample.
    ``cluster``: a ``distributed.Client`` to run the comparison on (:mod:`faceaudit.distributed`).
    ``score_map``: calibrated scores instead of raw cosines (codes of the enrolled rows, in order).
    """
    groupings = [list(g) for g in groupings] if groupings is not None else groupings_of(by, intersect)
    sc = score_all_pairs(df, groupings, target_fmrs, bins, top_k, impostor_sample, seed, progress, cluster, score_map)
    return all_pairs_result(sc, df, metadata, by, intersect, groupings, alpha, bootstrap, permutations, seed, inputs)


@dataclass(frozen=True)
class ScoredPairs:
    """All pairs of one embeddings frame folded into statistics on the finest grouping."""

    fine: Grouping
    ok: np.ndarray
    subjects: np.ndarray
    stats: PairStatistics
    targets: list[float]
    skipped: list[dict[str, Any]]
    bins: ScoreBins
    tail: int
    sample: ImpostorSample | None
    score_map: ScoreMap | None = None


def score_all_pairs(df: pd.DataFrame, groupings: Sequence[Sequence[str]], target_fmrs: Sequence[float],
                     bins: ScoreBins | None, top_k: int | None, impostor_sample: float | None, seed: int,
                     progress: bool, cluster: Any, score_map: ScoreMap | None = None) -> ScoredPairs:
    fine = assign_groups(df, _finest(groupings))
    ok = df["ok"].to_numpy(bool)
    _enrolled_or_fail(df, ok)
    subjects = np.unique(df["subject_id"].astype(str).to_numpy(), return_inverse=True)[1].astype(np.int32)
    emb = embedding_matrix(df)
    n = len(emb)
    sample = None if impostor_sample is None or impostor_sample >= 1.0 else ImpostorSample(impostor_sample, seed)
    n_pairs = n * (n - 1) // 2
    n_expected = int(n_pairs * (sample.rate if sample else 1.0))
    targets, skipped = _supported(target_fmrs, n_expected)
    bins = _bins_for(bins, score_map)
    # a Bernoulli sample may hold more pairs than expected: six standard deviations of margin
    margin = n_expected + (6 * math.sqrt(n_pairs * sample.rate * (1 - sample.rate)) if sample else 0)
    k = _tail_size(int(margin), targets, top_k)
    plan = plan_comparison(emb, subjects[ok], fine.index[ok], fine.n_groups, bins=bins, top_k=k, sample=sample,
                           score_map=score_map)
    if cluster is not None:
        from faceaudit.distributed import run_plan_on_cluster

        stats = run_plan_on_cluster(cluster, plan, progress=progress)
    else:
        stats = run_plan(plan, progress=progress)
    if stats.n_impostor.sum() == 0:
        raise InputError("no impostor pairs: all enrolled images belong to one subject")
    return ScoredPairs(fine, ok, subjects, stats, targets, skipped, bins, k, sample, score_map)


def all_pairs_result(sc: ScoredPairs, df: pd.DataFrame, metadata: dict[str, Any], by: Sequence[str], intersect: bool,
                      groupings: Sequence[Sequence[str]], alpha: float, bootstrap: int, permutations: int,
                      seed: int, inputs: dict[str, Any] | None,
                      own_enrolment: np.ndarray | None = None) -> EvaluationResult:
    """The result of scored pairs. ``own_enrolment``: which images this engine itself enrolled, when the pairs
    were restricted further (a comparison uses the images every engine enrolled); failure to enrol counts those."""
    sample = sc.sample
    spec = BootstrapSpec(replicates=0 if sample else bootstrap, seed=seed)
    uncertainty = {**_uncertainty(spec), "permutation_test": {
        "permutations": 0 if sample else permutations, "seed": seed,
        "method": "group labels shuffled between subjects; p = (1 + #(statistic >= observed)) / (1 + #)"}}
    if sample:
        uncertainty["note"] = ("impostor pairs were sampled: intervals and permutation tests assume all pairs "
                               "and are not computed")
    return EvaluationResult(
        analyses=_build(df, sc.ok, sc.fine, sc.stats, groupings, sc.targets, alpha, sc.subjects, spec,
                        0 if sample else permutations, own_enrolment),
        uncertainty=uncertainty,
        inputs={**(inputs or {}), "engine": metadata.get("engine"), "images": len(df), "enrolled": int(sc.ok.sum())},
        settings=_settings(by, intersect, groupings, sc.targets, sc.skipped, alpha, sc.bins, sc.tail,
                           "all" if sample is None else
                           f"Bernoulli sample: each impostor pair kept with probability {sample.rate:g}, seed "
                           f"{sample.seed}, draws per comparison block of {ROW_BLOCK} x {COL_BLOCK} (genuine pairs: "
                           "all)", _scores_name(sc.score_map), "all" if sample is None else "sample"),
        excluded={"failed_to_enrol": int((~sc.ok).sum())},
    )


_NO_INTERVALS = {"method": None, "note": "intervals need all pairs among the subjects; a list of pairs gives only "
                                         "the pairs it lists, so no intervals are computed for it"}


def _fold_pairs(stats: PairStatistics, fine: Grouping, subjects: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                scores: np.ndarray) -> None:
    """Fold listed pairs (row indices ``ia``, ``ib`` with their scores) into ``stats``: genuine when same subject."""
    cells = cell_index(fine.index[ia], fine.index[ib], fine.n_groups)
    s = np.asarray(scores, np.float32)
    gen = subjects[ia] == subjects[ib]
    stats.add_genuine(s[gen], cells[gen], subjects[ia][gen])
    stats.add_impostor_pairs(s[~gen], cells[~gen], subjects[ia][~gen], subjects[ib][~gen])


def evaluate_scores(
    pairs: str | Path,
    manifest: str | Path,
    by: Sequence[str] = (),
    *,
    groupings: Sequence[Sequence[str]] | None = None,
    higher_is_similar: bool = True,
    intersect: bool = False,
    target_fmrs: Sequence[float] = DEFAULT_FMRS,
    alpha: float = 0.5,
    n_bins: int = 20_000,
    top_k: int | None = None,
    chunk_rows: int = 1_000_000,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate another system's comparison scores (pairs file + manifest), read in chunks.

    Distances (``higher_is_similar=False``) are negated on reading, so every threshold in the result
    is a negated distance: a pair matches when -distance >= threshold.
    """
    from tqdm import tqdm

    groupings = [list(g) for g in groupings] if groupings is not None else groupings_of(by, intersect)
    table = read_score_manifest(manifest)
    fine = assign_groups(table, _finest(groupings))
    subj = np.unique(table["subject_id"].to_numpy(), return_inverse=True)[1].astype(np.int32)
    sign = 1.0 if higher_is_similar else -1.0
    lo, hi, n_rows = np.inf, -np.inf, 0
    for chunk in tqdm(iter_pairs(pairs, None, chunk_rows), desc="scores: range", unit="chunk", disable=not progress):
        s = chunk.score * sign  # pass 1: score range and count, for the bins and tail
        s = s[np.isfinite(s)]
        if s.size:
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        n_rows += len(chunk.score)
    if not np.isfinite(lo):
        raise InputError(f"{pairs}: no finite scores")
    pad = (hi - lo) * 1e-6 or 1e-6
    bins = ScoreBins(lo - pad, hi + pad, n_bins)
    # the tail is sized for every row (an upper bound); targets are checked on the usable impostor pairs below
    stats = PairStatistics(n_groups=fine.n_groups, bins=bins, top_k=_tail_size(n_rows, target_fmrs, top_k))
    excluded = {"unknown_id": 0, "same_image": 0, "missing_score": 0}
    for chunk in tqdm(iter_pairs(pairs, table["id"], chunk_rows), desc="scores: fold", unit="chunk",
                      total=math.ceil(n_rows / chunk_rows), disable=not progress):
        ia, ib = chunk.index_a, chunk.index_b
        s = chunk.score * sign
        unknown = (ia < 0) | (ib < 0)
        same = ~unknown & (ia == ib)
        missing = ~unknown & ~same & ~np.isfinite(s)
        excluded["unknown_id"] += int(unknown.sum())
        excluded["same_image"] += int(same.sum())
        excluded["missing_score"] += int(missing.sum())
        keep = ~(unknown | same | missing)
        _fold_pairs(stats, fine, subj, ia[keep], ib[keep], s[keep])
    if stats.n_impostor.sum() == 0:
        raise InputError(f"{pairs}: no impostor pairs among the usable rows ({excluded})")
    targets, skipped = _supported(target_fmrs, int(stats.n_impostor.sum()))
    ok = np.ones(len(table), bool)
    return EvaluationResult(
        uncertainty=dict(_NO_INTERVALS),
        analyses=_build(table, ok, fine, stats, groupings, targets, alpha),
        inputs={"pairs": str(pairs), "manifest": str(manifest), "pairs_read": n_rows},
        settings=_settings(by, intersect, groupings, targets, skipped, alpha, bins, stats.top_k,
                           "as given in the pairs file",
                           "similarity (higher = more alike)" if higher_is_similar
                           else "distance, negated: a pair matches when -distance >= threshold", "score_file",
                           "similarity" if higher_is_similar else "negated_distance"),
        excluded=excluded,
    )


def evaluate_listed_pairs(
    df: pd.DataFrame,
    metadata: dict[str, Any],
    index_a: np.ndarray,
    index_b: np.ndarray,
    groupings: Sequence[Sequence[str]],
    *,
    target_fmrs: Sequence[float] = DEFAULT_FMRS,
    alpha: float = 0.5,
    excluded: dict[str, int] | None = None,
    inputs: dict[str, Any] | None = None,
    score_map: ScoreMap | None = None,
) -> EvaluationResult:
    """Evaluate only the listed pairs (rows ``index_a[i]``, ``index_b[i]`` of an embeddings frame).

    For datasets that give the pairs to compare (RFW, BFW). A pair with an image that failed to enrol
    is left out and counted (``pair_failed_to_enrol``); genuine means same ``subject_id``. ``score_map``:
    calibrated scores instead of raw cosines (codes of the enrolled rows, in order).
    """
    groupings = [list(g) for g in groupings]
    fine = assign_groups(df, _finest(groupings))
    ok = df["ok"].to_numpy(bool)
    subjects = np.unique(df["subject_id"].astype(str).to_numpy(), return_inverse=True)[1].astype(np.int32)
    _enrolled_or_fail(df, ok)
    ia, ib = np.asarray(index_a, np.int64), np.asarray(index_b, np.int64)
    usable = ok[ia] & ok[ib]
    ia, ib = ia[usable], ib[usable]
    if len(ia) == 0:
        raise InputError(f"none of the {len(index_a):,} listed pairs has two enrolled images; nothing to compare")
    row_of = np.full(len(df), -1, np.int64)
    row_of[ok] = np.arange(int(ok.sum()))
    emb = embedding_matrix(df)
    scores = score_pairs(emb, row_of[ia], row_of[ib])
    if score_map is not None:
        scores = score_map.pairs(scores, row_of[ia], row_of[ib])
    bins = _bins_for(None, score_map)
    targets, skipped = _supported(target_fmrs, int((subjects[ia] != subjects[ib]).sum()))
    stats = PairStatistics(n_groups=fine.n_groups, bins=bins, top_k=_tail_size(len(ia), targets, None))
    _fold_pairs(stats, fine, subjects, ia, ib, scores)
    return EvaluationResult(
        uncertainty=dict(_NO_INTERVALS),
        analyses=_build(df, ok, fine, stats, groupings, targets, alpha),
        inputs={**(inputs or {}), "engine": metadata.get("engine"), "images": len(df), "enrolled": int(ok.sum()),
                "pairs_listed": len(index_a)},
        settings=_settings(_finest(groupings), False, groupings, targets, skipped, alpha, bins,
                           stats.top_k, "as listed by the dataset", _scores_name(score_map), "listed"),
        excluded={**(excluded or {}), "failed_to_enrol": int((~ok).sum()),
                  "pair_failed_to_enrol": int((~usable).sum())},
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
    for attrs in groupings_of(by, intersect):
        grouping = assign_groups(ok, attrs)
        cand = {s: grouping.labels[g] for s, g in zip(subj[split.gallery], grouping.index[split.gallery], strict=True)}
        table = identification_table(res, mated, grouping.index[probes], list(grouping.labels), cand,
                                     list(target_fpirs), list(ranks))
        out.append({"attributes": list(attrs), "gallery_subjects": len(np.unique(subj[split.gallery])),
                    "split_seed": seed, **table})
    return out
