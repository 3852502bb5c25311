"""The dlib engine against face_recognition (same models, same vectors), its model checks, and its failures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faceaudit.engines import dlib_resnet
from faceaudit.engines.base import EnrolSettings
from faceaudit.engines.registry import engine_spec
from faceaudit.errors import ModelError

HAVE_DLIB = dlib_resnet.missing() is None
HAVE_FR = importlib.util.find_spec("face_recognition") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason=f"dlib is not installed here: {dlib_resnet.INSTALL}")
needs_fr = pytest.mark.skipif(not (HAVE_DLIB and HAVE_FR),
                              reason="face_recognition is not installed (`make test` installs it with --no-deps)")


@pytest.fixture(scope="module")
def dlib_engine():  # type: ignore[no-untyped-def]
    if not HAVE_DLIB:
        pytest.skip(f"dlib is not installed here: {dlib_resnet.INSTALL}")
    return engine_spec(dlib_resnet.NAME).load(1)


def _images(tiny: pd.DataFrame, n: int) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(f).convert("RGB")) for f in tiny["file"][:n]]


@needs_fr
def test_same_vectors_as_face_recognition_for_the_same_face(dlib_engine, tiny: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    """Given the engine's face box, face_recognition's encoding is the engine's vector (before normalising)."""
    import face_recognition

    for rgb in _images(tiny, 8):
        [res] = dlib_engine.enrol(rgb)
        assert res.ok, res.message
        x, y, w, h = (int(v) for v in res.face.box)
        [ref] = face_recognition.face_encodings(rgb, [(y, x + w - 1, y + h - 1, x)], model="small")
        np.testing.assert_allclose(res.embedding, ref / np.linalg.norm(ref), atol=1e-6)
        # face_recognition's default loop (its own detection with one upsample) finds nearly the same vector
        default = face_recognition.face_encodings(rgb)
        assert default and max(float(res.embedding @ (d / np.linalg.norm(d))) for d in default) > 0.99


@needs_dlib
def test_models_are_checked_and_the_five_point_predictor_is_used() -> None:
    ident = dlib_resnet.identity()
    files = [m["file"] for m in ident.models]
    assert "shape_predictor_5_face_landmarks.dat" in files and not any("68" in f for f in files)
    for m in (dlib_resnet.shape_predictor_model(), dlib_resnet.resnet_model()):
        m.read_verified()  # the installed files hash to the pinned digests
    import dataclasses

    tampered = dataclasses.replace(dlib_resnet.resnet_model(), sha256="0" * 64)
    with pytest.raises(ModelError, match="altered or replaced"):
        tampered.read_verified()


def test_missing_dlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    assert dlib_resnet.missing() == dlib_resnet.INSTALL
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(ModelError, match=r"pip install 'faceaudit\[dlib\]'"):
        dlib_resnet.load()


