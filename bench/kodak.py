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

import numpy as np
from tqdm import tqdm

from pqmim.image import load_image

from .codecs import Point
from .metrics import LPIPS_BACKBONE, LPIPSAlex, quality


def write_json(path: Path, obj) -> None:
    """Atomic write: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def measure_point(point: Point, files: list[Path], lpips_fn: LPIPSAlex | None, cache_dir: Path, fresh: bool = False, progress: bool = True) -> dict:
    """One point over the images: per-image rows and their means (read from the cache if there)."""
    cache = cache_dir / f"kodak_{point.key}.json"
    names = [p.name for p in files]
    if cache.exists() and not fresh:
        cached = json.loads(cache.read_text())
        if [r["image"] for r in cached["rows"]] == names and (cached["lpips"] is not None or lpips_fn is None):
            return cached
    rows = []
    t = time.time()
    for p in tqdm(files, desc=f"{point.codec} {point.label}", disable=not progress, leave=False):
        rgb = load_image(p)
        n, out, enc, dec = point.roundtrip(rgb)
        rows.append({"image": p.name, "bytes": n, "bpp": n * 8 / (rgb.shape[0] * rgb.shape[1]), **quality(rgb, out, lpips_fn),
                     "encode_s": enc, "decode_s": dec})
    res = {"codec": point.codec, "label": point.label, "key": point.key, **point.meta, "images": len(rows),
           **{k: mean(rows, k) for k in ("bpp", "psnr", "ms_ssim", "lpips", "encode_s", "decode_s")},
           "seconds": round(time.time() - t, 1), "rows": rows}
    write_json(cache, res)
    return res


def run(points: list[Point], files: list[Path], cache_dir: Path, lpips: bool = True, fresh: bool = False, progress: bool = True) -> list[dict]:
    lpips_fn = LPIPSAlex(LPIPS_BACKBONE) if lpips else None
    return [measure_point(p, files, lpips_fn, cache_dir, fresh, progress) for p in tqdm(points, desc="Kodak", disable=not progress)]
