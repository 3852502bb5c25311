"""What would reduce the differential: post-hoc mitigations, measured on people they were not fitted on.

- :mod:`faceaudit.mitigation.methods`: group thresholds (a what-if: needs each person's group at
  decision time), Fair Score Normalization (Terhorst et al. 2020) and FairCal (Salvador et al. 2022),
  each a ``fit_*`` function returning a calibration with ``codes`` / ``transform``;
- :mod:`faceaudit.mitigation.protocol`: :func:`cross_validate`, k-fold by subject, pooled over the
  held-out folds, with paired subject-level bootstrap differences from the unmitigated system;
- :mod:`faceaudit.mitigation.kmeans`, :mod:`faceaudit.mitigation.beta`: the seeded k-means and the
  beta calibration they use (NumPy only: scikit-learn and SciPy are not runtime dependencies).

This package sits above :mod:`faceaudit.metrics` and :mod:`faceaudit.scoring` and imports nothing
from the report, audit or service layers.
"""

from faceaudit.mitigation.base import (
    Calibration,
    MitigationRefused,
    apply_all_pairs,
    apply_pairs,
    threshold_at_fmr,
)
from faceaudit.mitigation.methods import (
    METHOD_NAMES,
    FairCal,
    FairCalMethod,
    FairScoreNormalization,
    FsnMethod,
    GroupThresholds,
    GroupThresholdsMethod,
    Method,
    fit_faircal,
    fit_fsn,
    fit_group_thresholds,
    method,
)
from faceaudit.mitigation.protocol import cross_validate, cross_validate_analyses
from faceaudit.mitigation.result import MethodResult, MitigationResult, SystemResult

__all__ = [
    "METHOD_NAMES",
    "Calibration",
    "FairCal",
    "FairCalMethod",
    "FairScoreNormalization",
    "FsnMethod",
    "GroupThresholds",
    "GroupThresholdsMethod",
    "Method",
    "MethodResult",
    "MitigationRefused",
    "MitigationResult",
    "SystemResult",
    "apply_all_pairs",
    "apply_pairs",
    "cross_validate",
    "cross_validate_analyses",
    "fit_faircal",
    "fit_fsn",
    "fit_group_thresholds",
    "method",
    "threshold_at_fmr",
]
