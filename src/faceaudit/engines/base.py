"""The engine interface: detector -> aligner -> embedder, and the values they pass around.

An :class:`Engine` is the only thing callers use; detectors, aligners and embedders are its parts.
A new engine provides the three and is registered by name in :mod:`faceaudit.engines.registry`;
callers do not change. The aligner belongs to the engine because each embedder was trained on its
own crops: ArcFace-style models on the 112x112 five-point template (:class:`ArcFaceAligner`), dlib's
ResNet on dlib's 150x150 face chips (:mod:`faceaudit.engines.dlib_resnet`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from faceaudit.engines.align import align_face


@dataclass(frozen=True)
class Face:
    """One detected face, in pixel coordinates of the upright image.

    ``landmarks`` is (5, 2) in the detector's own scheme, which its engine's aligner reads. YuNet:
    image-left eye, image-right eye, nose tip, image-left and image-right mouth corners. dlib's
    5-point predictor: the two corners of each eye and the base of the nose. ``score`` is the
    detector's own confidence (YuNet: 0 to 1; dlib's HOG: the SVM margin, 0 at its decision boundary).
    """

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return max(self.box[2], 0.0) * max(self.box[3], 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return self.box[0] + self.box[2] / 2.0, self.box[1] + self.box[3] / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 5),
        }


@dataclass(frozen=True)
class EngineIdentity:
    """Everything that determines an engine's embeddings: two equal identities give equal vectors.

    Stored with every embedding (Parquet metadata, cache key), so results can be reproduced and
    vectors from different models are never mixed.
    """

    name: str
    version: str
    embedding_dim: int
    models: tuple[Mapping[str, str], ...]
    preprocessing: Mapping[str, str]
    runtime: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "embedding_dim": self.embedding_dim,
            "models": [dict(m) for m in self.models],
            "preprocessing": dict(self.preprocessing),
            "runtime": dict(self.runtime),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineIdentity:
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            embedding_dim=int(d["embedding_dim"]),
            models=tuple(dict(m) for m in d["models"]),
            preprocessing=dict(d["preprocessing"]),
            runtime=dict(d["runtime"]),
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of this identity."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


class FacePolicy(StrEnum):
    """Which face(s) of an image are the subject."""

    CENTRAL = "central"  # closest to the image centre: right for dataset photos centred on the subject
    LARGEST = "largest"  # largest box: right for selfies and ID photos
    ALL = "all"  # every face that passes the checks, one result each


@dataclass(frozen=True)
class EnrolSettings:
    """How a face is chosen and when it is refused (failure to enrol).

    ``min_det_score``: the detector's confidence below which the chosen face is refused; None means
    the engine's own default (:attr:`Engine.default_min_det_score`), since detectors score on
    different scales.
    ``min_face_px``: the shorter side of the face box, in pixels of the original image, below which
    the face is too small to align well (the 112x112 crop would be mostly upsampled).
    """

    policy: FacePolicy = FacePolicy.CENTRAL
    min_det_score: float | None = None
    min_face_px: float = 24.0

    def resolve(self, default_min_det_score: float) -> EnrolSettings:
        """These settings with the engine's default score filled in (what the cache key and results record)."""
        if self.min_det_score is not None:
            return self
        return EnrolSettings(self.policy, default_min_det_score, self.min_face_px)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.value, "min_det_score": self.min_det_score, "min_face_px": self.min_face_px}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnrolSettings:
        score = d["min_det_score"]
        return cls(policy=FacePolicy(d["policy"]), min_det_score=None if score is None else float(score),
                   min_face_px=float(d["min_face_px"]))


#: Reasons a face fails to enrol (``FaceResult.reason``); image-level reasons come from faceaudit.io.images.
FTE_REASONS = {
    "no_face": "no face was detected",
    "low_score": "the detector's confidence is below min_det_score",
    "face_too_small": "the face is smaller than min_face_px",
}


@dataclass(frozen=True)
class FaceResult:
    """The outcome of enrolling one face of one image: an embedding, or a reason it failed."""

    ok: bool
    reason: str = ""
    message: str = ""
    face: Face | None = None
    embedding: np.ndarray | None = None
    face_index: int = 0
    n_faces: int = 0

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "face_index": self.face_index,
            "n_faces": self.n_faces,
            "face": self.face.to_dict() if self.face is not None else None,
        }
        if with_embedding:
            d["embedding"] = None if self.embedding is None else [float(v) for v in self.embedding]
        return d


