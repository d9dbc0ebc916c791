"""Classical codecs through Pillow, measured on real files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg_roundtrip(rgb: np.ndarray, quality: int, subsampling: int = 2) -> tuple[int, np.ndarray]:
    """(file bytes, decoded RGB) of a JPEG; subsampling 2 is 4:2:0, 0 is 4:4:4."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    n = buf.tell()
    buf.seek(0)
    return n, np.asarray(Image.open(buf).convert("RGB"))
