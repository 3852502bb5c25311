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

Zero rates. A ratio with a zero denominator is not reported as inf: in the ratios (FPD, FND, IR, SER)
a group with no observed errors in n pairs gets the rule-of-3 upper bound 3 / n (the one-sided 95%
upper limit of a zero count, Jovanovic & Levy 1997) in place of 0, and the result names those groups.
Gaps and Gini coefficients (FDR, GARBE, accuracy STD) need no such rule and use the observed rates.
Groups with no pairs at all
are left out of the summary (and named).
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
    groups: tuple[str, ...]  # groups included
    zero_rule_fmr: tuple[str, ...] = ()  # groups whose zero FMR was replaced by 3 / n
    zero_rule_fnmr: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # groups without genuine or impostor pairs
    zero_rule: str = "rule_of_3"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def summarise(labels: list[str], false_matches: np.ndarray, impostor_pairs: np.ndarray,
              false_non_matches: np.ndarray, genuine_pairs: np.ndarray, alpha: float = 0.5) -> Summary:
    """All summary measures over groups; counts in, so zero rates can be handled by the rule of 3."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    imp = np.asarray(impostor_pairs)
    gen = np.asarray(genuine_pairs)
    usable = (imp > 0) & (gen > 0)
    names = [g for g, u in zip(labels, usable, strict=True) if u]
    left_out = tuple(g for g, u in zip(labels, usable, strict=True) if not u)
    fm, fnm = np.asarray(false_matches)[usable], np.asarray(false_non_matches)[usable]
    fmr3, zf = rule_of_three(fm, imp[usable])
    fnmr3, zn = rule_of_three(fnm, gen[usable])
    fmr, fnmr = fm / imp[usable], fnm / gen[usable]
    if len(names) == 0:
        nan = float("nan")
        return Summary(alpha, nan, nan, nan, nan, nan, nan, nan, (), left_out=left_out,
                       notes=("no group has both genuine and impostor pairs",))
    fpd, fnd = max_ratio(fmr3), max_ratio(fnmr3)
    err = (fmr + fnmr) / 2
    notes = ("a single group: every differential is trivially 1 (ratios) or 0 (gaps)",) if len(names) == 1 else ()
    return Summary(
        alpha=alpha,
        fpd=fpd,
        fnd=fnd,
        ir=float(fpd**alpha * fnd ** (1 - alpha)),
        fdr=float(1 - (alpha * max_gap(fmr) + (1 - alpha) * max_gap(fnmr))),
        garbe=float(alpha * gini(fmr) + (1 - alpha) * gini(fnmr)),
        ser=max_ratio((fmr3 + fnmr3) / 2),
        accuracy_std=float(np.std(1 - err)),
        groups=tuple(names),
        zero_rule_fmr=tuple(g for g, z in zip(names, zf, strict=True) if z),
        zero_rule_fnmr=tuple(g for g, z in zip(names, zn, strict=True) if z),
        left_out=left_out,
        notes=notes,
    )
