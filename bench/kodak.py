"""Kodak rate-distortion of pqmim models against JPEG (Pillow, 4:2:0), in one run.

    python -m bench kodak [--models pqmim-default] [--kodak ../shared/data/kodak] [--limit N]

bpp is real file bytes x 8 / pixels, PSNR is RGB on the decoded 8-bit image, both averaged over
images. JPEG's PSNR at pqmim's bpp is interpolated (linearly in bpp) between the two JPEG
qualities that bracket it; results go to bench/results/kodak.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pqmim import Codec
from pqmim.data import list_images
from pqmim.evaluate import evaluate_folder, psnr_uint8
from pqmim.image import load_image

from .classical import jpeg_roundtrip

JPEG_QUALITIES = [1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 75, 90]
RESULTS = Path(__file__).resolve().parent / "results"


def jpeg_curve(folder: str, limit: int | None) -> list[dict]:
    images = [load_image(p) for p in list_images(folder)[:limit]]
    curve = []
    for q in tqdm(JPEG_QUALITIES, desc="JPEG 4:2:0", leave=False):
        bpp, ps = [], []
        for rgb in images:
            n, out = jpeg_roundtrip(rgb, q)
            bpp.append(n * 8 / (rgb.shape[0] * rgb.shape[1]))
            ps.append(psnr_uint8(rgb, out))
        curve.append({"quality": q, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(ps))})
    return curve


def interpolate(curve: list[dict], bpp: float) -> float | None:
    pts = sorted((c["bpp"], c["psnr"]) for c in curve)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            return p0 + (p1 - p0) * (bpp - b0) / (b1 - b0)
    return None  # outside the measured JPEG range: no comparison


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench kodak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["pqmim-default"])
    ap.add_argument("--kodak", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--out", default=str(RESULTS / "kodak.json"))
    args = ap.parse_args(argv)

    jpeg = jpeg_curve(args.kodak, args.limit)
    rows = []
    for name in args.models:
        codec = Codec.from_pretrained(name)
        res = evaluate_folder(codec, args.kodak, limit=args.limit)
        j = interpolate(jpeg, res["bpp"])
        rows.append({"model": name, **{k: res[k] for k in ("images", "bpp", "psnr", "encode_s", "decode_s", "all_exact")},
                     "jpeg420_psnr_at_same_bpp": j, "per_image": res["rows"]})
    print(f"\nKodak ({rows[0]['images'] if rows else 0} images), mean over images")
    print(f"{'codec':<22} {'bpp':>8} {'PSNR dB':>8} {'JPEG 4:2:0 at same bpp':>24} {'exact':>6}")
    for r in rows:
        j = f"{r['jpeg420_psnr_at_same_bpp']:.2f} dB" if r["jpeg420_psnr_at_same_bpp"] is not None else "out of JPEG's range"
        print(f"{r['model']:<22} {r['bpp']:>8.4f} {r['psnr']:>8.2f} {j:>24} {str(r['all_exact']):>6}")
    print("\nJPEG 4:2:0 (Pillow) curve")
    for c in jpeg:
        print(f"  q={c['quality']:<3} {c['bpp']:.4f} bpp  {c['psnr']:.2f} dB")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
           "machine": f"{platform.machine()} {platform.processor()} x{torch.get_num_threads()} threads",
           "torch": torch.__version__, "kodak": args.kodak, "pqmim": rows, "jpeg420": jpeg}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0
