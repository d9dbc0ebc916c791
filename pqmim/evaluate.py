"""Measure a codec on a folder of images the way the field does: bpp from real file sizes,
PSNR on 8-bit RGB per image, then averaged over images."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .data import list_images
from .image import load_image


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def evaluate_folder(codec, folder: str | Path, limit: int | None = None, progress: bool = True) -> dict:
    """Compress and decompress every image; check the decoded codes equal the encoder's.

    Returns means over images (bpp, psnr, encode_s, decode_s) and the per-image rows."""
    from tqdm import tqdm

    files = list_images(folder)[:limit]
    rows = []
    for p in tqdm(files, desc=f"{codec.name or 'pqmim'} on {Path(folder).name}", disable=not progress, leave=False):
        rgb = load_image(p)
        t0 = time.perf_counter()
        data = codec.compress(rgb)
        t1 = time.perf_counter()
        _, codes = codec.decode_codes(data)
        out = np.asarray(codec.decode_image(codes, rgb.shape[1], rgb.shape[0]))
        t2 = time.perf_counter()
        exact = bool((codes == codec.encode_codes([rgb])[0]).all())
        rows.append({"image": p.name, "bytes": len(data), "bpp": len(data) * 8 / (rgb.shape[0] * rgb.shape[1]),
                     "psnr": psnr_uint8(rgb, out), "encode_s": t1 - t0, "decode_s": t2 - t1, "exact": exact})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bpp", "psnr", "encode_s", "decode_s")}
    return {"images": len(rows), **mean, "all_exact": all(r["exact"] for r in rows), "rows": rows}
