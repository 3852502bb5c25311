"""The comparison report of the default engine and dlib on LFW, by sex and race: one command, timed.

Runs ``faceaudit audit --config examples/lfw-compare.toml`` as its own process (all 13,233 images, all
pairs, both engines, 1,000 paired bootstrap replicates), then reads the report's results.json and
prints, per analysis at the largest target FMR, each engine's View 2 accuracy, thresholds and
per-group rates, and the differences whose paired interval excludes zero.
Usage: python benchmarks/compare_lfw.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, require_lfw, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "build" / "lfw-compare"))
    args = ap.parse_args()
    require_lfw()
    cmd = [sys.executable, "-m", "faceaudit.cli", "audit", "--config", str(ROOT / "examples" / "lfw-compare.toml"),
           "--out", args.out, "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    doc = json.loads((Path(args.out) / "results.json").read_text())
    summary = {"seconds": seconds, "command": " ".join(cmd[2:]), "report": str(Path(args.out) / "report.html"),
               "engines": {e["name"]: {"view2": e["protocol"]["accuracy"] if e.get("protocol") else None,
                                       "failed_to_enrol": e["failed_to_enrol"]} for e in doc["engines"]},
               "enrolled_by_all": doc["common"]["enrolled_by_all"], "analyses": []}
    for a in doc["analyses"]:
        op = a["operating_points"][0]
        d = op["differences"][0]
        summary["analyses"].append({
            "attributes": a["attributes"], "target_fmr": op["target_fmr"],
            "thresholds": {n: e["threshold"] for n, e in op["engines"].items()},
            "rates": {n: {g["group"]: {"fmr": g["fmr"], "fnmr": g["fnmr"]} for g in e["groups"]}
                      for n, e in op["engines"].items()},
            "called_differences": [{"group": g["group"], "rate": kind, "diff": g[f"{kind}_diff"],
                                    "ci": g[f"{kind}_diff_ci"], "call": g[f"{kind}_call"]}
                                   for g in d["groups"] for kind in ("fmr", "fnmr")
                                   if g[f"{kind}_call"] in ("lower", "higher")],
            "fairer_by": {m: s["fairer"] and (d["engine"] if s["fairer"] == "b" else d["reference"])
                          for m, s in d["summary"].items()},
        })
    print(json.dumps(summary, indent=1))
    write_result("compare_lfw", summary)


if __name__ == "__main__":
    main()
