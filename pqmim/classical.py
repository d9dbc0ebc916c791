"""Classical codecs through Pillow, on real files: JPEG (4:2:0 and 4:4:4), WebP, AVIF.

`encode_at_size` finds the highest quality setting whose file fits a byte budget. Invariants:
the file it returns is one it encoded and measured, so it is within the budget unless even the
lowest setting is not (then it returns the lowest setting's file, and ``len(data) > max_bytes``
is the caller's sign that it is over budget). The search is a binary search, which assumes the
file size grows with the quality setting (true of Pillow's JPEG, WebP and AVIF up to small local
dips); where that fails the result still fits, and the next setting up was measured and does
not fit, but a higher setting that fits might exist.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features

# Pillow save() arguments per codec; `quality` is what varies.
CODECS: dict[str, dict] = {
    "jpeg420": {"format": "JPEG", "subsampling": 2},
    "jpeg444": {"format": "JPEG", "subsampling": 0},
    "webp": {"format": "WEBP", "method": 6},
    "avif": {"format": "AVIF", "speed": 6, "subsampling": "4:2:0"},
}
LABELS = {"jpeg420": "JPEG 4:2:0", "jpeg444": "JPEG 4:4:4", "webp": "WebP", "avif": "AVIF"}
# The integer quality settings searched (lowest, highest); Pillow advises against JPEG above 95.
QUALITY_RANGE = {"jpeg420": (1, 95), "jpeg444": (1, 95), "webp": (0, 100), "avif": (0, 100)}


def available(codec: str) -> bool:
    """Whether this Pillow build can write the codec's format."""
    return features.check({"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif"}[CODECS[codec]["format"]])


def encode(codec: str, rgb: np.ndarray, quality: int) -> bytes:
    """One image as a file of a classical codec at a quality setting."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, quality=quality, **CODECS[codec])
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode_at_size(codec: str, rgb: np.ndarray, max_bytes: int) -> tuple[int, bytes]:
    """(quality, file) at the highest quality setting whose file is at most `max_bytes`; the
    lowest setting's file (longer than `max_bytes`) when none fits. See the module docstring."""
    lo, hi = QUALITY_RANGE[codec]
    best = (lo, encode(codec, rgb, lo))
    if len(best[1]) > max_bytes:
        return best
    a, b = lo + 1, hi  # invariant: best fits; b + 1 is hi + 1 or a setting measured too big
    while a <= b:
        mid = (a + b) // 2
        data = encode(codec, rgb, mid)
        if len(data) <= max_bytes:
            best, a = (mid, data), mid + 1
        else:
            b = mid - 1
    return best
