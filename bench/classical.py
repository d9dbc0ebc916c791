"""Classical codecs through Pillow, measured on real files: JPEG (4:2:0 and 4:4:4), WebP, AVIF."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features

# Pillow save() arguments per codec; `quality` is swept.
CODECS: dict[str, dict] = {
    "jpeg420": {"format": "JPEG", "subsampling": 2},
    "jpeg444": {"format": "JPEG", "subsampling": 0},
    "webp": {"format": "WEBP", "method": 6},
    "avif": {"format": "AVIF", "speed": 6, "subsampling": "4:2:0"},
}
LABELS = {"jpeg420": "JPEG 4:2:0", "jpeg444": "JPEG 4:4:4", "webp": "WebP", "avif": "AVIF"}
# Quality settings that span about 0.05-2 bpp on Kodak, as far as each codec reaches
# (JPEG cannot go below ~0.17 bpp, AVIF's lowest setting is ~0.07 bpp).
QUALITIES = {
    "jpeg420": [3, 5, 10, 15, 20, 30, 50, 75, 90],
    "jpeg444": [1, 5, 10, 15, 20, 30, 50, 75, 85],
    "webp": [0, 5, 10, 20, 30, 50, 70, 80, 90],
    "avif": [0, 10, 20, 30, 40, 50, 60, 70, 80],
}


def available(codec: str) -> bool:
    return features.check({"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}[CODECS[codec]["format"]])


def encode(codec: str, rgb: np.ndarray, quality: int) -> bytes:
    """One image as a file of a classical codec at a quality setting."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, quality=quality, **CODECS[codec])
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
