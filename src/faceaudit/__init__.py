"""faceaudit: face recognition that is tested for demographic bias.

Public API (see README): :func:`detect`, :func:`embed_image`, :func:`embed`, :func:`verify`,
:func:`load_engine`, :func:`load_image`, and the result types.
"""

__version__ = "0.1.0"

from faceaudit.api import (
    EmbedRun,
    VerifyResult,
    calibration_for,
    detect,
    embed,
    embed_image,
    load_engine,
    verify,
)
from faceaudit.engines.base import EnrolSettings, Face, FacePolicy, FaceResult
from faceaudit.engines.registry import list_engines, register_engine
from faceaudit.errors import FaceauditError, ImageError, InputError, ModelError
from faceaudit.io.images import load_image

__all__ = [
    "EmbedRun",
    "EnrolSettings",
    "Face",
    "FacePolicy",
    "FaceResult",
    "FaceauditError",
    "ImageError",
    "InputError",
    "ModelError",
    "VerifyResult",
    "__version__",
    "calibration_for",
    "detect",
    "embed",
    "embed_image",
    "list_engines",
    "load_engine",
    "load_image",
    "register_engine",
    "verify",
]
