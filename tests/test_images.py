"""threedpe.images.load_image: every input kind and mode becomes 8-bit RGB; bad input → ImageError."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from threedpe.images import DEFAULT_MAX_PIXELS, ImageError, load_image


def _rgb_array(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` (8-bit RGB) but that holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_all_input_kinds_give_the_same_rgb(tmp_path):
    array = _rgb_array()
    png = _encode(Image.fromarray(array))
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    inputs = [path, str(path), png, bytearray(png), memoryview(png), io.BytesIO(png), Image.fromarray(array), array]
    for src in inputs:
        image = load_image(src)
        assert image.mode == "RGB" and image.size == (32, 24), type(src)
        np.testing.assert_array_equal(np.asarray(image), array, err_msg=type(src).__name__)


def test_exif_orientation_is_applied():
    # 60×40 landscape, red left half / blue right half, stored with orientation 6 ("rotate 90° CW to view").
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, :30] = (255, 0, 0)
    array[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(_encode(Image.fromarray(array), "JPEG", exif=exif, quality=95))
    assert image.size == (40, 60)
    top, bottom = np.asarray(image)[5, 20].astype(int), np.asarray(image)[-5, 20].astype(int)
    assert top[0] > 200 and top[2] < 60, top  # the left (red) half is on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_transparency_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (0, 0, 255)
    rgba[:4, :, 3] = 0  # fully transparent top
    rgba[4:, :, 3] = 128  # half-transparent bottom
    for src in (Image.fromarray(rgba), _encode(Image.fromarray(rgba)), rgba):
        pixels = np.asarray(load_image(src)).astype(int)
        np.testing.assert_array_equal(pixels[0, 0], (255, 255, 255))
        assert abs(pixels[7, 7, 0] - 127) <= 1 and pixels[7, 7, 2] == 255
    gray_alpha = Image.fromarray(rgba[..., 3]).convert("L")
    la = Image.merge("LA", (Image.new("L", (8, 8), 0), gray_alpha))
    np.testing.assert_array_equal(np.asarray(load_image(la))[0, 0], (255, 255, 255))


def test_palette_gray_cmyk_modes():
    array = _rgb_array()
    rgb = Image.fromarray(array)
    palette = rgb.quantize(16)
    np.testing.assert_array_equal(np.asarray(load_image(palette)), np.asarray(palette.convert("RGB")))
    palette_png = palette.copy()
    palette_png.info["transparency"] = 0
    transparent = np.asarray(load_image(_encode(palette_png)))
    index0 = np.asarray(palette) == 0
    assert index0.any() and (transparent[index0] == 255).all()
    gray = load_image(rgb.convert("L"))
    assert gray.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(gray)[..., 0], np.asarray(rgb.convert("L")))
    np.testing.assert_array_equal(np.asarray(load_image(rgb.convert("1")))[..., 1] % 255, 0)
    cmyk = rgb.convert("CMYK")
    for src in (cmyk, _encode(cmyk, "JPEG", quality=100)):
        pixels = np.asarray(load_image(src)).astype(int)
        assert np.abs(pixels - array).mean() < 6


def test_sixteen_bit_inputs_become_eight_bit():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    expected = np.array([0, 1, 128, 255])
    png = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    for src in (png, values, np.repeat(values[..., None], 3, axis=2)):
        pixels = np.asarray(load_image(src))
        assert pixels.shape == (1, 4, 3)
        np.testing.assert_array_equal(pixels[0, :, 0], expected)
        np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_float_and_gray_arrays():
    np.testing.assert_array_equal(np.asarray(load_image(np.full((2, 3), 0.5)))[0, 0], (128, 128, 128))
    np.testing.assert_array_equal(np.asarray(load_image(np.ones((2, 3, 1), np.float32)))[1, 2], (255, 255, 255))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="int64"):
        load_image(np.zeros((4, 4, 3), np.int64))


def test_unreadable_inputs_raise_image_error(tmp_path):
    assert issubclass(ImageError, ValueError)
    png = _encode(Image.fromarray(_rgb_array(64, 64)))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image, just text renamed to .png\n")
    cases = {
        "truncated": png[: len(png) // 2],
        "random bytes": np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty bytes": b"",
        "empty file": empty,
        "text file": text,
        "missing file": tmp_path / "missing.jpg",
        "directory": tmp_path,
        "wrong type": 12345,
    }
    for name, src in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(src)
        assert len(str(info.value)) > 10, name


@pytest.mark.parametrize("side", [8_000, 20_000])  # above our 40 MP limit; 20k² also trips PIL's bomb check
def test_huge_header_refused_before_decoding(side, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="megapixels"):
        load_image(_png_header_only(side, side))


def test_pixel_limit_is_configurable():
    array = _rgb_array(100, 100)
    assert DEFAULT_MAX_PIXELS >= 10_000
    assert load_image(array).size == (100, 100)
    for src in (array, Image.fromarray(array), _encode(Image.fromarray(array))):
        with pytest.raises(ImageError, match="megapixels"):
            load_image(src, max_pixels=5_000)
