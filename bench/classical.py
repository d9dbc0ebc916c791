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
# Quality settings that span roughly 0.05-2 bpp on Kodak (where the codec can go that low).
QUALITIES = {
    "jpeg420": [1, 3, 5, 8, 10, 15, 20, 30, 50, 75],
    "jpeg444": [1, 3, 5, 8, 10, 15, 20, 30, 50, 75],
    "webp": [0, 2, 5, 10, 20, 30, 50, 70, 80],
    "avif": [0, 5, 10, 20, 30, 40, 50, 60, 70],
}


def available(codec: str) -> bool:
    return features.check({"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}[CODECS[codec]["format"]])


def roundtrip(codec: str, rgb: np.ndarray, quality: int) -> tuple[int, np.ndarray]:
    """(file bytes, decoded RGB) of one image through a classical codec at a quality setting."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, quality=quality, **CODECS[codec])
    n = buf.tell()
    buf.seek(0)
    with Image.open(buf) as im:
        return n, np.asarray(im.convert("RGB"))

