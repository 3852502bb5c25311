"""LFW View 2 with ``--engine onnx:PATH``: a float32 copy of SFace given by path against the default engine.

Writes the bundled SFace file, dequantized to float32 by the default engine's own rewrite, to a work
folder with the sidecar ``{"mean": 0, "std": 1}`` (SFace normalises inside its graph), embeds the
7,701 images of pairs.txt with ``onnx:PATH`` and with the default engine (its vectors come from the
embedding cache when benchmarks/lfw_view2.py has filled it; the onnx engine's identity holds no path,
so its vectors are cached too), and reports both View 2 accuracies, their difference in points
(target: within 0.1), whether the detections agree, and the largest absolute difference between the
two engines' vectors over the images both enrolled.
Usage: python benchmarks/onnx_engine_lfw.py [--work DIR] [--cache PATH] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import faceaudit
from _common import require_lfw, view2_manifest, write_result
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ
from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime
from faceaudit.metrics.verification import kfold_accuracy
from lfw_view2 import pair_scores

TARGET_POINTS = 0.1


def write_model(folder: Path) -> Path:
    """The float32 SFace copy and its sidecar; returns the model's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sface_f32.onnx"
    path.write_bytes(prepare_for_onnxruntime(SFACE_2021DEC_INT8BQ.read_verified()))
    Path(f"{path}.json").write_text(json.dumps({
        "mean": 0, "std": 1, "name": "onnx-sface-f32", "licence": SFACE_2021DEC_INT8BQ.licence,
        "source": f"{SFACE_2021DEC_INT8BQ.source}; dequantized to float32 by faceaudit's prepare_for_onnxruntime",
    }))
    return path


def run_engine(manifest: Path, lfw: Path, engine: str | None, cache: str | bool, workers: int | None,
               pairs: list[Any]) -> dict[str, Any]:
    run = faceaudit.embed(manifest, engine=engine, cache=cache, workers=workers, progress=True)
    frame = run.frame.assign(path=[str(Path(p).relative_to(lfw)) for p in run.frame["path"]])
    scores = pair_scores(frame, pairs)
    acc = kfold_accuracy(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    name = run.metadata["engine"]["name"]
    print(f"{name}: {run.n_images} images, {run.n_ok} enrolled ({run.n_cached} from the cache), failures "
          f"{run.reasons}; LFW View 2 accuracy {acc.mean:.4%} +- {acc.standard_error:.4%}")
    return {"run": run, "frame": frame, "accuracy": acc,
            "summary": {"engine": run.metadata["engine"], "images": run.n_images, "enrolled": run.n_ok,
                        "cached": run.n_cached, "failures": run.reasons,
                        "pairs_with_failed_image": int(np.isinf(scores).sum()),
                        "accuracy_mean": acc.mean, "accuracy_standard_error": acc.standard_error,
                        "fold_accuracy": list(acc.fold_accuracy)}}


def compare_vectors(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """Largest vector difference over images both enrolled, and how many detections differ."""
    ra = {p: (e, box) for p, e, box, ok in zip(a["path"], a["embedding"], a["box"], a["ok"], strict=True) if ok}
    rb = {p: (e, box) for p, e, box, ok in zip(b["path"], b["embedding"], b["box"], b["ok"], strict=True) if ok}
    both = sorted(set(ra) & set(rb))
    if not both:
        return {"images_both_enrolled": 0, "max_abs_embedding_diff": None, "min_cosine": None,
                "boxes_differ": 0, "enrolled_by_one_only": len(set(ra) ^ set(rb))}
    ea = np.stack([np.asarray(ra[p][0], np.float32) for p in both])
    eb = np.stack([np.asarray(rb[p][0], np.float32) for p in both])
    boxes_differ = sum(not np.array_equal(np.asarray(ra[p][1]), np.asarray(rb[p][1])) for p in both)
    return {"images_both_enrolled": len(both), "max_abs_embedding_diff": float(np.abs(ea - eb).max()),
            "min_cosine": float(np.min(np.sum(ea * eb, axis=1))), "boxes_differ": int(boxes_differ),
            "enrolled_by_one_only": len(set(ra) ^ set(rb))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for the float32 model (default: a temporary folder)")
    ap.add_argument("--cache", default=None, help="embedding cache file (default: the user cache)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    args = ap.parse_args()
    lfw = require_lfw()
    cache: str | bool = args.cache or True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        model = write_model(work)
        pairs, _, manifest = view2_manifest(lfw, Path(tmp))
        base = run_engine(manifest, lfw, None, cache, args.workers, pairs)
        onnx = run_engine(manifest, lfw, f"onnx:{model}", cache, args.workers, pairs)
    diff_points = 100.0 * (onnx["accuracy"].mean - base["accuracy"].mean)
    vectors = compare_vectors(base["frame"], onnx["frame"])
    within = abs(diff_points) <= TARGET_POINTS
    print(f"accuracy difference (onnx - default): {diff_points:+.3f} points (target: within {TARGET_POINTS}): "
          f"{'met' if within else 'NOT met'}")
    print(f"over {vectors['images_both_enrolled']} images both enrolled: max |embedding difference| "
          f"{vectors['max_abs_embedding_diff']}, min cosine {vectors['min_cosine']}, boxes differ on "
          f"{vectors['boxes_differ']}; enrolled by one engine only: {vectors['enrolled_by_one_only']}")
    write_result("onnx_engine_lfw", {
        "model": {"file": model.name, "sidecar": {"mean": 0, "std": 1},
                  "made_from": SFACE_2021DEC_INT8BQ.filename},
        "default": base["summary"],
        "onnx": onnx["summary"],
        "accuracy_difference_points": diff_points,
        "target": f"|difference| <= {TARGET_POINTS} points",
        "target_met": within,
        **vectors,
    })


if __name__ == "__main__":
    main()
