"""YuNet face detector, run by OpenCV 4.x's ``cv2.FaceDetectorYN``.

OpenCV runs the shipped int8 file as it is and also does YuNet's anchor decoding and non-maximum
suppression, so there is no hand-written post-processing here to get wrong. OpenCV 5 dropped this
path, hence the ``<5`` pin. Detection takes about 4 ms on a 250x250 image on one core.
"""

from __future__ import annotations

import cv2
import numpy as np

from faceaudit.engines.base import Face
from faceaudit.engines.models import ModelFile


class YuNetDetector:
    """Detect faces with YuNet.

    ``score_threshold`` is the lowest confidence reported at all (a face below the engine's
    ``min_det_score`` is then reported as a low-score failure to enrol, not hidden).
    Images whose longer side exceeds ``max_side`` are detected on a downscaled copy, because YuNet
    finds faces of roughly 10 to 300 pixels; boxes and landmarks are scaled back to the original.
    """

    def __init__(
        self,
        model: ModelFile,
        score_threshold: float = 0.3,
        nms_threshold: float = 0.3,
        max_side: int = 640,
        top_k: int = 5000,
    ) -> None:
        data = np.frombuffer(model.read_verified(), dtype=np.uint8)
        self._net = cv2.FaceDetectorYN.create(
            "onnx", data, np.zeros(0, np.uint8), (320, 320), score_threshold, nms_threshold, top_k
        )
        self._size: tuple[int, int] | None = None
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        sx, sy = w / size[0], h / size[1]
        faces = []
        for r in rows:
            box = (float(r[0] * sx), float(r[1] * sy), float(r[2] * sx), float(r[3] * sy))
            lm = np.asarray(r[4:14], dtype=np.float32).reshape(5, 2) * np.array([sx, sy], np.float32)
            faces.append(Face(box=box, landmarks=lm, score=float(r[14])))
        return faces
