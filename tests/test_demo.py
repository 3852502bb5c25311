"""`faceaudit demo` end to end on the bundled faces, and its per-group counts checked by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from faceaudit.cli import main
from faceaudit.demo import group_rates


def test_demo_runs_and_writes_its_files(tmp_path: Path, tiny: pd.DataFrame) -> None:
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "204 images, 204 embedded" in out.output
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) == 204 * 203 // 2 and pairs["genuine"].sum() == 102
    groups = pd.read_csv(tmp_path / "by_group.csv")
    sexes = groups[groups["attribute"] == "sex"]
    assert set(sexes["group"]) == set(tiny["sex"].replace("", "unknown"))
    n_f = (tiny["sex"] == "F").sum()
    row = sexes[sexes["group"] == "F"].iloc[0]
    assert row["genuine_pairs"] == n_f // 2
    assert row["impostor_pairs"] == n_f * (n_f - 1) // 2 - n_f // 2


def test_group_rates_by_hand() -> None:
    pairs = pd.DataFrame({
        "genuine": [True, True, False, False, False],
        "match": [True, False, True, False, False],
        "g_a": ["x", "x", "x", "x", "y"],
        "g_b": ["x", "x", "x", "y", "y"],
    })
    r = group_rates(pairs, "g").set_index("group")
    assert r.loc["x", "fnmr"] == 0.5 and r.loc["x", "fmr"] == 1.0 and r.loc["x", "impostor_pairs"] == 1
    assert r.loc["y", "genuine_pairs"] == 0 and r.loc["y", "fmr"] == 0.0
