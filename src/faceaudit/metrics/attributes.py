"""Accuracy of an attribute classifier (e.g. predicted sex) per intersectional subgroup, Gender Shades style.

Buolamwini & Gebru, "Gender Shades: Intersectional Accuracy Disparities in Commercial Gender
Classification", FAT* 2018: accuracy and error per subgroup, and for a positive class the true
positive rate TPR = TP / (TP + FN), false positive rate FPR = FP / (FP + TN) and positive predictive
value PPV = TP / (TP + FP), each per subgroup. Undefined rates (empty denominators) are null. Rows
without a truth label are counted and left out; a missing prediction counts as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from faceaudit.errors import InputError
from faceaudit.scoring.groups import assign_groups


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def attribute_table(df: pd.DataFrame, truth: str, predicted: str, by: Sequence[str], positive: str | None = None,
                    intersect: bool = True) -> dict[str, Any]:
    """Per subgroup of ``by`` (their intersection, or each alone): n, accuracy, error, and TPR/FPR/PPV."""
    for col in (truth, predicted):
        if col not in df.columns:
            raise InputError(f"no column {col!r}; columns: {', '.join(map(str, df.columns))}")
    labelled = df[df[truth].notna() & (df[truth].astype(str).str.strip() != "")].reset_index(drop=True)
    y = labelled[truth].astype(str).to_numpy()
    p = labelled[predicted].astype("string").fillna("").to_numpy(dtype=str)
    classes = sorted(set(y))
    if positive is not None and positive not in classes:
        raise InputError(f"positive class {positive!r} is not among the truth labels {classes}")
    analyses = []
    for attrs in ([list(by)] if intersect else [[a] for a in by]):
        grouping = assign_groups(labelled, attrs)
        rows = []
        for gi, lab in enumerate(grouping.labels):
            sel = grouping.index == gi
            yt, yp = y[sel], p[sel]
            row: dict[str, Any] = {"group": lab, "values": grouping.values(gi), "n": int(sel.sum()),
                                   "accuracy": float(np.mean(yt == yp)), "error": float(np.mean(yt != yp))}
            for cls in [positive] if positive else classes:
                tp = int(((yt == cls) & (yp == cls)).sum())
                fn = int(((yt == cls) & (yp != cls)).sum())
                fp = int(((yt != cls) & (yp == cls)).sum())
                tn = int(((yt != cls) & (yp != cls)).sum())
                row[f"tpr[{cls}]"] = _rate(tp, tp + fn)
                row[f"fpr[{cls}]"] = _rate(fp, fp + tn)
                row[f"ppv[{cls}]"] = _rate(tp, tp + fp)
            rows.append(row)
        errors = [r["error"] for r in rows]
        analyses.append({"attributes": attrs, "groups": rows, "max_error": max(errors), "min_error": min(errors),
                         "error_gap": max(errors) - min(errors)})
    return {"truth": truth, "predicted": predicted, "positive": positive, "classes": classes,
            "rows": len(df), "unlabelled_rows": int(len(df) - len(labelled)), "analyses": analyses}
