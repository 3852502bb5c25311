"""What the cross-validation of mitigations returns: pooled rates per system, differences, refusals.

``MitigationResult.to_dict()`` is JSON-ready (NaN as null) and deterministic: the same inputs and seed
give the same document byte for byte (with ``json.dumps(..., sort_keys=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceaudit.metrics.comparison import PairedDifference, call
from faceaudit.metrics.result import json_ready
from faceaudit.metrics.summary import Summary

UNMITIGATED = "unmitigated"


@dataclass(frozen=True)
class Fold:
    index: int
    held_out_subjects: int
    held_out_images: int
    calibration_subjects: int
    calibration_images: int
    impostor_pairs: int  # among the held-out images
    genuine_pairs: int
    subjects_in_both: int = 0  # checked to be 0 before anything is fitted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rates(errors: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """errors / trials, NaN where there are no trials."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = np.where(trials > 0, errors / np.where(trials > 0, trials, 1), np.nan)
    return out


@dataclass(frozen=True)
class SystemResult:
    """One system (unmitigated, or one method) at one target FMR, pooled over the held-out folds."""

    name: str
    target_fmr: float
    thresholds: tuple[float, ...]  # each fold's global threshold, on the system's own score scale
    false_matches: np.ndarray  # (G,) within-group
    impostor_pairs: np.ndarray
    false_non_matches: np.ndarray
    genuine_pairs: np.ndarray
    fmr_ci: np.ndarray  # (G, 2), NaN without the bootstrap
    fnmr_ci: np.ndarray
    summary: Summary
    summary_ci: dict[str, tuple[float, float]]
    tar: float  # 1 - FNMR over every genuine pair
    tar_ci: tuple[float, float]
    fmr: float  # over every impostor pair (what each fold's threshold aims at)

    @property
    def group_fmr(self) -> np.ndarray:
        return rates(self.false_matches, self.impostor_pairs)

    @property
    def group_fnmr(self) -> np.ndarray:
        return rates(self.false_non_matches, self.genuine_pairs)

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        fmr, fnmr = self.group_fmr, self.group_fnmr
        groups = [{"group": lab, "fmr": fmr[g], "fmr_ci": self.fmr_ci[g], "false_matches": int(self.false_matches[g]),
                   "impostor_pairs": int(self.impostor_pairs[g]), "fmr_vs_target": fmr[g] / self.target_fmr,
                   "fnmr": fnmr[g], "fnmr_ci": self.fnmr_ci[g], "false_non_matches": int(self.false_non_matches[g]),
                   "genuine_pairs": int(self.genuine_pairs[g])} for g, lab in enumerate(labels)]
        return {"system": self.name, "fold_thresholds": list(self.thresholds), "fmr": self.fmr, "tar": self.tar,
                "tar_ci": list(self.tar_ci), "groups": groups,
                "summary": {**self.summary.to_dict(), "ci": {k: list(v) for k, v in self.summary_ci.items()}}}


@dataclass(frozen=True)
class MethodResult:
    """One method at one target FMR: its pooled rates, and its difference from the unmitigated system."""

    method: str
    target_fmr: float
    needs_labels: bool
    system: SystemResult | None  # None when refused
    difference: PairedDifference | None
    tar_diff: float = float("nan")
    tar_diff_ci: tuple[float, float] = (float("nan"), float("nan"))
    refused: dict[str, Any] | None = None  # reason, message, fold
    calibrations: tuple[dict[str, Any], ...] = ()  # each fold's fitted calibration, summarised

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        diff = None
        if self.difference is not None:
            diff = self.difference.to_dict()
            for m in diff["summary"].values():  # name the systems rather than "a" / "b"
                m["fairer"] = {"a": UNMITIGATED, "b": self.method, None: None}[m["fairer"]]
            diff["tar"] = {"diff": self.tar_diff, "ci": list(self.tar_diff_ci), "call": call(self.tar_diff_ci)}
        return {"method": self.method, "target_fmr": self.target_fmr, "needs_labels_at_decision": self.needs_labels,
                "refused": self.refused, "system": None if self.system is None else self.system.to_dict(labels),
                "difference": diff, "calibrations": list(self.calibrations)}


@dataclass(frozen=True)
class MitigationResult:
    """Everything :func:`cross_validate` measured; ``to_dict()`` is JSON-ready and deterministic."""

    labels: tuple[str, ...]
    settings: dict[str, Any]
    folds: tuple[Fold, ...]
    unmitigated: dict[float, SystemResult]
    methods: tuple[MethodResult, ...]
    skipped_targets: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]
    subject_ids: np.ndarray = field(default_factory=lambda: np.empty(0))  # sorted; Method.fit sees their positions
    fold_of_subject: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # held-out fold of each

    def outcome(self, method_name: str, target_fmr: float) -> MethodResult:
        for m in self.methods:
            if m.method == method_name and m.target_fmr == target_fmr:
                return m
        raise KeyError(f"no result for {method_name} at FMR {target_fmr:g}")

    def to_dict(self) -> dict[str, Any]:
        labels = list(self.labels)
        ops = [{"target_fmr": t, UNMITIGATED: base.to_dict(labels),
                "methods": [m.to_dict(labels) for m in self.methods if m.target_fmr == t]}
               for t, base in self.unmitigated.items()]
        out: dict[str, Any] = json_ready({
            "protocol": "cross-validated by subject (faceaudit.mitigation.protocol)", "groups": labels,
            "settings": self.settings, "folds": [f.to_dict() for f in self.folds], "operating_points": ops,
            "skipped_targets": list(self.skipped_targets), "notes": list(self.notes)})
        return out
