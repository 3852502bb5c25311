"""Beta calibration of similarity scores: the per-cluster map of FairCal.

Kull, Silva Filho & Flach, "Beta calibration: a well-founded and easily implemented improvement on
logistic calibration for binary classifiers", AISTATS 2017. A score s in (0, 1) maps to

    mu(s; a, b, c) = 1 / (1 + 1 / (e^c * s^a / (1 - s)^b)),   i.e.   logit mu = a ln s - b ln(1 - s) + c,

fitted as a logistic regression of the label (genuine = 1) on the two features ln s and -ln(1 - s)
with intercept c. Kull et al. require a, b >= 0 so the map is monotone non-decreasing: when the fit
gives a negative coefficient, that feature is dropped and the fit repeated (as their ``betacal``
package does); a coefficient still negative is set to 0. Cosine scores are mapped into (0, 1) by
s' = (s + 1) / 2, clipped to [EPS, 1 - EPS] so the logarithms stay finite.

The logistic fit is Newton's method (iteratively reweighted least squares; McCullagh & Nelder,
"Generalized linear models", 1989, ch. 4) with a backtracking line search, written here because SciPy
and scikit-learn are not runtime dependencies. A small ridge ``ridge / 2 * (a^2 + b^2)`` (not on the
intercept) keeps the coefficients finite when a cluster's genuine and impostor scores do not overlap,
where the unpenalised maximum does not exist; with hundreds of weighted pairs its pull is negligible.
It is the objective of scikit-learn's ``LogisticRegression(C=1 / ridge)`` with sample weights, which
the tests check against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-6  # clip of s' = (s + 1) / 2: ln(1e-6) = -13.8 bounds the features


def to_unit(scores: np.ndarray) -> np.ndarray:
    """s' = (s + 1) / 2 clipped to [EPS, 1 - EPS]: a cosine in [-1, 1] as a beta-calibration input."""
    out: np.ndarray = np.clip((np.asarray(scores, np.float64) + 1.0) / 2.0, EPS, 1.0 - EPS)
    return out


def features(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ln s', -ln(1 - s')) of cosine scores."""
    u = to_unit(scores)
    return np.log(u), -np.log1p(-u)


def expit(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow (tanh form)."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))
    return out


@dataclass(frozen=True)
class BetaMap:
    """logit mu = a ln s' - b ln(1 - s') + c, with s' = (s + 1) / 2 (module docstring)."""

    a: float
    b: float
    c: float

    def logit(self, scores: np.ndarray) -> np.ndarray:
        x1, x2 = features(scores)
        out: np.ndarray = self.a * x1 + self.b * x2 + self.c
        return out

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return expit(self.logit(scores))


def logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, max_iter: int = 100,
                 tol: float = 1e-12) -> np.ndarray:
    """Minimise sum_i w_i (log(1 + e^(x_i.beta)) - y_i x_i.beta) + ridge / 2 * |beta[:-1]|^2 by Newton steps.

    ``x`` is (n, p) with the intercept column last (not penalised). Stops when the Newton decrement
    g.H^-1.g / 2 (the predicted decrease of the objective) falls below ``tol`` times the total weight.
    Returns beta (p,).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    p = x.shape[1]
    pen = np.full(p, float(ridge))
    pen[-1] = 0.0
    beta = np.zeros(p)
    z = np.zeros(len(y))

    def loss(b: np.ndarray, zb: np.ndarray) -> float:
        return float((w * (np.logaddexp(0.0, zb) - y * zb)).sum() + 0.5 * (pen * b * b).sum())

    f = loss(beta, z)
    scale = float(w.sum())
    for _ in range(max_iter):
        mu = expit(z)
        grad = x.T @ (w * (mu - y)) + pen * beta
        hess = (x * (w * mu * (1.0 - mu))[:, None]).T @ x + np.diag(pen)
        step = np.linalg.solve(hess + 1e-12 * np.eye(p), grad)
        decrement = float(grad @ step)
        if decrement / 2 < tol * scale:
            break
        t = 1.0
        while True:  # backtracking (Armijo): Newton's full step can overshoot far from the optimum
            cand = beta - t * step
            zc = x @ cand
            fc = loss(cand, zc)
            if fc <= f - 1e-4 * t * decrement or t < 1e-12:
                break
            t /= 2.0
        beta, z, f = cand, zc, fc
    return beta


def fit_beta(scores: np.ndarray, genuine: np.ndarray, weights: np.ndarray | None = None,
             ridge: float = 1e-3) -> BetaMap:
    """Fit the beta calibration map of cosine ``scores`` with labels ``genuine`` (module docstring)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(genuine, bool).astype(np.float64)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64)
    x1, x2 = features(s)
    one = np.ones(len(s))
    a, b, c = logistic_fit(np.stack([x1, x2, one], axis=1), y, w, ridge)
    if a < 0:  # Kull et al.: drop the feature whose coefficient came out negative and refit
        b, c = logistic_fit(np.stack([x2, one], axis=1), y, w, ridge)
        a = 0.0
    elif b < 0:
        a, c = logistic_fit(np.stack([x1, one], axis=1), y, w, ridge)
        b = 0.0
    if a < 0 or b < 0:  # the one feature left also decreases with the label: no monotone signal
        a, b = max(a, 0.0), max(b, 0.0)
        (c,) = logistic_fit(one[:, None], y, w, ridge)
    return BetaMap(float(a), float(b), float(c))
