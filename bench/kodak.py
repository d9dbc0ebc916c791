"""Kodak rate-distortion of every codec, all in one run on the same images.

Per codec and rate point, the mean over images of: bpp (real bytes x 8 / original pixels), PSNR
(RGB, 8-bit), MS-SSIM (pytorch-msssim), LPIPS-Alex, and encode / decode seconds per image. Each
point is cached in <cache>/kodak_<key>.json: a rerun measures only points it has not seen (a new
model, another Pillow), unless --fresh.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from pqmim.checkout import LPIPS_BACKBONE
from pqmim.evaluate import LPIPSAlex, measure_images
from pqmim.fileio import atomic_write_json

from .codecs import Point


def measure_point(
    point: Point, files: list[Path], lpips_fn: LPIPSAlex | None, cache_dir: Path, fresh: bool = False, progress: bool = True
) -> dict:
    """One point over the images: per-image rows and their means (read from the cache if there)."""
    cache = cache_dir / f"kodak_{point.key}.json"
    names = [p.name for p in files]
    if cache.exists() and not fresh:
        cached = json.loads(cache.read_text())
        if [r["image"] for r in cached["rows"]] == names and (cached["lpips"] is not None or lpips_fn is None):
            return cached
    t = time.time()
    m = measure_images(lambda rgb: (*point.roundtrip(rgb), None), files, lpips_fn, f"{point.codec} {point.label}", progress)
    res = {"codec": point.codec, "label": point.label, "key": point.key, **point.meta, **m, "seconds": round(time.time() - t, 1)}
    res["rows"] = res.pop("rows")  # last: the cache file reads top-down
    atomic_write_json(cache, res)
    return res


def run(
    points: list[Point], files: list[Path], cache_dir: Path, lpips: bool = True, fresh: bool = False, progress: bool = True
) -> list[dict]:
    lpips_fn = LPIPSAlex(LPIPS_BACKBONE) if lpips else None
    return [measure_point(p, files, lpips_fn, cache_dir, fresh, progress) for p in tqdm(points, desc="Kodak", disable=not progress)]
