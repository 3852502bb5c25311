"""Face alignment: a pure function from 5 landmarks to a 112x112 crop.

The template is the canonical 5-point layout used by ArcFace-style embedders (InsightFace's
``arcface_dst``; OpenCV's ``FaceRecognizerSF::alignCrop`` uses the same points). Landmark order is
the image's left eye, right eye, nose tip, left mouth corner, right mouth corner, which is YuNet's
order (the subject's right eye comes first).
"""

from __future__ import annotations

import cv2
import numpy as np

#: Standard 5-point template for a 112x112 crop (x, y in pixels).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) taking ``src`` to ``dst``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
    IEEE TPAMI 13(4), 1991, eq. 40-42. Returns the 2x3 matrix ``[sR | t]`` with ``dst ~ sR @ src + t``.
    Exact least squares, unlike ``cv2.estimateAffinePartial2D`` (which is a robust RANSAC/LMedS fit).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    if var_src == 0:
        raise ValueError("all source points coincide; cannot estimate a similarity transform")
    scale = float((s * d).sum() / var_src)
    t = mu_dst - scale * rot @ mu_src
    return np.hstack([scale * rot, t[:, None]])


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 112,
    template: np.ndarray = ARCFACE_TEMPLATE_112,
) -> np.ndarray:
    """Warp ``image`` so that ``landmarks`` (5, 2) land on ``template`` scaled to ``size`` pixels.

    Bilinear interpolation, black outside the image (as OpenCV's ``alignCrop``).
    """
    dst = np.asarray(template, dtype=np.float64) * (size / 112.0)
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), dst)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
