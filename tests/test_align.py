"""Alignment: the similarity transform is exact, and the crop equals OpenCV's alignCrop."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from faceaudit.engines.align import ARCFACE_TEMPLATE_112, align_face, similarity_transform
from faceaudit.engines.base import Engine
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ
from faceaudit.io.images import load_image


def test_similarity_transform_recovers_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-10)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-8)


def test_similarity_transform_is_least_squares_with_noise() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (5, 2))
    dst = ARCFACE_TEMPLATE_112 + rng.normal(0, 0.5, (5, 2))
    m = similarity_transform(src, dst)

    def resid(mm: np.ndarray) -> float:
        return float(((src @ mm[:, :2].T + mm[:, 2] - dst) ** 2).sum())

    base = resid(m)
    for _ in range(50):  # any nearby similarity transform fits worse
        a, b = m[0, 0] + rng.normal(0, 1e-3), m[1, 0] + rng.normal(0, 1e-3)
        other = np.array([[a, -b, m[0, 2] + rng.normal(0, 1e-2)], [b, a, m[1, 2] + rng.normal(0, 1e-2)]])
        assert resid(other) >= base - 1e-9


def test_crop_matches_opencv_aligncrop(engine: Engine, tiny: pd.DataFrame) -> None:
    rec = cv2.FaceRecognizerSF.create(str(SFACE_2021DEC_INT8BQ.path), "")
    for f in tiny["file"][:10]:
        rgb = load_image(f).rgb
        face = engine.detect(rgb)[0]
        row = np.concatenate([face.box, face.landmarks.ravel(), [face.score]]).astype(np.float32)
        ref = cv2.cvtColor(rec.alignCrop(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), row), cv2.COLOR_BGR2RGB)
        ours = align_face(rgb, face.landmarks)
        # Two implementations of the same least-squares fit: equal up to interpolation rounding.
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 4