class Detector(Protocol):
    """Finds faces: ``detect`` takes an (H, W, 3) uint8 RGB image."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class Aligner(Protocol):
    """Cuts the crop an embedder was trained on: (S, S, 3) uint8 RGB with S = ``input_size``."""

    @property
    def input_size(self) -> int: ...

    def align(self, rgb: np.ndarray, face: Face) -> np.ndarray: ...


class Embedder(Protocol):
    """Embeds aligned crops: ``embed`` takes (N, S, S, 3) uint8 RGB and returns (N, D) float32."""

    input_size: int

    def embed(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ArcFaceAligner:
    """Similarity warp of five YuNet-order landmarks onto the ArcFace template (:func:`align_face`)."""

    input_size: int = 112

    def align(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        crop: np.ndarray = align_face(rgb, face.landmarks, self.input_size)
        return crop


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in float32. The one place embeddings are normalised."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("an embedding has zero or non-finite norm; the model output is unusable")
    out: np.ndarray = (x / norms).astype(np.float32)
    return out


def select_faces(faces: Sequence[Face], image_size: tuple[int, int], policy: FacePolicy) -> list[int]:
    """Indices of the subject face(s) among ``faces`` for ``policy`` (empty when no face)."""
    if not faces:
        return []
    if policy is FacePolicy.ALL:
        return list(range(len(faces)))
    if policy is FacePolicy.LARGEST:
        return [int(np.argmax([f.area for f in faces]))]
    cx, cy = image_size[0] / 2.0, image_size[1] / 2.0
    dist = [(f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2 for f in faces]
    return [int(np.argmin(dist))]


def check_face(face: Face, settings: EnrolSettings) -> tuple[str, str]:
    """("", "") when ``face`` may be enrolled, else (reason, message); ``settings`` must be resolved."""
    if settings.min_det_score is None:
        raise ValueError("EnrolSettings.min_det_score is unresolved; call settings.resolve(engine default) first")
    if face.score < settings.min_det_score:
        return "low_score", f"detector score {face.score:.3f} is below min_det_score {settings.min_det_score}"
    side = min(face.box[2], face.box[3])
    if side < settings.min_face_px:
        return "face_too_small", f"face is {side:.0f} px, below min_face_px {settings.min_face_px:g}"
    return "", ""


@dataclass
class Engine:
    """A face recognition engine: detector + alignment + embedder, with its identity.

    Every method takes upright RGB uint8 images (as :func:`faceaudit.io.images.load_image` returns).
    """

    identity: EngineIdentity
    detector: Detector
    aligner: Aligner
    embedder: Embedder
    metric: str = "cosine"
    #: The detector score below which a face is refused when the settings leave it unset.
    default_min_det_score: float = 0.6

    def __post_init__(self) -> None:
        if self.aligner.input_size != self.embedder.input_size:
            raise ValueError(f"the aligner cuts {self.aligner.input_size}px crops but the embedder takes "
                             f"{self.embedder.input_size}px")

    @property
    def name(self) -> str:
        return self.identity.name

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face in the image, with box, landmarks and score."""
        return self.detector.detect(rgb)

    def align(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The aligned crop the embedder sees."""
        return self.aligner.align(rgb, face)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of aligned crops."""
        if len(crops) == 0:
            return np.zeros((0, self.identity.embedding_dim), np.float32)
        return l2_normalise(self.embedder.embed(crops))

    def plan(self, rgb: np.ndarray, settings: EnrolSettings, faces: Sequence[Face] | None = None) -> list[FaceResult]:
        """Detect (unless ``faces`` is given) and choose faces; results to embed have ``ok=True``, no embedding yet."""
        settings = settings.resolve(self.default_min_det_score)
        found = list(self.detect(rgb) if faces is None else faces)
        chosen = select_faces(found, (rgb.shape[1], rgb.shape[0]), settings.policy)
        if not chosen:
            return [FaceResult(ok=False, reason="no_face", message=FTE_REASONS["no_face"], n_faces=0)]
        out = []
        for k, idx in enumerate(chosen):
            reason, message = check_face(found[idx], settings)
            out.append(FaceResult(ok=not reason, reason=reason, message=message, face=found[idx],
                                  face_index=k, n_faces=len(found)))
        return out

    def enrol_many(self, images: Sequence[np.ndarray], settings: EnrolSettings | None = None) -> list[list[FaceResult]]:
        """Enrol faces of several images, embedding all their crops in one batch."""
        settings = settings or EnrolSettings()
        plans = [self.plan(rgb, settings) for rgb in images]
        crops, where = [], []
        for i, (rgb, plan) in enumerate(zip(images, plans, strict=True)):
            for j, res in enumerate(plan):
                if res.ok and res.face is not None:
                    crops.append(self.align(rgb, res.face))
                    where.append((i, j))
        if crops:
            emb = self.embed_crops(np.stack(crops))
            for (i, j), vec in zip(where, emb, strict=True):
                plans[i][j] = _with_embedding(plans[i][j], vec)
        return plans

    def enrol(self, rgb: np.ndarray, settings: EnrolSettings | None = None) -> list[FaceResult]:
        """Enrol the subject face(s) of one image: see :class:`EnrolSettings`."""
        return self.enrol_many([rgb], settings)[0]


def _with_embedding(res: FaceResult, vec: np.ndarray) -> FaceResult:
    return FaceResult(ok=True, face=res.face, embedding=vec, face_index=res.face_index, n_faces=res.n_faces)
