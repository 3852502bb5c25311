"""Summary measures of demographic differentials over groups, at one threshold.

Definitions (x_g is a per-group rate at the global threshold; n groups; alpha weighs FMR against FNMR):

- FPD = max_g FMR_g / min_g FMR_g and FND = max_g FNMR_g / min_g FNMR_g (false positive / negative
  differential; NIST FRVT Part 8, "Summarizing demographic differentials", Grother 2022, and ISO/IEC
  19795-10).
- IR = FPD^alpha * FND^(1 - alpha) (inequity rate, Grother 2022).
- FDR = 1 - (alpha * max_ij |FMR_i - FMR_j| + (1 - alpha) * max_ij |FNMR_i - FNMR_j|) (fairness
  discrepancy rate, de Freitas Pereira & Marcel, "Fairness in biometrics", IEEE TBIOM 2022).
- GARBE = alpha * G(FMR) + (1 - alpha) * G(FNMR), with the Gini coefficient
  G(x) = n / (n - 1) * sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), 0 when all x are equal
  (Howard, Laird, Rubin, Sirotin, Tipton, Vemury, "Evaluating proposed fairness models for face
  recognition algorithms", 2022).
- SER = max_g e_g / min_g e_g, skewed error ratio (Robinson et al., "Face recognition: too bias, or
  not too bias?", CVPRW 2020), with e_g the group's balanced error (FMR_g + FNMR_g) / 2; and the
  standard deviation over groups of the balanced accuracy 1 - e_g.

Which groups enter which measure. Each side is measured on the groups that have its pairs, so data
with one image per person (impostor pairs only, as UTKFace or FairFace) still gets its false match
differential, and data whose groups lack impostor pairs still gets its false non-match differential:

- FMR side, over the groups with impostor pairs (``groups_fmr``): FPD, the FMR gap
  max_ij |FMR_i - FMR_j| (``fmr_gap``) and the Gini coefficient of the FMRs (``gini_fmr``);
- FNMR side, over the groups with genuine pairs (``groups_fnmr``): FND, ``fnmr_gap``, ``gini_fnmr``;
- IR, FDR and GARBE are combined from the two sides' parts above (IR = FPD^alpha * FND^(1-alpha),
  FDR = 1 - (alpha * fmr_gap + (1 - alpha) * fnmr_gap), GARBE = alpha * gini_fmr + (1 - alpha) *
  gini_fnmr), so they are NaN when either side has no group; with the same groups on both sides
  this is exactly the definitions above;
- SER and the accuracy STD need both rates of the same group (its balanced error), so they are over
  the groups with both kinds of pairs (``groups``); the others are named in ``left_out``.

A side with no group at all is named in ``unmeasured`` (``"fmr"``, ``"fnmr"``), and its measures are NaN.

Zero rates. A ratio with a zero denominator is not reported as inf: in the ratios (FPD, FND, IR, SER)
a group with no observed errors in n pairs gets the rule-of-3 upper bound 3 / n (the one-sided 95%
upper limit of a zero count, Jovanovic & Levy 1997) in place of 0, and the result names those groups.
Gaps and Gini coefficients (FDR, GARBE, accuracy STD) need no such rule and use the observed rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def rule_of_three(errors: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rates errors / trials, with 3 / trials in place of a zero rate; also which entries were replaced."""
    errors = np.asarray(errors, np.float64)
    trials = np.asarray(trials, np.float64)
    rates = np.divide(errors, trials, out=np.full(errors.shape, np.nan), where=trials > 0)
    zero = (errors == 0) & (trials > 0)
    rates[zero] = 3.0 / trials[zero]
    return rates, zero


