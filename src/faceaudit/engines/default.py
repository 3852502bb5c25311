"""The default engine, ``yunet-sface``: YuNet detector + SFace embedder from the OpenCV Zoo.

Licence-clean (MIT and Apache-2.0), small (11 MB), offline. Runtime choice, measured on this
project's 2-core machine: SFace via onnxruntime on the rewritten float32 graph takes 17 ms per face
on one core against 31 ms for OpenCV on the int8 file, so embedding uses onnxruntime; detection stays
on OpenCV, which runs YuNet as shipped including its post-processing (4 ms per 250x250 image).
"""

from __future__ import annotations

from faceaudit.engines.base import ArcFaceAligner, Engine, EngineIdentity
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ, YUNET_2023MAR_INT8BQ, installed_version

NAME = "yunet-sface"
#: YuNet's confidence (0 to 1) below which a face is refused unless the settings say otherwise.
MIN_DET_SCORE = 0.6
#: Bumped whenever anything here changes the vectors (so caches never serve stale ones).
VERSION = "1"


def identity() -> EngineIdentity:
    """The identity of the default engine, without loading any model."""
    return EngineIdentity(
        name=NAME,
        version=VERSION,
        embedding_dim=128,
        models=(
            {**YUNET_2023MAR_INT8BQ.to_dict(), "runtime": "opencv FaceDetectorYN, file as shipped"},
            {**SFACE_2021DEC_INT8BQ.to_dict(), "runtime": "onnxruntime, dequantized to float32 in memory"},
        ),
        preprocessing={
            "decode": "Pillow, EXIF orientation applied, RGB uint8",
            "detect": "YuNet score>=0.3, NMS 0.3, downscaled to longer side 640",
            "align": "Umeyama similarity on 5 landmarks to the ArcFace 112x112 template, bilinear",
            "embed": "RGB float32 0-255 NCHW (the graph applies (x-127.5)/128), L2-normalised",
        },
        runtime={"opencv": installed_version("opencv-python-headless", "opencv-python",
                                             "opencv-contrib-python-headless", "opencv-contrib-python"),
                 "onnxruntime": installed_version("onnxruntime")},
    )


def load(threads: int = 1) -> Engine:
    """Load the default engine; ``threads`` is onnxruntime's and OpenCV's thread count."""
    import cv2  # heavy imports only where a model is loaded

    from faceaudit.engines.onnx_embedder import OnnxEmbedder
    from faceaudit.engines.yunet import YuNetDetector

    cv2.setNumThreads(threads)
    detector = YuNetDetector(YUNET_2023MAR_INT8BQ)
    embedder = OnnxEmbedder(SFACE_2021DEC_INT8BQ.read_verified(), threads=threads)
    return Engine(identity=identity(), detector=detector, aligner=ArcFaceAligner(embedder.input_size),
                  embedder=embedder, default_min_det_score=MIN_DET_SCORE)
