"""Shared helpers for the benchmarks: where the data is, and how results are printed and written."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEAUDIT_DATA", ROOT.parent / "shared" / "data"))
LFW = DATA / "lfw"
RESULTS = ROOT / "benchmarks" / "results"


def require_lfw() -> Path:
    if not (LFW / "pairs.txt").is_file():
        sys.exit(f"LFW not found at {LFW}; set FACEAUDIT_DATA to the folder holding lfw/")
    return LFW


def view2_manifest(lfw: Path, folder: Path) -> tuple[list[Any], list[str], Path]:
    """The pairs of LFW's pairs.txt, their images (relative paths), and a manifest of them written in ``folder``."""
    import pandas as pd

    from faceaudit.io.lfw import read_pairs

    pairs = read_pairs(lfw / "pairs.txt")
    images = sorted({p.a for p in pairs} | {p.b for p in pairs})
    manifest = Path(folder) / "manifest.csv"
    pd.DataFrame({"path": [str(lfw / p) for p in images], "subject_id": [p.split("/")[1] for p in images]}).to_csv(
        manifest, index=False)
    return pairs, images, manifest


def machine() -> dict[str, Any]:
    from faceaudit.report.provenance import machine as describe

    return describe()


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {path}")
    return path
