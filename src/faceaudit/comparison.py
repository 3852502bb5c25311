"""Several engines on the same images: each one's audit, and the differences with paired intervals.

The same people, the same protocol: every engine is evaluated on the images that *every* engine
enrolled (an image one engine fails on is left out for all, so no engine is judged on pairs another
never saw), all pairs among them, each engine at its own global threshold for the same target FMR.
Failure to enrol is reported per engine and group from each engine's own attempt. The first engine
is the reference; each other engine is compared with it by
:func:`faceaudit.metrics.comparison.paired_difference`, with the bootstrap resampling the same
subjects for both (the draws depend only on the images and the seed, which the engines share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from faceaudit.errors import InputError
from faceaudit.evaluate import all_pairs_result, coarse_stats, images_per_subject, score_all_pairs
from faceaudit.metrics.bootstrap import BootstrapSpec, stratified_draws
from faceaudit.metrics.comparison import PairedDifference, paired_difference
from faceaudit.metrics.rates import DEFAULT_FMRS
from faceaudit.metrics.result import EvaluationResult, json_ready
from faceaudit.scoring.groups import assign_groups


@dataclass(frozen=True)
class EngineRun:
    """One engine's embeddings of the dataset: ``frame`` as :func:`faceaudit.api.embed` returns it."""

    name: str
    frame: pd.DataFrame
    metadata: dict[str, Any]


@dataclass
class ComparisonResult:
    engines: list[str]
    results: list[EvaluationResult]  # per engine, on the common images
    paired: list[list[list[PairedDifference | None]]]  # [analysis][operating point][engine 1..]; None: see why
    why_no_intervals: str | None
    enrolment: list[list[dict[str, Any]]]  # [analysis][group]: images and failures per engine
    common: dict[str, Any]
    settings: dict[str, Any]

    @property
    def reference(self) -> str:
        return self.engines[0]

    def to_dict(self) -> dict[str, Any]:
        analyses = []
        for j, res in enumerate(self.results[0].analyses):
            docs = [r.analyses[j].to_dict()["operating_points"] for r in self.results]
            ops = []
            for k, op in enumerate(res.operating_points):
                per_engine = {name: {key: doc[k][key] for key in ("threshold", "threshold_exact", "fmr", "fnmr",
                                                                  "groups", "summary")}
                              for name, doc in zip(self.engines, docs, strict=True)}
                diffs = []
                for e, pd_ in enumerate(self.paired[j][k], start=1):
                    why = self.why_no_intervals or "a threshold lies within a histogram bin (not exact)"
                    diffs.append({"engine": self.engines[e], "reference": self.reference,
                                  **(pd_.to_dict() if pd_ is not None else {"groups": None, "summary": None,
                                                                            "note": why})})
                ops.append({"target_fmr": op.target_fmr, "engines": per_engine, "differences": diffs})
            analyses.append({"attributes": list(res.grouping.attributes), "groups": list(res.grouping.labels),
                             "enrolment": self.enrolment[j], "operating_points": ops})
        out: dict[str, Any] = json_ready({"engines": self.engines, "reference": self.reference, "common": self.common,
                                      "settings": self.settings, "analyses": analyses})
        return out


def _same_rows(runs: Sequence[EngineRun], attributes: Sequence[str]) -> None:
    """Same images, people and labels in the same order: the pairing of subjects depends on it."""
    first = runs[0].frame
    for r in runs[1:]:
        same = len(r.frame) == len(first) and all(  # equals: missing labels (NaN) in the same places are equal
            c in r.frame.columns and r.frame[c].reset_index(drop=True).equals(first[c].reset_index(drop=True))
            for c in ("path", "subject_id", *attributes))
        if not same:
            raise InputError(f"engines {runs[0].name} and {r.name} were given different images, people or labels; a "
                             "comparison needs the same images, one face each, with the same labels, in the same order")