def gini(x: np.ndarray) -> float:
    """G(x) = n / (n - 1) * sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)); 0 when all equal or n < 2."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2 or np.all(x == x[0]):
        return 0.0
    mean = x.mean()
    if mean == 0:
        return 0.0
    return float(n / (n - 1) * np.abs(x[:, None] - x[None, :]).sum() / (2 * n * n * mean))


def max_ratio(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(x.max() / x.min()) if len(x) else float("nan")


def max_gap(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(x.max() - x.min()) if len(x) else float("nan")


MEASURES = ("fpd", "fnd", "ir", "fdr", "garbe", "ser", "accuracy_std")
PART_MEASURES = ("fmr_gap", "fnmr_gap", "gini_fmr", "gini_fnmr")  # one side's parts of FDR and GARBE


@dataclass(frozen=True)
class Summary:
    alpha: float
    fpd: float
    fnd: float
    ir: float
    fdr: float
    garbe: float
    ser: float
    accuracy_std: float
    groups: tuple[str, ...]  # groups with both kinds of pairs (SER, accuracy STD)
    groups_fmr: tuple[str, ...] = ()  # groups with impostor pairs (FPD, fmr_gap, gini_fmr)
    groups_fnmr: tuple[str, ...] = ()  # groups with genuine pairs (FND, fnmr_gap, gini_fnmr)
    fmr_gap: float = float("nan")  # max_ij |FMR_i - FMR_j|
    fnmr_gap: float = float("nan")
    gini_fmr: float = float("nan")
    gini_fnmr: float = float("nan")
    unmeasured: tuple[str, ...] = ()  # "fmr" / "fnmr": sides no group has pairs for
    zero_rule_fmr: tuple[str, ...] = ()  # groups whose zero FMR was replaced by 3 / n
    zero_rule_fnmr: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # groups without both genuine and impostor pairs (not in SER, accuracy STD)
    zero_rule: str = "rule_of_3"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class _Side:
    """One side (FMR or FNMR) over the groups that have its pairs."""

    groups: tuple[str, ...]
    rates: np.ndarray  # observed
    rates3: np.ndarray  # zero rates replaced by the rule of three
    zero_rule: tuple[str, ...]

    @classmethod
    def of(cls, labels: list[str], errors: np.ndarray, trials: np.ndarray) -> _Side:
        errors, trials = np.asarray(errors, np.float64), np.asarray(trials, np.float64)
        has = trials > 0
        names = tuple(g for g, h in zip(labels, has, strict=True) if h)
        rates3, zero = rule_of_three(errors[has], trials[has])
        return cls(names, errors[has] / trials[has], rates3, tuple(g for g, z in zip(names, zero, strict=True) if z))

    def ratio(self) -> float:
        return max_ratio(self.rates3) if self.groups else float("nan")

    def gap(self) -> float:
        return max_gap(self.rates) if self.groups else float("nan")

    def gini(self) -> float:
        return gini(self.rates) if self.groups else float("nan")


def summarise(labels: list[str], false_matches: np.ndarray, impostor_pairs: np.ndarray,
              false_non_matches: np.ndarray, genuine_pairs: np.ndarray, alpha: float = 0.5) -> Summary:
    """All summary measures over groups, each side from the groups that have its pairs (module docstring).

    Counts in, so zero rates can be handled by the rule of 3.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    imp, gen = np.asarray(impostor_pairs, np.float64), np.asarray(genuine_pairs, np.float64)
    fm, fnm = np.asarray(false_matches, np.float64), np.asarray(false_non_matches, np.float64)
    fmr_side, fnmr_side = _Side.of(labels, fm, imp), _Side.of(labels, fnm, gen)
    both = (imp > 0) & (gen > 0)
    names = tuple(g for g, u in zip(labels, both, strict=True) if u)
    left_out = tuple(g for g, u in zip(labels, both, strict=True) if not u)
    unmeasured = tuple(side for side, s in (("fmr", fmr_side), ("fnmr", fnmr_side)) if not s.groups)
    fpd, fnd = fmr_side.ratio(), fnmr_side.ratio()
    fmr_gap, fnmr_gap = fmr_side.gap(), fnmr_side.gap()
    gini_fmr, gini_fnmr = fmr_side.gini(), fnmr_side.gini()
    if names:
        fmr3, _ = rule_of_three(fm[both], imp[both])
        fnmr3, _ = rule_of_three(fnm[both], gen[both])
        ser = max_ratio((fmr3 + fnmr3) / 2)
        accuracy_std = float(np.std(1 - (fm[both] / imp[both] + fnm[both] / gen[both]) / 2))
    else:
        ser = accuracy_std = float("nan")
    notes = []
    if unmeasured:
        notes.append(" and ".join({"fmr": "no group has impostor pairs", "fnmr": "no group has genuine pairs"}[u]
                                  for u in unmeasured)
                     + ": the measures of that side (and IR, FDR, GARBE, SER, accuracy STD) are not measured")
    elif not names:
        notes.append("no group has both genuine and impostor pairs: SER and accuracy STD are not measured")
    if len(fmr_side.groups) == 1 or len(fnmr_side.groups) == 1:
        notes.append("a side measured on a single group: its differentials are trivially 1 (ratios) or 0 (gaps)")
    if unmeasured:  # explicit: nan ** 0 is 1 in Python, so alpha = 0 or 1 would hide a missing side
        ir = fdr = garbe = float("nan")
    else:
        ir = float(fpd**alpha * fnd ** (1 - alpha))
        fdr = float(1 - (alpha * fmr_gap + (1 - alpha) * fnmr_gap))
        garbe = float(alpha * gini_fmr + (1 - alpha) * gini_fnmr)
    return Summary(
        alpha=alpha,
        fpd=fpd,
        fnd=fnd,
        ir=ir,
        fdr=fdr,
        garbe=garbe,
        ser=ser,
        accuracy_std=accuracy_std,
        groups=names,
        groups_fmr=fmr_side.groups,
        groups_fnmr=fnmr_side.groups,
        fmr_gap=fmr_gap,
        fnmr_gap=fnmr_gap,
        gini_fmr=gini_fmr,
        gini_fnmr=gini_fnmr,
        unmeasured=unmeasured,
        zero_rule_fmr=fmr_side.zero_rule,
        zero_rule_fnmr=fnmr_side.zero_rule,
        left_out=left_out,
        notes=tuple(notes),
    )


