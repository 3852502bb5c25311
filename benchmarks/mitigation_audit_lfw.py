"""What mitigation costs in the LFW audit, and whether a deployed calibration's audit reproduces the cross-validation.

1. Cost. The LFW audit (examples/lfw.toml: all pairs, by sex and race, 1,000 bootstrap replicates, 1,000
   permutations) run warm (embedding cache filled by an untimed first run), without and with
   ``--mitigate group_thresholds --mitigate fsn --mitigate faircal``, alternated, RUNS times each, every run
   the `faceaudit audit` command in its own process; medians and their ratio. Target: mitigation adds at
   most 2x the warm audit time.
2. Deployment. FairCal and FSN (at FMR 1e-3) fitted with `faceaudit calibrate --method`, then the audit of the
   calibrated engine (`--calibration`): its FPD, FND and TAR per analysis and FMR against the cross-validated
   figures of the same method in the mitigated audit, pooled over the held-out folds, and their 95%
   intervals. Two ways: held out (fitted on the people of folds 1-4 of that cross-validation, audited on the
   people of fold 0: the cross-validation's own fold 0, as a user would deploy and audit it) and in-sample
   (fitted on all of LFW and audited on the same people, which the cross-validation never does). Reported
   whatever they show.
Usage: python benchmarks/mitigation_audit_lfw.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from _common import ROOT, require_lfw, write_result
from faceaudit.io.embeddings import read_embeddings, write_embeddings
from faceaudit.mitigation import cross_validate_analyses
from faceaudit.scoring.groups import assign_groups

CONFIG = ROOT / "examples" / "lfw.toml"
RUNS = 3
METHODS = ("group_thresholds", "fsn", "faircal")


def faceaudit(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "faceaudit.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def audit(out: Path, *extra: str) -> float:
    return faceaudit("audit", "--config", str(CONFIG), "--out", str(out), "--quiet", *extra)


def _within(value: float, ci: list[float]) -> bool | None:
    if value is None or ci is None or any(c is None or c != c for c in ci):
        return None
    return bool(ci[0] <= value <= ci[1])


def compare(calibrated: dict[str, Any], mitigated: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The calibrated audit's FPD, FND, TAR against the cross-validated method's, per analysis and FMR."""
    rows = []
    cv_by_attrs = {tuple(a["attributes"]): a for a in mitigated["mitigation"]["analyses"]}
    for analysis in calibrated["analyses"]:
        cv = cv_by_attrs.get(tuple(analysis["attributes"]))
        if cv is None or cv["result"] is None:
            continue
        for op in analysis["operating_points"]:
            cv_op = [o for o in cv["result"]["operating_points"] if o["target_fmr"] == op["target_fmr"]]
            if not cv_op:
                continue
            (m,) = [x for x in cv_op[0]["methods"] if x["method"] == method]
            if m["system"] is None:
                rows.append({"attributes": analysis["attributes"], "target_fmr": op["target_fmr"],
                             "cross_validated": "refused", "reason": m["refused"]})
                continue
            sysm = m["system"]
            audit_fig = {"fpd": op["summary"]["fpd"], "fnd": op["summary"]["fnd"], "tar": 1 - op["fnmr"]}
            cv_fig = {"fpd": sysm["summary"]["fpd"], "fnd": sysm["summary"]["fnd"], "tar": sysm["tar"]}
            cis = {"fpd": sysm["summary"]["ci"]["fpd"], "fnd": sysm["summary"]["ci"]["fnd"], "tar": sysm["tar_ci"]}
            rows.append({"attributes": analysis["attributes"], "target_fmr": op["target_fmr"],
                         "calibrated_audit": audit_fig, "cross_validated": cv_fig, "cross_validated_ci": cis,
                         "within_interval": {k: _within(audit_fig[k], cis[k]) for k in audit_fig}})
    return rows


