"""Image loading: every kind of bad or unusual file gives the expected outcome and reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceaudit.errors import ImageError
from faceaudit.io.images import load_image
from imagegen import exif_rotated, jpeg_bytes, make_corpus, padded, png_header_only


@pytest.fixture(scope="module")
def face(tiny: pd.DataFrame) -> Image.Image:
    return Image.open(tiny["file"][0]).convert("RGB")


def test_jpeg_png_webp_bmp_decode_to_same_rgb(face: Image.Image) -> None:
    ref = np.asarray(face)
    for fmt in ("PNG", "BMP", "WEBP"):
        buf = io.BytesIO()
        face.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        img = load_image(buf.getvalue())
        assert img.format == fmt
        np.testing.assert_array_equal(img.rgb, ref)
    jpg = load_image(jpeg_bytes(face))
    assert jpg.rgb.shape == ref.shape and np.abs(jpg.rgb.astype(int) - ref).mean() < 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"hello, not an image" * 5, "not_an_image"),
        (png_header_only(30000, 30000), "too_large"),
    ],
)
def test_bad_bytes_are_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        load_image(data)
    assert err.value.reason == reason


def test_truncated_jpeg(face: Image.Image) -> None:
    data = jpeg_bytes(padded(face))
    with pytest.raises(ImageError) as err:
        load_image(data[: len(data) // 2])
    assert err.value.reason == "truncated"


def test_truncated_jpeg_fails_even_when_another_library_lets_pillow_accept_it(
        face: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """face_recognition sets Pillow's process-wide LOAD_TRUNCATED_IMAGES on import; decoding must not follow it."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = jpeg_bytes(padded(face))
    with pytest.raises(ImageError) as err:
        load_image(data[: len(data) // 2])
    assert err.value.reason == "truncated" and ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's flag kept


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nope.jpg")
    assert err.value.reason == "missing_file" and "nope.jpg" in str(err.value)
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    assert err.value.reason == "unreadable_file"


def test_unsupported_format(face: Image.Image) -> None:
    buf = io.BytesIO()
    face.save(buf, format="GIF")
    with pytest.raises(ImageError) as err:
        load_image(buf.getvalue())
    assert err.value.reason == "unsupported_format" and "GIF" in str(err.value)


def test_max_pixels_is_checked_from_the_header(face: Image.Image) -> None:
    with pytest.raises(ImageError) as err:
        load_image(jpeg_bytes(face), max_pixels=100)
    assert err.value.reason == "too_large" and "max_pixels" in str(err.value)


def test_exif_orientation_is_applied(face: Image.Image) -> None:
    upright = padded(face)
    img = load_image(exif_rotated(upright))
    assert img.exif_rotated
    assert img.size == upright.size
    assert np.abs(img.rgb.astype(int) - np.asarray(upright, int)).mean() < 4


def test_grayscale_cmyk_alpha_16bit_become_rgb(face: Image.Image) -> None:
    base = padded(face)
    gray = np.asarray(base.convert("L"))
    g16 = Image.fromarray(gray.astype(np.uint16) * 257)
    buf = io.BytesIO()
    g16.save(buf, format="PNG")
    img16 = load_image(buf.getvalue())
    assert img16.mode.startswith("I")
    np.testing.assert_array_equal(img16.rgb[:, :, 0], gray)  # 16-bit values scaled, not clipped
    np.testing.assert_array_equal(img16.rgb[:, :, 1], gray)

    cmyk = load_image(jpeg_bytes(base.convert("CMYK")))
    assert cmyk.mode == "CMYK" and cmyk.rgb.shape == (*gray.shape, 3)
    assert np.abs(cmyk.rgb.astype(int) - np.asarray(base, int)).mean() < 6

    rgba = base.convert("RGBA")
    alpha = np.array(rgba)
    alpha[:10, :, 3] = 0  # a transparent band: composited over white
    buf = io.BytesIO()
    Image.fromarray(alpha).save(buf, format="PNG")
    out = load_image(buf.getvalue()).rgb
    assert (out[:10] == 255).all()
    np.testing.assert_array_equal(out[20:], np.asarray(base)[20:])


def test_corpus_reasons_are_what_make_corpus_promises(tmp_path: Path, tiny: pd.DataFrame) -> None:
    expected = make_corpus(tmp_path, Path(tiny["file"][0]), Path(tiny["file"][2]))
    for name, reason in expected.items():
        if reason in ("empty_file", "truncated", "not_an_image", "too_large"):
            with pytest.raises(ImageError) as err:
                load_image(tmp_path / name)
            assert err.value.reason == reason, name
        else:
            assert load_image(tmp_path / name).rgb.ndim == 3, name
