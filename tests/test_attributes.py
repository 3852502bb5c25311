"""Attribute classifier metrics per subgroup against scikit-learn's confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from faceaudit.errors import InputError
from faceaudit.metrics.attributes import attribute_table


def test_rates_per_intersectional_subgroup_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "skin": rng.choice(["darker", "lighter"], n)})
    flip = rng.random(n) < np.where((df["sex"] == "F") & (df["skin"] == "darker"), 0.3, 0.02)
    df["pred"] = np.where(flip, np.where(df["sex"] == "F", "M", "F"), df["sex"])
    out = attribute_table(df, "sex", "pred", ["sex", "skin"], positive="F")
    [analysis] = out["analyses"]
    for row in analysis["groups"]:
        sel = (df["sex"] == row["values"]["sex"]) & (df["skin"] == row["values"]["skin"])
        y, p = df.loc[sel, "sex"] == "F", df.loc[sel, "pred"] == "F"
        tn, fp, fn, tp = confusion_matrix(y, p, labels=[False, True]).ravel()
        assert row["n"] == sel.sum()
        assert row["accuracy"] == pytest.approx((tp + tn) / sel.sum())
        assert row["tpr[F]"] == (pytest.approx(tp / (tp + fn)) if tp + fn else None)
        assert row["fpr[F]"] == (pytest.approx(fp / (fp + tn)) if fp + tn else None)
        assert row["ppv[F]"] == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
    worst = max(analysis["groups"], key=lambda r: r["error"])
    assert worst["group"] == "sex=F|skin=darker"


def test_unlabelled_rows_and_bad_input() -> None:
    df = pd.DataFrame({"sex": ["F", "", None, "M"], "pred": ["F", "M", "F", None], "g": ["a", "a", "b", "b"]})
    out = attribute_table(df, "sex", "pred", ["g"])
    assert out["unlabelled_rows"] == 2
    rows = {r["group"]: r for r in out["analyses"][0]["groups"]}
    assert rows["g=a"]["accuracy"] == 1.0 and rows["g=b"]["accuracy"] == 0.0  # missing prediction is wrong
    with pytest.raises(InputError, match="no column"):
        attribute_table(df, "sex", "nope", ["g"])
    with pytest.raises(InputError, match="positive class"):
        attribute_table(df, "sex", "pred", ["g"], positive="X")


def test_attributes_command(tmp_path: object) -> None:
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from faceaudit.cli import main

    folder = Path(str(tmp_path))
    pd.DataFrame({"sex": ["F", "F", "M", "M"], "pred": ["F", "M", "M", "M"], "race": ["A", "B", "A", "B"]}).to_csv(
        folder / "p.csv", index=False)
    res = CliRunner().invoke(main, ["attributes", str(folder / "p.csv"), "--truth", "sex", "--predicted", "pred",
                                    "--by", "race", "--positive", "F", "--out", str(folder / "a.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((folder / "a.json").read_text())
    rows = {r["group"]: r for r in doc["analyses"][0]["groups"]}
    assert rows["race=B"]["error"] == 0.5 and rows["race=A"]["tpr[F]"] == 1.0