def _show(name: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        head = f"{name} by {' x '.join(row['attributes'])} at FMR {row['target_fmr']:g}: "
        if "calibrated_audit" not in row:
            print(head + "cross-validation refused")
            continue
        a, c, w = row["calibrated_audit"], row["cross_validated"], row["within_interval"]
        ci = row["cross_validated_ci"]
        print(head + "; ".join(f"{k} {a[k]:.4g} vs {c[k]:.4g} [{ci[k][0]:.4g}, {ci[k][1]:.4g}] "
                               f"{'in' if w[k] else 'OUT'}" for k in a))


def _split_fold0(emb: Path, base: Path, mitigated: dict[str, Any]) -> dict[str, Any]:
    """The embeddings of the people of fold 0 of the mitigated audit's cross-validation, and of everyone else.

    The folds are recomputed with the audit's own call (same images, groupings, folds and seed), and checked
    against the fold sizes its results.json states."""
    df, meta = read_embeddings(emb)
    ok = df[df["ok"]].reset_index(drop=True)
    vectors = np.stack(ok["embedding"].to_list())
    settings = mitigated["mitigation"]
    res = cross_validate_analyses(vectors, ok["subject_id"].astype(str).to_numpy(),
                                  [assign_groups(ok, ["sex"]), assign_groups(ok, ["race"])], ["fsn"], [1e-3],
                                  folds=settings["folds"], seed=settings["seed"], replicates=0)[0]
    fold0 = set(res.subject_ids[res.fold_of_subject == 0])
    stated = mitigated["mitigation"]["analyses"][0]["result"]["folds"][0]
    held = ok["subject_id"].astype(str).isin(fold0).to_numpy()
    assert int(held.sum()) == stated["held_out_images"], (int(held.sum()), stated)
    paths = {"held_out": base / "fold0.parquet", "calibration": base / "folds1-4.parquet"}
    write_embeddings(pd.DataFrame(ok[held]).reset_index(drop=True), paths["held_out"], meta)
    write_embeddings(pd.DataFrame(ok[~held]).reset_index(drop=True), paths["calibration"], meta)
    return {**paths, "people": {"held_out": len(fold0), "images": int(held.sum())}}


def main() -> None:
    lfw = require_lfw()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        first = audit(base / "first")  # fills the embedding cache when it is empty
        plain, mitigated = [], []
        for r in range(RUNS):
            plain.append(audit(base / f"plain{r}"))
            mitigated.append(audit(base / f"mitigated{r}", *[x for m in METHODS for x in ("--mitigate", m)]))
            print(f"run {r}: warm audit {plain[-1]:.1f} s, with mitigation {mitigated[-1]:.1f} s")
        mit_doc = json.loads((base / "mitigated0" / "results.json").read_text())
        same = all((base / f"mitigated{r}" / "results.json").read_bytes()
                   == (base / "mitigated0" / "results.json").read_bytes() for r in range(RUNS))
        emb = base / "lfw.parquet"
        faceaudit("embed", str(lfw / "manifest.csv"), "--out", str(emb), "--quiet")
        split = _split_fold0(emb, base, mit_doc)
        deployed: dict[str, Any] = {}
        for how, fit_on, audited in (("held_out", split["calibration"], split["held_out"]), ("in_sample", emb, emb)):
            for method, fmrs in (("faircal", ("1e-3", "1e-4")), ("fsn", ("1e-3",))):
                cal = base / f"{how}-{method}.json"
                fit_s = faceaudit("calibrate", "--method", method, "--embeddings", str(fit_on), "--out", str(cal),
                                  *[x for f in fmrs for x in ("--target-fmr", f)])
                out = base / f"calibrated-{how}-{method}"
                audit_s = faceaudit("audit", "--embeddings", str(audited), "--by", "sex", "--by", "race",
                                    "--fmr", "1e-3", "--fmr", "1e-4", "--fmr", "1e-5", "--calibration", str(cal),
                                    "--out", str(out), "--quiet")
                rows = compare(json.loads((out / "results.json").read_text()), mit_doc, method)
                if method == "fsn":  # FSN's offsets belong to the FMR it was fitted at
                    rows = [r for r in rows if r["target_fmr"] == 1e-3]
                deployed[f"{how}/{method}"] = {"calibrate_seconds": round(fit_s, 1),
                                               "audit_seconds": round(audit_s, 1), "rows": rows}
                _show(f"{how} {method}", rows)
        deployed["held_out_people"] = split["people"]
    p, m = statistics.median(plain), statistics.median(mitigated)
    result = {"runs": RUNS, "first_audit_seconds": round(first, 1), "warm_audit_seconds": [round(x, 1) for x in plain],
              "mitigated_audit_seconds": [round(x, 1) for x in mitigated], "median_warm": round(p, 1),
              "median_mitigated": round(m, 1), "mitigated_over_warm": round(m / p, 2),
              "added_over_warm": round((m - p) / p, 2), "target_added_over_warm": 2.0,
              "mitigated_results_identical_across_runs": same, "methods": list(METHODS), "deployed": deployed}
    print(f"warm audit median {p:.1f} s, with mitigation {m:.1f} s: {m / p:.2f}x the warm audit, adds "
          f"{(m - p) / p:.2f}x (target: adds at most 2x); mitigated results.json identical across runs: {same}")
    write_result("mitigation_audit_lfw", result)


if __name__ == "__main__":
    main()
