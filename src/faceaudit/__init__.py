"""faceaudit: face recognition that is tested for demographic bias.

Public API (see README): :func:`detect`, :func:`embed_image`, :func:`embed_images`, :func:`embed`,
:func:`verify`, :func:`load_engine`, :func:`load_image`, the gallery (:class:`Gallery`, :class:`Consent`,
:class:`Policy`), and the result types. The command line and the HTTP service (``faceaudit serve``) are thin
layers over these. Names are imported on first use, so
that a worker process importing one engine module does not pay for pandas and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "EmbedRun": "faceaudit.api",
    "VerifyResult": "faceaudit.api",
    "calibration_for": "faceaudit.api",
    "detect": "faceaudit.api",
    "embed": "faceaudit.api",
    "embed_image": "faceaudit.api",
    "embed_images": "faceaudit.api",
    "load_engine": "faceaudit.api",
    "verify": "faceaudit.api",
    "EnrolSettings": "faceaudit.engines.base",
    "Face": "faceaudit.engines.base",
    "FacePolicy": "faceaudit.engines.base",
    "FaceResult": "faceaudit.engines.base",
    "list_engines": "faceaudit.engines.registry",
    "register_engine": "faceaudit.engines.registry",
    "FaceauditError": "faceaudit.errors",
    "ImageError": "faceaudit.errors",
    "InputError": "faceaudit.errors",
    "ModelError": "faceaudit.errors",
    "load_image": "faceaudit.io.images",
    "Consent": "faceaudit.gallery.gallery",
    "Erasure": "faceaudit.gallery.gallery",
    "Gallery": "faceaudit.gallery.gallery",
    "GalleryCheck": "faceaudit.gallery.gallery",
    "KeyRotation": "faceaudit.gallery.gallery",
    "SearchResult": "faceaudit.gallery.gallery",
    "IntegrityError": "faceaudit.gallery.crypto",
    "Policy": "faceaudit.gallery.policy",
    "PolicyError": "faceaudit.gallery.policy",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'faceaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
