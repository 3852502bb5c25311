"""Decode image files into RGB arrays, refusing bad files with a reason instead of crashing.

Pillow does the decoding: it reads the header before the pixels (so an oversized image is refused
before any memory is spent on it), applies EXIF orientation, and knows every colour mode we meet
(grayscale, palette, CMYK, alpha, 16-bit). OpenCV's ``imread`` would hide most of these cases.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from faceaudit.errors import ImageError
from faceaudit.io.files import FileRefused, open_regular, read_regular

#: Formats faceaudit reads. MPO is the multi-picture JPEG some cameras write.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})

#: Default ceiling on width x height (64 megapixels, above any phone camera in common use).
#: A decompression bomb (a small file that claims a huge canvas) is refused from its header.
DEFAULT_MAX_PIXELS = 64_000_000

#: Default ceiling on an image file's size in bytes (256 MiB: a 64-megapixel BMP is 192 MB). Checked
#: before reading, so a huge file, or one that never ends, costs nothing.
DEFAULT_MAX_FILE_BYTES = 256 << 20

#: Reason codes a rejected image carries (``ImageError.reason``).
REASONS = {
    "missing_file": "the file does not exist",
    "unreadable_file": "the file cannot be read",
    "not_a_regular_file": "the path is a device, FIFO (named pipe) or socket, not a regular file",
    "empty_file": "the file is empty (0 bytes)",
    "not_an_image": "the file is not an image Pillow recognises",
    "unsupported_format": "the image format is not one of JPEG, PNG, WebP, BMP",
    "too_large": "the image has more pixels, or its file more bytes, than allowed",
    "truncated": "the image data ends early (truncated file)",
    "corrupt": "the image data is damaged",
    "unsupported_mode": "the image's colour mode cannot be converted to RGB",
}


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``rgb`` is an (H, W, 3) uint8 array, upright (EXIF applied)."""

    rgb: np.ndarray
    sha256: str
    format: str
    mode: str  # Pillow colour mode of the file before conversion, e.g. "CMYK", "I;16"
    exif_rotated: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def read_bytes(path: str | Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Read a whole image file, turning refusals and OS errors into :class:`ImageError` with a reason.

    Only a regular file of at most ``max_bytes`` is read (:mod:`faceaudit.io.files`): a device such as
    ``/dev/zero`` or a FIFO is refused (``not_a_regular_file``) without being opened, so one bad
    manifest row can neither exhaust memory nor hang the batch.
    """
    try:
        return read_regular(path, max_bytes=max_bytes, what="an image file")
    except FileRefused as exc:
        raise ImageError(exc.reason, exc.detail, str(path)) from None


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the identity of an image's content."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a regular file's bytes, read in 1 MiB blocks (a device or FIFO is refused, never read)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoadedImage:
    """Load an image file (path or bytes) as an upright RGB uint8 array.

    Raises :class:`ImageError` whose ``reason`` is one of :data:`REASONS`.
    """
    if isinstance(source, bytes):
        return decode_image(source, max_pixels=max_pixels)
    return decode_image(read_bytes(source, max_bytes=max_file_bytes), path=str(source), max_pixels=max_pixels)


def _load_strict(img: Image.Image) -> None:
    """``img.load()`` with Pillow's LOAD_TRUNCATED_IMAGES off: a truncated file must fail, never decode as grey.

    Some libraries switch that process-wide flag on when imported (face_recognition does), which would
    silently turn a truncated image into a half-grey face in every later decode of this process.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(data: bytes, *, path: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode encoded image bytes; see :func:`load_image`."""
    if len(data) == 0:
        raise ImageError("empty_file", REASONS["empty_file"], path)
    digest = sha256_bytes(data)
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's DecompressionBombWarning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("not_an_image", REASONS["not_an_image"], path) from None
        except Image.DecompressionBombError as exc:
            raise ImageError("too_large", f"{REASONS['too_large']} ({exc})", path) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("corrupt", f"{REASONS['corrupt']} ({exc})", path) from None
        fmt = img.format or "unknown"
        if fmt not in ACCEPTED_FORMATS:
            raise ImageError("unsupported_format", f"{REASONS['unsupported_format']} (got {fmt})", path)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError("corrupt", f"{REASONS['corrupt']} (size {width}x{height})", path)
        if width * height > max_pixels:
            raise ImageError(
                "too_large",
                f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}; "
                "resize the image or raise max_pixels",
                path,
            )
        try:
            _load_strict(img)
        except OSError as exc:
            text = str(exc)
            reason = "truncated" if "truncated" in text or "broken data stream" in text else "corrupt"
            raise ImageError(reason, f"{REASONS[reason]} ({text})", path) from None
        except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError("corrupt", f"{REASONS['corrupt']} ({exc})", path) from None
        mode = img.mode
        orientation = _orientation(img)
        try:
            upright = ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError, KeyError, TypeError) as exc:
            raise ImageError("corrupt", f"the EXIF orientation data is damaged ({exc})", path) from None
    rotated = orientation not in (0, 1)
    return LoadedImage(rgb=to_rgb(upright, path), sha256=digest, format=fmt, mode=mode, exif_rotated=rotated)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError):
        return 1


def to_rgb(img: Image.Image, path: str | None = None) -> np.ndarray:
    """Convert any Pillow image to an (H, W, 3) uint8 RGB array.

    16-bit samples are scaled (v / 257, so 65535 -> 255) rather than clipped; transparent pixels are
    composited over white, the usual page background, so a cut-out face keeps its outline.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # "I" is how Pillow opens some 16-bit grayscale PNGs; PNG and BMP carry at most 16 bits here.
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    raise ImageError("unsupported_mode", f"{REASONS['unsupported_mode']} (mode {mode})", path)
