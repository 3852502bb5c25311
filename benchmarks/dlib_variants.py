"""How far dlib's models get on LFW View 2 without jitter: detection, flips and distance variants.

dlib documents its 99.38% on LFW as measured with ``jitter_image`` (100 randomly zoomed, rotated and
flipped copies of each face, averaged): 100 ResNet passes per image. This measures what one to four
passes give, on the 7,701 images of pairs.txt, in one process pool over all cores:

- detection: HOG at native resolution (``r0``), HOG 2x upsampled (``r1``, face_recognition's
  default), and dlib's CNN (MMOD, 2x) where both HOG passes find no face; the face nearest the
  centre; a pair with an image without a face is decided as a non-match;
- descriptors of the chip and of its mirror image (a flip), alone or averaged;
- cosine similarity of L2-normalised descriptors, or Euclidean distance of raw ones (dlib's).

The vectors (about 22 minutes on 2 cores) are kept in ``--vectors`` and reused when it exists.
Usage: python benchmarks/dlib_variants.py [--vectors build/dlib_variants.pkl]
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from _common import ROOT, require_lfw, write_result
from faceaudit.io.lfw import read_pairs
from faceaudit.metrics.verification import kfold_accuracy

_G: dict[str, Any] = {}


def _init(lfw: str) -> None:
    import dlib
    import face_recognition_models as frm

    _G.update(lfw=Path(lfw), det=dlib.get_frontal_face_detector(),
              sp=dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
              fr=dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
              cnn=dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location()), dlib=dlib)


def _central(rects: Any, w: int, h: int) -> Any:
    if not len(rects):
        return None
    c = [((r.left() + r.right()) / 2 - w / 2) ** 2 + ((r.top() + r.bottom()) / 2 - h / 2) ** 2 for r in rects]
    return rects[int(np.argmin(c))]


def _one(rel: str) -> tuple[str, dict[str, Any]]:
    from PIL import Image

    img = np.asarray(Image.open(_G["lfw"] / rel).convert("RGB"))
    h, w = img.shape[:2]
    found = {"r0": _central(_G["det"](img, 0), w, h), "r1": _central(_G["det"](img, 1), w, h)}
    if found["r0"] is None and found["r1"] is None:
        found["cnn"] = _central([d.rect for d in _G["cnn"](img, 1)], w, h)
    chips, keys = [], []
    for k, r in found.items():
        if r is None:
            continue
        c = _G["dlib"].get_face_chip(img, _G["sp"](img, r), size=150, padding=0.25)
        chips += [c, np.ascontiguousarray(c[:, ::-1])]
        keys += [k, f"{k}_flip"]
    vecs = _G["fr"].compute_face_descriptor(chips) if chips else []
    return rel, {k: np.asarray(v, np.float32) for k, v in zip(keys, vecs, strict=True)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", default=str(ROOT / "build" / "dlib_variants.pkl"))
    args = ap.parse_args()
    lfw = require_lfw()
    pairs = read_pairs(lfw / "pairs.txt")
    images = sorted({p.a for p in pairs} | {p.b for p in pairs})
    store = Path(args.vectors)
    if store.exists():
        res = pickle.loads(store.read_bytes())
        print(f"vectors from {store}")
    else:
        t0 = time.perf_counter()
        with Pool(os.cpu_count(), initializer=_init, initargs=(str(lfw),)) as pool:
            res = dict(pool.imap_unordered(_one, images, chunksize=16))
        print(f"vectors computed in {time.perf_counter() - t0:.0f} s")
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_bytes(pickle.dumps(res))
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    variants = {
        "HOG 2x only (face_recognition's default detection)": (["r1"], False),
        "HOG native, then 2x": (["r0", "r1"], False),
        "HOG native, then 2x, then CNN 2x (the engine: CNN native first)": (["r0", "r1", "cnn"], False),
        "HOG native, then 2x, then CNN 2x; chip and flip averaged": (["r0", "r1", "cnn"], True),
        "HOG 2x, then native, then CNN 2x; chip and flip averaged": (["r1", "r0", "cnn"], True),
    }
    out: dict[str, Any] = {}
    for name, (order, flip) in variants.items():
        def vec(rel: str, order: list[str] = order, flip: bool = flip) -> np.ndarray | None:
            r = res[rel]
            k = next((k for k in order if k in r), None)
            if k is None:
                return None
            return (r[k] + r[f"{k}_flip"]) / 2 if flip else r[k]

        for metric in ("cosine", "euclidean"):
            sc = np.full(len(pairs), -np.inf)
            for i, p in enumerate(pairs):
                a, b = vec(p.a), vec(p.b)
                if a is not None and b is not None:
                    sc[i] = float(_unit(a) @ _unit(b)) if metric == "cosine" else -float(np.linalg.norm(a - b))
            acc = kfold_accuracy(sc, same, folds)
            out[f"{name}, {metric}"] = {"accuracy": acc.mean, "standard_error": acc.standard_error,
                                        "resnet_passes": 2 if flip else 1,
                                        "pairs_with_an_image_without_face": int(np.isinf(sc).sum())}
    four = np.full(len(pairs), -np.inf)
    for i, p in enumerate(pairs):
        va, vb = ([res[rel][k] for k in ("r0", "r0_flip", "r1", "r1_flip") if k in res[rel]]
                  or [res[rel][k] for k in ("cnn", "cnn_flip") if k in res[rel]] for rel in (p.a, p.b))
        if va and vb:
            four[i] = float(_unit(np.mean(va, axis=0)) @ _unit(np.mean(vb, axis=0)))
    acc = kfold_accuracy(four, same, folds)
    out["HOG native and 2x chips, each with its flip, averaged, cosine"] = {
        "accuracy": acc.mean, "standard_error": acc.standard_error, "resnet_passes": 4,
        "pairs_with_an_image_without_face": int(np.isinf(four).sum())}
    for name, r in out.items():
        print(f"{r['accuracy']:.4%}  ({r['resnet_passes']} ResNet pass(es))  {name}")
    write_result("dlib_variants", {
        "variants": out,
        "hog_misses": {"native": sum("r0" not in r for r in res.values()),
                       "2x": sum("r1" not in r for r in res.values()),
                       "both (CNN used)": sum("cnn" in r for r in res.values())},
        "note": "dlib's published 99.38% uses jitter_image: 100 ResNet passes per face",
    })


if __name__ == "__main__":
    main()
