"""Turning user input (paths, bytes, arrays, PIL images) into 8-bit RGB PIL images.

This is the single place the project converts user-supplied pictures: EXIF orientation is applied,
transparency is composited on white, palette/grayscale/CMYK/16-bit images become 8-bit RGB, and
oversized or unreadable files are refused with an :class:`ImageError` that a user can act on.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest accepted image (width × height); larger ones are refused before decoding."""
FRAMES_KEY = "threedpe_frames"
"""``Image.info`` key under which :func:`load_image` records how many frames/pages a decoded file held."""

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, Image.Image]

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Errors PIL raises on corrupt or truncated data while opening or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why in plain words."""


def load_image(src: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``src`` as an 8-bit RGB PIL image (EXIF orientation applied).

    ``src``: a file path, encoded bytes, a binary file object, a PIL image, or a numpy array of shape
    H×W, H×W×1, H×W×3 or H×W×4 (uint8 0..255, uint16 0..65535, float 0..1). Transparent pixels are
    composited on white. Images above ``max_pixels`` are refused from their header, before decoding.
    Raises :class:`ImageError` for anything unreadable.
    """
    if isinstance(src, Image.Image):
        _check_size(src.size, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(src))
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"no image file at {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"the file {path.name} is empty")
        with open(path, "rb") as handle:
            return _decode(handle, max_pixels, name=path.name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("the uploaded image is empty (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), max_pixels, name="the uploaded data")
    if hasattr(src, "read"):
        return _decode(src, max_pixels, name=getattr(src, "name", "the uploaded file"))
    raise ImageError(f"cannot read an image from a {type(src).__name__}")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"the image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}×{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels; please downscale it first"
        )


def _decode(stream: BinaryIO, max_pixels: int, name: str) -> Image.Image:
    """Open ``stream``, check its header size, then decode and convert it."""
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"{name} claims an enormous size (PIL: {error}); it is above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image in a format we can read (PNG, JPEG, WebP, ...)") from None
    except _DECODE_ERRORS as error:
        raise ImageError(f"{name} could not be read as an image ({error})") from None
    with image:
        _check_size(image.size, max_pixels)
        frames = getattr(image, "n_frames", 1)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as error:
            raise ImageError(f"{name} is damaged or truncated and cannot be decoded ({error})") from None
        rgb = _to_rgb(image)
    rgb.info[FRAMES_KEY] = frames
    return rgb


def frames_note(image: Image.Image) -> str | None:
    """A note for a user whose file held several frames or pages (animated GIF/WebP, multi-page TIFF), else None."""
    frames = image.info.get(FRAMES_KEY, 1)
    return f"The file holds {frames} frames or pages; the first one was used." if frames > 1 else None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _SIXTEEN_BIT_MODES:
        return _from_array(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), max_pixels=None)
    if image.mode == "F":
        return _from_array(np.asarray(image), max_pixels=None)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"images in PIL mode {image.mode!r} are not supported ({error})") from None


def _from_array(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    """H×W[×1|3|4] uint8/uint16/float(0..1) array → RGB image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"an image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if max_pixels is not None:
        _check_size((array.shape[1], array.shape[0]), max_pixels)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.round(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError("the image array contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                f"float image arrays must hold values in [0, 1] (got {array.min():.3g}..{array.max():.3g}); "
                "divide 0..255 data by 255 or pass uint8"
            )
        pixels = np.round(array * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"image arrays must be uint8, uint16 or float, got {array.dtype}")
    # uint8 H×W, H×W×3, H×W×4 map to PIL modes L, RGB, RGBA.
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))