@needs_dlib
def test_no_face_and_the_engines_own_score_scale(dlib_engine, tiny: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    [blank] = dlib_engine.enrol(np.full((200, 200, 3), 127, np.uint8))
    assert not blank.ok and blank.reason == "no_face"
    rgb = _images(tiny, 1)[0]
    [res] = dlib_engine.enrol(rgb)  # default: dlib's own decision boundary (margin 0), not YuNet's 0.6
    assert res.ok and res.face.score > 0
    [strict] = dlib_engine.enrol(rgb, EnrolSettings(min_det_score=res.face.score + 1))
    assert not strict.ok and strict.reason == "low_score"
    assert EnrolSettings().resolve(dlib_resnet.MIN_DET_SCORE).min_det_score == 0.0


@needs_dlib
def test_embed_with_workers_and_cache(tiny_manifest: Path, tmp_path: Path) -> None:
    """Worker processes load the engine by name; a rerun comes from the cache with the same vectors."""
    import faceaudit

    df = pd.read_csv(tiny_manifest).head(12)
    df["path"] = [str(tiny_manifest.parent / p) for p in df["path"]]
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    first = faceaudit.embed(manifest, engine="dlib-resnet", workers=2, cache=tmp_path / "c.sqlite")
    again = faceaudit.embed(manifest, engine="dlib-resnet", workers=2, cache=tmp_path / "c.sqlite")
    assert first.n_ok == 12 and again.n_cached == 12
    assert first.metadata["engine"]["name"] == "dlib-resnet"
    assert first.metadata["settings"]["min_det_score"] == 0.0
    for a, b in zip(first.frame["embedding"], again.frame["embedding"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_dlib
def test_lfw_pairs_are_told_apart(dlib_engine, lfw: Path) -> None:  # type: ignore[no-untyped-def]
    """Real faces: on the first 60 View 2 pairs of each kind, same-person pairs score above different-person pairs."""
    from PIL import Image

    from faceaudit.io.lfw import read_pairs

    pairs = read_pairs(lfw / "pairs.txt")
    chosen = [p for p in pairs if p.same][:60] + [p for p in pairs if not p.same][:60]
    cache: dict[str, np.ndarray | None] = {}

    def vec(rel: str) -> np.ndarray | None:
        if rel not in cache:  # HOG misses some faces (profiles, heavy occlusion): a failure to enrol, not a crash
            [r] = dlib_engine.enrol(np.asarray(Image.open(lfw / rel).convert("RGB")))
            cache[rel] = r.embedding if r.ok else None
        return cache[rel]

    kept = [(p, va, vb) for p in chosen if (va := vec(p.a)) is not None and (vb := vec(p.b)) is not None]
    assert len(kept) >= 0.95 * len(chosen)
    scores = np.array([float(va @ vb) for _, va, vb in kept])
    same = np.array([p.same for p, _, _ in kept])
    # area under the ROC curve: the share of (same, different) pairs ordered correctly
    auc = (scores[same][:, None] > scores[~same][None, :]).mean()
    assert auc > 0.99


@needs_dlib
def test_large_images_are_detected_on_a_downscaled_copy(dlib_engine, tiny: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    """An image above 1,024 px is searched at a smaller size; box and landmarks come back in full-size pixels."""
    import cv2

    big = cv2.resize(_images(tiny, 1)[0], (1500, 1200), interpolation=cv2.INTER_CUBIC)
    [f_big] = dlib_engine.detect(big)
    # the same search by hand: the copy the detector makes (longer side 1,024), boxes scaled back per axis
    copy = cv2.resize(big, (1024, 819), interpolation=cv2.INTER_AREA)
    [r] = dlib_engine.detector._hog(copy, 0)
    sx, sy = 1500 / 1024, 1200 / 819
    want = (round(r.left() * sx), round(r.top() * sy), round((r.right() + 1) * sx) - round(r.left() * sx),
            round((r.bottom() + 1) * sy) - round(r.top() * sy))
    assert f_big.box == tuple(float(v) for v in want)
    x, y, w, h = f_big.box
    assert np.all((f_big.landmarks >= [x, y]) & (f_big.landmarks <= [x + w, y + h]))
    [res] = dlib_engine.enrol(big)
    assert res.ok and res.embedding is not None


@needs_dlib
def test_cnn_detector_finds_what_hog_misses(dlib_engine, lfw: Path) -> None:  # type: ignore[no-untyped-def]
    """A real LFW photo (a turned head) where HOG finds no face at either scale: the CNN fallback finds it."""
    from PIL import Image

    rgb = np.asarray(Image.open(lfw / "images/Saeb_Erekat/Saeb_Erekat_0002.jpg").convert("RGB"))
    assert len(dlib_engine.detector._hog(rgb, 0)) == 0 and len(dlib_engine.detector._hog(rgb, 1)) == 0
    [res] = dlib_engine.enrol(rgb)
    assert res.ok and res.face.score > 0
    x, y, w, h = res.face.box
    # a face-sized box near the centre
    assert 0.2 * 250 < w < 0.8 * 250 and abs(x + w / 2 - 125) < 40 and abs(y + h / 2 - 125) < 60


def test_shipped_calibration_fits_the_engine() -> None:
    """`faceaudit verify --engine dlib-resnet` needs the LFW calibration made with exactly these model files."""
    from faceaudit.engines.calibration import load_calibration

    cal = load_calibration(dlib_resnet.identity())
    t3, t4 = cal.threshold_for(1e-3), cal.threshold_for(1e-4)
    assert t3 < t4 and cal.fmr_at(t4) == pytest.approx(1e-4, rel=1e-6) and cal.n_impostor > 8e7
