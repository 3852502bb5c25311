"""The dlib engine: LFW View 2 accuracy, and throughput side by side with face_recognition's default loop.

1. Accuracy: the 7,701 images of LFW pairs.txt embedded with ``dlib-resnet`` (all cores, cached),
   cosine similarity, 10-fold View 2 accuracy (target >= 99.2%; dlib's published figure is 99.38%).
2. Throughput, in one run on the same images (``--images`` of them, spread over pairs.txt), each
   pass without any cache, alternating, median of ``--repeats``:
   - face_recognition's default loop, what its README shows: ``load_image_file`` then
     ``face_encodings(image)`` (HOG with one upsample, the 5-point predictor, the ResNet), one process;
   - faceaudit's engine in one process (``workers=1``): the per-core gain;
   - faceaudit's pipeline with all cores (``workers`` = cores): what a user gets (target >= 1.5x).
   Both use the same model files (checked by SHA-256 below).
Needs ``pip install 'faceaudit[dlib]'`` and ``pip install --no-deps face_recognition==1.3.0``
(``make test`` installs both). Usage: python benchmarks/dlib_engine.py [--images N] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import faceaudit
from _common import require_lfw, view2_manifest, write_result
from faceaudit.engines import dlib_resnet
from faceaudit.engines.batch import embed_files
from faceaudit.io.lfw import read_pairs
from faceaudit.metrics.verification import kfold_accuracy


def view2(lfw: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        pairs, images, manifest = view2_manifest(lfw, Path(tmp))
        t0 = time.perf_counter()
        run = faceaudit.embed(manifest, engine=dlib_resnet.NAME, cache=True, progress=True)
        seconds = time.perf_counter() - t0
    emb = {str(Path(p).relative_to(lfw)): np.asarray(e, np.float32)
           for p, e, ok in zip(run.frame["path"], run.frame["embedding"], run.frame["ok"], strict=True) if ok}
    scores = np.array([float(emb[p.a] @ emb[p.b]) if p.a in emb and p.b in emb else -np.inf for p in pairs])
    acc = kfold_accuracy(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    print(f"LFW View 2 with {dlib_resnet.NAME}: {acc.mean:.4%} +- {acc.standard_error:.4%}; {run.n_ok} of "
          f"{len(images)} images enrolled ({run.reasons}); {run.n_cached} from the cache; {seconds:.0f} s")
    return {"images": len(images), "enrolled": run.n_ok, "failures": run.reasons, "from_cache": run.n_cached,
            "seconds": seconds, "accuracy_mean": acc.mean, "accuracy_standard_error": acc.standard_error,
            "fold_accuracy": list(acc.fold_accuracy), "pairs_with_failed_image": int(np.isinf(scores).sum()),
            "target": ">= 0.992"}


def face_recognition_loop(files: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    import face_recognition

    out = {}
    t0 = time.perf_counter()
    for f in files:
        image = face_recognition.load_image_file(f)
        enc = face_recognition.face_encodings(image)
        if enc:
            out[f] = np.asarray(enc[0])
    return time.perf_counter() - t0, out


def faceaudit_pass(files: list[str], workers: int) -> tuple[float, dict[str, np.ndarray]]:
    t0 = time.perf_counter()
    outcomes = embed_files(files, engine=dlib_resnet.NAME, workers=workers, cache=None, batch_size=4, progress=False)
    seconds = time.perf_counter() - t0
    return seconds, {f: o.results[0].embedding for f, o in zip(files, outcomes, strict=True)
                     if o.results and o.results[0].ok and o.results[0].embedding is not None}


def same_models() -> dict[str, str]:
    """The model files face_recognition loads, by SHA-256: they must be this engine's."""
    import face_recognition_models as frm

    got = {}
    for model, path in ((dlib_resnet.shape_predictor_model(), frm.pose_predictor_five_point_model_location()),
                        (dlib_resnet.resnet_model(), frm.face_recognition_model_location())):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != model.sha256:
            raise SystemExit(f"face_recognition loads {path} with SHA-256 {digest}, not the engine's {model.sha256}")
        got[model.filename] = digest
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-view2", action="store_true")
    args = ap.parse_args()
    lfw = require_lfw()
    models = same_models()
    accuracy = None if args.skip_view2 else view2(lfw)
    pairs = read_pairs(lfw / "pairs.txt")
    everything = sorted({p.a for p in pairs} | {p.b for p in pairs})
    step = max(1, len(everything) // args.images)
    files = [str(lfw / p) for p in everything[::step][:args.images]]
    times: dict[str, list[float]] = {"face_recognition": [], "faceaudit_1_process": [], "faceaudit_all_cores": []}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for r in range(args.repeats):
        for name, fn in (("face_recognition", lambda: face_recognition_loop(files)),
                         ("faceaudit_1_process", lambda: faceaudit_pass(files, 1)),
                         ("faceaudit_all_cores", lambda: faceaudit_pass(files, args.workers))):
            seconds, vec = fn()
            times[name].append(seconds)
            vectors[name] = vec
            print(f"repeat {r + 1}: {name}: {seconds:.1f} s, {1000 * seconds / len(files):.1f} ms/image, "
                  f"{len(vec)} faces")
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = vectors["face_recognition"]
    ours = vectors["faceaudit_all_cores"]
    both = [f for f in ref if f in ours]
    cos = [float(ours[f] @ (ref[f] / np.linalg.norm(ref[f]))) for f in both]
    result = {
        "models_sha256": models,
        "view2": accuracy,
        "throughput": {
            "images": len(files), "repeats": args.repeats, "workers": args.workers, "cores": os.cpu_count(),
            "median_seconds": med,
            "ms_per_image": {k: 1000 * v / len(files) for k, v in med.items()},
            "speedup_all_cores": med["face_recognition"] / med["faceaudit_all_cores"],
            "speedup_one_process": med["face_recognition"] / med["faceaudit_1_process"],
            "faces": {k: len(v) for k, v in vectors.items()},
            "cosine_to_face_recognition": {"images": len(both), "median": float(np.median(cos)) if cos else None,
                                           "min": float(np.min(cos)) if cos else None},
            "target": "speedup_all_cores >= 1.5",
        },
    }
    t = result["throughput"]
    print(f"face_recognition {t['ms_per_image']['face_recognition']:.1f} ms/image; faceaudit one process "
          f"{t['ms_per_image']['faceaudit_1_process']:.1f} ms/image ({t['speedup_one_process']:.2f}x); all "
          f"{args.workers} cores {t['ms_per_image']['faceaudit_all_cores']:.1f} ms/image "
          f"({t['speedup_all_cores']:.2f}x); cosine to face_recognition's vectors: median "
          f"{t['cosine_to_face_recognition']['median']}")
    write_result("dlib_engine", result)


if __name__ == "__main__":
    main()
