"""Kodak rate-distortion of the pqmim ladder against JPEG, WebP and AVIF, all in one run.

    python -m bench kodak [--models pqmim-q1 ...] [--codecs jpeg420 webp avif] [--limit N]

Every rate is a real file's size (bytes x 8 / pixels); PSNR (RGB) and MS-SSIM are measured on the
decoded 8-bit image; all are averaged over images. Writes bench/results/kodak.json (raw numbers,
per image for pqmim) and bench/results/kodak_psnr.png, kodak_msssim.png (the RD plots).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from tqdm import tqdm

from pqmim import Codec, zoo
from pqmim.data import list_images
from pqmim.evaluate import evaluate_folder, ms_ssim_uint8, psnr_uint8
from pqmim.image import load_image

from .classical import LABELS, QUALITIES, available, roundtrip

RESULTS = Path(__file__).resolve().parent / "results"
KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def classical_curve(codec: str, images: list[np.ndarray], qualities: list[int]) -> list[dict]:
    """Mean bpp / PSNR / MS-SSIM / seconds per image at each quality setting."""
    curve = []
    for q in tqdm(qualities, desc=LABELS[codec], leave=False):
        rows = []
        for rgb in images:
            t = time.perf_counter()
            n, out = roundtrip(codec, rgb, q)
            rows.append((n * 8 / (rgb.shape[0] * rgb.shape[1]), psnr_uint8(rgb, out), ms_ssim_uint8(rgb, out), time.perf_counter() - t))
        bpp, ps, ms, sec = zip(*rows)
        curve.append({"quality": q, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(ps)),
                      "ms_ssim": None if None in ms else float(np.mean(ms)), "roundtrip_s": float(np.mean(sec))})
    return curve


def interpolate(curve: list[dict], bpp: float, key: str = "psnr") -> float | None:
    """A curve's quality at a rate, linear between the two points that bracket it (None outside)."""
    pts = sorted((c["bpp"], c[key]) for c in curve)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            return p0 + (p1 - p0) * (bpp - b0) / (b1 - b0)
    return None


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def plot(res: dict, key: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    pq = [r for r in res["pqmim"] if r.get(key) is not None]
    ax.plot([r["bpp"] for r in pq], [r[key] for r in pq], "o-", color="black", lw=2.2, label="pqmim (ladder)", zorder=5)
    for r in pq:
        ax.annotate(r["model"].replace("pqmim-", ""), (r["bpp"], r[key]), textcoords="offset points", xytext=(4, -11), fontsize=8, color="black")
    for i, (codec, curve) in enumerate(res["classical"].items()):
        pts = [c for c in curve if c.get(key) is not None and 0.03 <= c["bpp"] <= 2.5]
        ax.plot([c["bpp"] for c in pts], [c[key] for c in pts], ".--", color=f"C{i}", label=f"{LABELS[codec]} (Pillow)")
    ax.set_xscale("log")
    ax.set_xticks([0.05, 0.1, 0.2, 0.5, 1, 2], ["0.05", "0.1", "0.2", "0.5", "1", "2"])
    ax.set_xlabel("bits per pixel (real file sizes)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Kodak ({res['images']} images), mean over images")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(res: dict, out: Path) -> None:
    plot(res, "psnr", "PSNR (dB, RGB)", out.with_name(out.stem + "_psnr.png"))
    plot(res, "ms_ssim", "MS-SSIM", out.with_name(out.stem + "_msssim.png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench kodak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="pqmim models (default: every quality level shipped)")
    ap.add_argument("--codecs", nargs="*", default=list(QUALITIES), help=f"classical codecs, of {list(QUALITIES)}")
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--out", default=str(RESULTS / "kodak.json"), help="results JSON; the plots go beside it")
    ap.add_argument("--replot", action="store_true", help="only redraw the plots from the results JSON")
    args = ap.parse_args(argv)

    if args.replot:
        res = json.loads(Path(args.out).read_text())
        write_plots(res, Path(args.out))
        return 0
    models = args.models or list(zoo.quality_levels().values())
    images = [load_image(p) for p in list_images(args.kodak)[: args.limit]]
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
           "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} torch threads",
           "versions": {"torch": torch.__version__, "pillow": PIL.__version__}, "kodak": args.kodak, "images": len(images),
           "pqmim": [], "classical": {}}
    for name in models:
        codec = Codec.from_pretrained(name)
        r = evaluate_folder(codec, args.kodak, limit=args.limit)
        res["pqmim"].append({"model": name, "model_id": codec.model_id.hex(), "config": codec.cfg.to_dict(),
                             **{k: r[k] for k in ("images", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "all_exact")},
                             "per_image": r["rows"]})
    for c in args.codecs:
        if not available(c):
            print(f"skipping {LABELS[c]}: this Pillow build cannot write it")
            continue
        res["classical"][c] = classical_curve(c, images, QUALITIES[c])

    print(f"\nKodak ({len(images)} images), mean over images")
    names = list(res["classical"])
    print(f"{'codec':<10} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>7} {'enc s':>6} {'dec s':>6} {'exact':>5}  " + "  ".join(f"{LABELS[c]:>10}" for c in names))
    for r in res["pqmim"]:
        same = [interpolate(res["classical"][c], r["bpp"]) for c in names]
        ms = f"{r['ms_ssim']:.4f}" if r["ms_ssim"] is not None else "-"
        print(f"{r['model']:<10} {r['bpp']:>7.4f} {r['psnr']:>6.2f} {ms:>7} {r['encode_s']:>6.2f} {r['decode_s']:>6.2f} {str(r['all_exact']):>5}  "
              + "  ".join(f"{s:>7.2f} dB" if s is not None else f"{'(range)':>10}" for s in same))
    print("(right: each classical codec's PSNR at the same bpp, interpolated; '(range)' = outside its measured range)")
    for c, curve in res["classical"].items():
        print(f"\n{LABELS[c]}: " + ", ".join(f"q{p['quality']} {p['bpp']:.3f}/{p['psnr']:.2f}" for p in curve))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    write_plots(res, out)
    print(f"\nwrote {out} and its plots")
    return 0