def _enrolment(runs: Sequence[EngineRun], attrs: Sequence[str]) -> list[dict[str, Any]]:
    grouping = assign_groups(runs[0].frame, attrs)
    out = []
    for i, lab in enumerate(grouping.labels):
        rows = grouping.index == i
        out.append({"group": lab, "images": int(rows.sum()),
                    "failed_to_enrol": {r.name: int((rows & ~r.frame["ok"].to_numpy(bool)).sum()) for r in runs}})
    return out


def compare_frames(
    runs: Sequence[EngineRun],
    groupings: Sequence[Sequence[str]],
    *,
    target_fmrs: Sequence[float] = DEFAULT_FMRS,
    alpha: float = 0.5,
    bootstrap: int = 1000,
    permutations: int = 1000,
    seed: int = 0,
    progress: bool = False,
    inputs: dict[str, Any] | None = None,
    cluster: Any = None,
) -> ComparisonResult:
    """Evaluate each engine's embeddings of the same images and compare each with the first (module docstring)."""
    if len(runs) < 2:
        raise InputError("a comparison needs at least two engines")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"each engine may appear once in a comparison, got {names}")
    groupings = [list(g) for g in groupings]
    _same_rows(runs, list(dict.fromkeys(a for g in groupings for a in g)))
    ok_each = np.stack([r.frame["ok"].to_numpy(bool) for r in runs])
    common: np.ndarray = np.asarray(ok_each.all(axis=0), dtype=bool)
    scored, results = [], []
    for r, ok in zip(runs, ok_each, strict=True):
        df = r.frame.copy()
        df["ok"] = common
        sc = score_all_pairs(df, groupings, target_fmrs, None, None, None, seed, progress, cluster)
        res = all_pairs_result(sc, df, r.metadata, (), False, groupings, alpha, bootstrap, permutations, seed, inputs,
                               own_enrolment=ok)
        res.excluded = {"failed_to_enrol": int((~ok).sum()), "enrolled_but_failed_by_another_engine":
                        int((ok & ~common).sum())}
        scored.append(sc)
        results.append(res)
    spec = BootstrapSpec(replicates=bootstrap, seed=seed)
    fine, subjects = scored[0].fine, scored[0].subjects
    paired: list[list[list[PairedDifference | None]]] = []
    for j, attrs in enumerate(groupings):
        grouping = assign_groups(runs[0].frame, attrs)
        n_sg = images_per_subject(subjects, common, grouping)
        draws = stratified_draws(n_sg, spec) if bootstrap > 0 else None
        stats = [coarse_stats(sc.stats, fine, grouping) for sc in scored]
        per_op = []
        for k in range(len(results[0].analyses[j].operating_points)):
            thresholds = [res.analyses[j].operating_points[k].threshold for res in results]
            row: list[PairedDifference | None] = []
            for e in range(1, len(runs)):
                row.append(None if draws is None else paired_difference(
                    stats[0], thresholds[0], stats[e], thresholds[e], n_sg, list(grouping.labels), draws, alpha,
                    spec.confidence))
            per_op.append(row)
        paired.append(per_op)
    n_subjects = int(runs[0].frame.loc[common, "subject_id"].astype(str).nunique())
    return ComparisonResult(
        engines=names, results=results, paired=paired,
        why_no_intervals=None if bootstrap > 0 else "the bootstrap was switched off (bootstrap = 0)",
        enrolment=[_enrolment(runs, g) for g in groupings],
        common={"images": len(common), "enrolled_by_all": int(common.sum()), "subjects": n_subjects,
                "failed_to_enrol": {r.name: int((~ok).sum()) for r, ok in zip(runs, ok_each, strict=True)},
                "rule": "every engine is evaluated on the images all engines enrolled"},
        settings={"target_fmrs": list(results[0].settings["target_fmrs"]), "alpha": alpha,
                  "bootstrap": {"replicates": bootstrap, "seed": seed, "confidence": spec.confidence,
                                "method": "paired subject-level bootstrap: the same resampled subjects for every "
                                          "engine in each replicate, stratified by group; percentile interval of "
                                          "the difference (engine - reference)",
                                "call": "a difference is called only when its interval excludes zero"}},
    )
