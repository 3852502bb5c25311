"""Exceptions raised by faceaudit.

    FaceauditError
    ├── ImageError          an image file cannot be used (carries ``reason`` and ``path``)
    ├── ModelError          a model file is missing, altered, or not understood
    ├── InputError          a manifest, folder or embeddings file is not usable as given
    └── CalibrationError    no calibration covers the requested operating point

A failure to enrol (no face, face too small, low detector score) is not an exception:
it is a result (:class:`faceaudit.engines.base.FaceResult` with ``ok=False``), because an audit
counts failures to enrol per demographic group.
"""

from __future__ import annotations


class FaceauditError(Exception):
    """Base class of every error faceaudit raises on purpose."""


class ImageError(FaceauditError):
    """An image cannot be decoded or is refused; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}")


class ModelError(FaceauditError):
    """A model file is missing, does not match its recorded SHA-256, or cannot be run."""


class InputError(FaceauditError):
    """A manifest, input folder or embeddings file cannot be used as given."""


class CalibrationError(FaceauditError):
    """The engine's calibration does not cover the requested operating point."""