def _side_rows(errors: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the side's ratio (rule of 3), gap and Gini over the groups with trials, and whether it has any."""
    has = trials > 0
    any_group: np.ndarray = np.asarray(has.any(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.where(has, errors / np.where(has, trials, 1.0), np.nan)
        rates3 = np.where(has & (errors == 0), 3.0 / np.where(has, trials, 1.0), rates)
        ratio = np.fmax.reduce(rates3, axis=1) / np.fmin.reduce(rates3, axis=1)
        gap = np.fmax.reduce(rates, axis=1) - np.fmin.reduce(rates, axis=1)
        n = has.sum(axis=1).astype(np.float64)
        mean = np.nansum(rates, axis=1) / n
        diffs = np.nansum(np.abs(rates[:, :, None] - rates[:, None, :]), axis=(1, 2))
        g = n / (n - 1) * diffs / (2 * n * n * mean)
    g = np.where((n < 2) | (diffs == 0) | (mean == 0), 0.0, g)
    nan = np.full(len(errors), np.nan)
    return (np.where(any_group, ratio, nan), np.where(any_group, gap, nan), np.where(any_group, g, nan), any_group)


def summary_rows(false_matches: np.ndarray, impostor_pairs: np.ndarray, false_non_matches: np.ndarray,
                 genuine_pairs: np.ndarray, alpha: float = 0.5, measures: tuple[str, ...] = MEASURES) -> np.ndarray:
    """:func:`summarise`'s ``measures`` for many sets of counts at once: rows of (R, G) counts in, (R, M) out.

    The same definitions (module docstring), computed with NumPy over the rows; for the thousand bootstrap
    replicates of a cross-validated mitigation, where a Python call per replicate costs more than the counts.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    fm, imp = np.asarray(false_matches, np.float64), np.asarray(impostor_pairs, np.float64)
    fnm, gen = np.asarray(false_non_matches, np.float64), np.asarray(genuine_pairs, np.float64)
    fpd, fmr_gap, gini_fmr, has_fmr = _side_rows(fm, imp)
    fnd, fnmr_gap, gini_fnmr, has_fnmr = _side_rows(fnm, gen)
    both = (imp > 0) & (gen > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fmr3, _ = rule_of_three(np.where(both, fm, 0.0), np.where(both, imp, 0.0))
        fnmr3, _ = rule_of_three(np.where(both, fnm, 0.0), np.where(both, gen, 0.0))
        err3 = (fmr3 + fnmr3) / 2  # NaN outside ``both``
        ser = np.fmax.reduce(err3, axis=1) / np.fmin.reduce(err3, axis=1)
        acc = np.where(both, 1 - (fm / np.where(both, imp, 1.0) + fnm / np.where(both, gen, 1.0)) / 2, np.nan)
        k = both.sum(axis=1)
        centred = np.where(both, acc - (np.nansum(acc, axis=1) / k)[:, None], 0.0)
        accuracy_std = np.sqrt((centred**2).sum(axis=1) / k)
    some = both.any(axis=1)
    measured = has_fmr & has_fnmr
    nan = np.full(len(fm), np.nan)
    with np.errstate(invalid="ignore"):
        values = {"fpd": fpd, "fnd": fnd, "fmr_gap": fmr_gap, "fnmr_gap": fnmr_gap, "gini_fmr": gini_fmr,
                  "gini_fnmr": gini_fnmr, "ser": np.where(some, ser, nan),
                  "accuracy_std": np.where(some, accuracy_std, nan),
                  "ir": np.where(measured, fpd**alpha * fnd ** (1 - alpha), nan),
                  "fdr": np.where(measured, 1 - (alpha * fmr_gap + (1 - alpha) * fnmr_gap), nan),
                  "garbe": np.where(measured, alpha * gini_fmr + (1 - alpha) * gini_fnmr, nan)}
    return np.stack([values[m] for m in measures], axis=1)
