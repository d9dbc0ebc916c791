"""Turning what users hand us (paths, PIL images, numpy arrays) into 8-bit RGB, and back.

Policy, as a user of an image tool expects:
- EXIF orientation is applied (the image is coded as it is displayed).
- Greyscale (8- or 16-bit) is converted to RGB and decodes as RGB.
- 16-bit images are reduced to 8 bits by scaling (not clipping).
- Palette images are expanded; YCbCr is converted to RGB.
- Colour: an RGB image's ICC profile is kept as it is (the codec stores it). A CMYK or
  greyscale image with a profile is converted to sRGB through its profile (littlecms, through
  Pillow's ImageCms), since it decodes as RGB; without a profile, CMYK is converted as Pillow does.
- Alpha: an alpha channel that is fully opaque is dropped; real transparency is kept as an
  8-bit plane beside the RGB (`Picture.alpha`). `load_image`, which gives RGB only, refuses
  transparency rather than lose it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch


class UnsupportedImageError(ValueError):
    """The input cannot be read as an image pqmim can code."""


@dataclass(frozen=True)
class Picture:
    """An image as the codec sees it: 8-bit RGB, and what travels beside it."""

    rgb: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray | None = None  # HxW uint8; None when opaque
    icc: bytes | None = None  # ICC profile of `rgb`
    exif: bytes | None = None  # EXIF block (orientation already applied)


ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, Picture]


def _split_alpha(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour channels, alpha plane or None when fully opaque) of an array with alpha last."""
    alpha = _as_8bit(arr[..., -1])
    return arr[..., :-1], (None if np.all(alpha == 255) else np.ascontiguousarray(alpha))


def _as_8bit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        return (arr.astype(np.uint32) * 255 + 32767) // 65535  # 16-bit -> 8-bit, rounded
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        raise UnsupportedImageError("float arrays are ambiguous (0-1 or 0-255?): pass uint8 HxWx3")
    return arr.astype(np.uint8)


def array_to_picture(arr: np.ndarray, what: str = "array") -> Picture:
    """HxW, HxWx1, HxWx2, HxWx3 or HxWx4 uint8/uint16 (alpha last) -> Picture."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"{what} must have shape HxW, HxWx3 or HxWx4, got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UnsupportedImageError(f"{what} is empty ({arr.shape[1]}x{arr.shape[0]})")
    alpha = None
    if arr.shape[2] in (2, 4):
        arr, alpha = _split_alpha(arr)
    arr = _as_8bit(arr)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Picture(np.ascontiguousarray(arr), alpha)


# The colour space (ICC header, bytes 16-19) a profile must declare to describe a mode's data.
_ICC_SPACES = {"RGB": b"RGB ", "RGBA": b"RGB ", "P": b"RGB ", "PA": b"RGB ", "L": b"GRAY", "LA": b"GRAY", "CMYK": b"CMYK"}


def _icc_space(icc: bytes | None) -> bytes | None:
    """The data colour space an ICC profile's header declares (bytes 16-19), or None."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image | None:
    """A CMYK or greyscale image converted to sRGB through its ICC profile; None if it fails."""
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if im.mode == "LA" else "RGB"
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


def pil_to_picture(im: Image.Image, what: str = "image") -> Picture:
    im = ImageOps.exif_transpose(im)
    icc, exif = im.info.get("icc_profile") or None, im.info.get("exif") or None
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if _icc_space(icc) != _ICC_SPACES.get(im.mode):
        icc = None  # a profile of another colour space (or of a mode we convert) would misdescribe the data
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if icc is not None and im.mode in ("CMYK", "L", "LA"):
        im = _to_srgb(im, icc) or im  # then sRGB, which untagged RGB means
        icc = None  # a greyscale or CMYK profile cannot describe the RGB the file decodes to
    if im.mode == "CMYK":
        im = im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.max(initial=0) > 255 or im.mode.startswith("I;16"):
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        else:
            arr = arr.astype(np.uint8)
        pic = array_to_picture(arr, what)
    elif im.mode == "F":
        raise UnsupportedImageError(f"{what}: floating-point images are not supported")
    else:
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        pic = array_to_picture(np.asarray(im), what)
    return Picture(pic.rgb, pic.alpha, icc, exif)


def _opaque(pic: Picture, what: str) -> Picture:
    if pic.alpha is not None:
        raise UnsupportedImageError(
            f"{what} has transparency (an alpha channel), and this measures colour only: flatten it first (encoding keeps alpha)"
        )
    return pic


def read_picture(src: ImageLike) -> Picture:
    """Anything image-like -> Picture (see the module docstring for the policy)."""
    if isinstance(src, Picture):
        return src
    if isinstance(src, np.ndarray):
        return array_to_picture(src)
    if isinstance(src, Image.Image):
        return pil_to_picture(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return pil_to_picture(im, str(path))
        except (Image.UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise UnsupportedImageError(f"cannot read {path} as an image: {e}") from None
    raise TypeError(f"expected a path, PIL.Image or numpy array, got {type(src).__name__}")


def load_image(src: ImageLike) -> np.ndarray:
    """Anything image-like without transparency -> HxWx3 uint8 RGB (the colour only: for
    measuring and training; the codec reads a Picture, alpha and profile included)."""
    what = str(src) if isinstance(src, (str, os.PathLike)) else "image"
    return _opaque(read_picture(src), what).rgb


def picture_to_pil(pic: Picture) -> Image.Image:
    """A Picture as a PIL image (RGB, or RGBA with alpha), profile and EXIF in `info`."""
    if pic.alpha is None:
        im = Image.fromarray(pic.rgb, "RGB")
    else:
        im = Image.fromarray(np.dstack([pic.rgb, pic.alpha]), "RGBA")
    if pic.icc:
        im.info["icc_profile"] = pic.icc
    if pic.exif:
        im.info["exif"] = pic.exif
    return im


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 (1, 3, H, W) in [0, 1]; NxHxWx3 -> (N, 3, H, W). The one place
    pixels become the networks' input."""
    import torch  # here, not at the top: `import pqmim` does not wait for torch

    a = np.ascontiguousarray(rgb)
    x = torch.from_numpy(a if a.flags.writeable else a.copy())  # torch wants writable memory
    x = x[None] if x.ndim == 3 else x
    return x.permute(0, 3, 1, 2).float().div_(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float (3, H, W) or (N, 3, H, W) in [0, 1] -> HxWx3 (or NxHxWx3) uint8 on the CPU: clamped,
    then rounded to nearest (ties to even). The one place network output becomes pixels."""
    import torch

    px = (x.detach().float().clamp(0, 1) * 255).round_().to(torch.uint8)
    return px.movedim(-3, -1).cpu().numpy()
