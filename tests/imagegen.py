"""Builds the bad-input corpus the tests use, from the bundled faces. Nothing is downloaded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds one tiny compressed row: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def padded(face: Image.Image, pad: int = 56, colour: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """The face on a larger canvas, so it sits well inside the frame."""
    canvas = Image.new("RGB", (face.width + 2 * pad, face.height + 2 * pad), colour)
    canvas.paste(face, (pad, pad))
    return canvas


def exif_rotated(upright: Image.Image) -> bytes:
    """JPEG stored rotated by 90 degrees, with EXIF orientation 6 saying how to turn it upright."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


def two_faces(big: Image.Image, small: Image.Image) -> Image.Image:
    """A wide canvas: a small face near the centre-left, a big face at the right edge."""
    canvas = Image.new("RGB", (520, 300), (128, 128, 128))
    canvas.paste(small.resize((90, 90)), (190, 105))
    canvas.paste(big.resize((180, 180)), (330, 60))
    return canvas


def make_corpus(folder: Path, face_a: Path, face_b: Path) -> dict[str, str]:
    """Write the bad-input corpus into ``folder``; returns {file name: expected reason ('' = ok)}."""
    folder.mkdir(parents=True, exist_ok=True)
    a = Image.open(face_a).convert("RGB")
    b = Image.open(face_b).convert("RGB")
    good = jpeg_bytes(padded(a))
    files: dict[str, tuple[bytes, str]] = {
        "zero_bytes.jpg": (b"", "empty_file"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "text.jpg": (b"this is not an image, just some text\n" * 10, "not_an_image"),
        "bomb.png": (png_header_only(30000, 30000), "too_large"),
        "cmyk.jpg": (jpeg_bytes(padded(a).convert("CMYK")), ""),
        "gray.jpg": (jpeg_bytes(padded(a).convert("L")), ""),
        "exif_rotated.jpg": (exif_rotated(padded(a)), ""),
        "noface.png": (_png(Image.fromarray(np.full((200, 200, 3), 90, np.uint8))), "no_face"),
        "two_faces.jpg": (jpeg_bytes(two_faces(b, a)), ""),
    }
    gray16 = (np.asarray(padded(a).convert("L"), np.uint16) * 257).astype(np.uint16)
    files["gray16.png"] = (_png(Image.fromarray(gray16)), "")
    files["rgba.png"] = (_png(padded(a).convert("RGBA")), "")
    files["webp.webp"] = (_webp(padded(a)), "")
    files["bmp.bmp"] = (_save(padded(a), "BMP"), "")
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    return _save(img, "PNG")


def _webp(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=95)
    return buf.getvalue()
