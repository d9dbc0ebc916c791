"""Turning what users hand us (paths, PIL images, numpy arrays) into 8-bit RGB, and back.

Policy, as a user of an image tool expects:
- EXIF orientation is applied (the image is coded as it is displayed).
- Greyscale (8- or 16-bit) is converted to RGB and decodes as RGB.
- 16-bit images are reduced to 8 bits by scaling (not clipping).
- Palette images are expanded; CMYK and YCbCr are converted to RGB.
- An alpha channel that is fully opaque is dropped; real transparency is refused, since pqmim
  codes RGB only and silently flattening would lose data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


class UnsupportedImageError(ValueError):
    """The input cannot be read as an image pqmim can code."""


def _drop_opaque_alpha(arr: np.ndarray, what: str) -> np.ndarray:
    alpha = arr[..., -1]
    full = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0
    if not np.all(alpha == full):
        raise UnsupportedImageError(f"{what} has transparency (an alpha channel); pqmim codes RGB only: flatten it onto a background first")
    return arr[..., :-1]


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        return (arr.astype(np.uint32) * 255 + 32767) // 65535  # 16-bit -> 8-bit, rounded
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        raise UnsupportedImageError("float arrays are ambiguous (0-1 or 0-255?): pass uint8 HxWx3")
    return arr.astype(np.uint8)


def array_to_rgb(arr: np.ndarray, what: str = "array") -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (opaque) uint8/uint16 -> HxWx3 uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"{what} must have shape HxW, HxWx3 or HxWx4, got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UnsupportedImageError(f"{what} is empty ({arr.shape[1]}x{arr.shape[0]})")
    if arr.shape[2] in (2, 4):
        arr = _drop_opaque_alpha(arr, what)
    arr = _to_uint8(arr)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def pil_to_rgb(im: Image.Image, what: str = "image") -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.max(initial=0) > 255 or im.mode.startswith("I;16"):
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        else:
            arr = arr.astype(np.uint8)
        return array_to_rgb(arr, what)
    if im.mode == "F":
        raise UnsupportedImageError(f"{what}: floating-point images are not supported")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode else "RGB")
    return array_to_rgb(np.asarray(im), what)


def load_image(src: ImageLike) -> np.ndarray:
    """Anything image-like -> HxWx3 uint8 RGB (see the module docstring for the policy)."""
    if isinstance(src, np.ndarray):
        return array_to_rgb(src)
    if isinstance(src, Image.Image):
        return pil_to_rgb(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return pil_to_rgb(im, str(path))
        except (Image.UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise UnsupportedImageError(f"cannot read {path} as an image: {e}") from None
    raise TypeError(f"expected a path, PIL.Image or numpy array, got {type(src).__name__}")
