"""What the masked transformer adds, measured: files that send only the first s of the S coding
steps (`--send-steps`, the rest filled in by the transformer), prefixes of progressive files
(`--progressive`, `decode --partial`), files of a given size (`--max-bytes`), and what JPEG,
WebP and AVIF can do in 200 bytes.

    python -m bench progressive            # Kodak (24), FID on val patches, pictures, plots, README
    python -m bench progressive --quick    # 2 images, two rungs, two steps: the pipeline end to end

Every byte count is a real file's (or a real prefix's) length; every quality figure is measured
on the decoded 8-bit image. A prefix of s steps decodes to the same pixels as the file that
sends s steps (tests/test_progressive.py proves it), so the two share their quality figures and
differ only in bytes. Per-point results are cached in <results>/cache like `bench run`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pqmim import Codec, zoo
from pqmim import format as fmt
from pqmim.checkout import FID_WEIGHTS, KODAK, LPIPS_BACKBONE, VAL
from pqmim.classical import LABELS, decode, encode_at_size
from pqmim.data import list_images
from pqmim.evaluate import LPIPSAlex, psnr_uint8
from pqmim.fileio import atomic_write_json
from pqmim.image import load_image
from pqmim.sizing import best_within

from . import kodak, report
from .progressive_report import markdown, plot, progressive_picture, tiny_picture
from .codecs import Point
from .suite import RESULTS, environment

BUDGETS = (200, 500, 1000, 2000, 5000, 10000)  # bytes, for the target-size table
FID_RUNGS = ("pqmim-q1", "pqmim-q2", "pqmim-q3")  # the low rates, where filling in matters
SCALES = (1, 2, 4, 8, 16, 32)  # a classical codec may shrink the image to fit a tiny budget
README_BEGIN, README_END = "<!-- progressive:begin (python -m bench progressive writes this section) -->", "<!-- progressive:end -->"


def send_points(names: list[str], steps: list[int] | None, seed: int | None = None) -> list[Point]:
    """One point per (model, s): the file that sends the first s steps, decoded."""
    points = []
    for name in names:
        codec = Codec.from_pretrained(name)
        fill = "expected" if seed is None else f"seed{seed}"
        for s in steps if steps is not None else range(1, codec.cfg.steps):

            def run(rgb: np.ndarray, codec=codec, s=s) -> tuple[int, np.ndarray, float, float]:
                t0 = time.perf_counter()
                data = codec.compress(rgb, send_steps=s, seed=seed)
                t1 = time.perf_counter()
                out = np.asarray(codec.decompress(data))
                return len(data), out, t1 - t0, time.perf_counter() - t1

            label = f"{name.removeprefix('pqmim-')} s={s}"
            points.append(
                Point(
                    f"pqmim-send-{fill}",
                    label,
                    f"send-{name}-{codec.model_id.hex()}-s{s}-{fill}",
                    run,
                    {"model": name, "sent": s, "steps": codec.cfg.steps, "fill": fill},
                )
            )
    return points


def prefix_bytes(name: str, files: list[Path], cache_dir: Path) -> dict:
    """Bytes of the progressive file's prefix that decodes s steps, s = 1..S, per image (and at
    index 0, the header alone), and what the progressive table costs over the plain file."""
    codec = Codec.from_pretrained(name)
    cache = cache_dir / f"prefix_{name}-{codec.model_id.hex()}.json"
    if cache.exists():
        r = json.loads(cache.read_text())
        if r["images"] == [p.name for p in files]:
            return r
    rows = []
    for p in tqdm(files, desc=f"{name} progressive", leave=False):
        rgb = load_image(p)
        data = codec.compress(rgb, progressive=True)
        header, payload = fmt.unpack(data)
        head = len(data) - len(payload) - 4
        plain = len(fmt.pack(replace(header, step_bytes=None), payload))  # the same file without the table
        rows.append(
            {
                "image": p.name,
                "pixels": rgb.shape[0] * rgb.shape[1],
                "prefix": [head] + [head + n for n in header.step_bytes],
                "file": len(data),
                "plain": plain,
            }
        )
    r = {
        "model": name,
        "images": [p.name for p in files],
        "rows": rows,
        "prefix_bpp": [float(np.mean([row["prefix"][s] * 8 / row["pixels"] for row in rows])) for s in range(codec.cfg.steps + 1)],
        "table_bytes": float(np.mean([row["file"] - row["plain"] for row in rows])),
    }
    atomic_write_json(cache, r)
    return r


def classical_in(codec: str, rgb: np.ndarray, budget: int) -> dict:
    """The best PSNR a classical codec reaches within `budget` bytes, at full size or shrunk by
    a power of two (Lanczos) and enlarged back (bicubic) as a user of that codec could do; or
    the smallest file it can write, when even the smallest setting of the smallest size is over."""
    h, w = rgb.shape[:2]
    best, smallest = None, None
    for k in SCALES:
        if w // k < 8 or h // k < 8:
            break
        small = np.asarray(Image.fromarray(rgb).resize((w // k, h // k), Image.LANCZOS)) if k > 1 else rgb
        quality, file = encode_at_size(codec, small, budget)
        smallest = len(file) if smallest is None else min(smallest, len(file))
        if len(file) > budget:
            continue
        out = decode(file)
        if k > 1:
            out = np.asarray(Image.fromarray(out).resize((w, h), Image.BICUBIC))
        row = {"codec": codec, "scale": k, "quality": quality, "bytes": len(file), "psnr": psnr_uint8(rgb, out), "image": out}
        if best is None or row["psnr"] > best["psnr"]:
            best = row
    return best or {"codec": codec, "scale": None, "quality": None, "bytes": None, "psnr": None, "image": None, "smallest": smallest}


def target_sizes(files: list[Path], budgets: tuple[int, ...], lpips_fn, cache_dir: Path) -> list[dict]:
    """`--max-bytes N` on every image for each N: bytes used, rung and steps chosen, PSNR, LPIPS."""
    ids = "-".join(Codec.from_pretrained(n).model_id.hex() for n in zoo.quality_levels().values())
    out = []
    for n in budgets:
        cache = cache_dir / f"maxbytes2_{n}-{ids}.json"  # 2: climbing the ladder stops at the first rung that loses
        if cache.exists() and json.loads(cache.read_text())["images"] == [p.name for p in files]:
            out.append(json.loads(cache.read_text()))
            continue
        rows = []
        for p in tqdm(files, desc=f"--max-bytes {n}", leave=False):
            rgb = load_image(p)
            t0 = time.perf_counter()
            best = best_within(rgb, n)
            seconds = time.perf_counter() - t0
            dec = np.asarray(Codec.from_pretrained(best.name).decompress(best.data))
            rows.append(
                {
                    "image": p.name,
                    "bytes": len(best.data),
                    "model": best.name,
                    "sent": best.sent,
                    "psnr": psnr_uint8(rgb, dec),
                    "lpips": lpips_fn(rgb, dec),
                    "encode_s": seconds,
                    "within": len(best.data) <= n,
                }
            )
        r = {
            "budget": n,
            "images": [p.name for p in files],
            "within": sum(r["within"] for r in rows),
            "mean_bytes": float(np.mean([r["bytes"] for r in rows])),
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "lpips": float(np.mean([r["lpips"] for r in rows])),
            "encode_s": float(np.mean([r["encode_s"] for r in rows])),
            "rows": rows,
        }
        atomic_write_json(cache, r)
        out.append(r)
    return out


def tiny_table(files: list[Path], budget: int, lpips_fn, codecs=("jpeg420", "webp", "avif")) -> dict:
    """Each classical codec's best within `budget` bytes on every image (see classical_in)."""
    out = {}
    for c in codecs:
        rows = []
        for p in tqdm(files, desc=f"{LABELS[c]} in {budget} B", leave=False):
            rgb = load_image(p)
            r = classical_in(c, rgb, budget)
            im = r.pop("image")
            rows.append({"image": p.name, **r, "lpips": None if im is None else lpips_fn(rgb, im)})
        ok = [r for r in rows if r["bytes"] is not None]
        out[c] = {
            "codec": c,
            "fits": len(ok),
            "images": len(rows),
            "psnr": float(np.mean([r["psnr"] for r in ok])) if ok else None,
            "lpips": float(np.mean([r["lpips"] for r in ok])) if ok else None,
            "mean_bytes": float(np.mean([r["bytes"] for r in ok])) if ok else None,
            "smallest": min((r["smallest"] for r in rows if r["bytes"] is None), default=None),
            "scales": sorted({r["scale"] for r in ok}),
            "rows": rows,
        }
    return out


def fill_ablation(files: list[Path], names: list[str], steps: list[int], lpips_fn) -> list[dict]:
    """Why fill 0 synthesises expected code words: the same files (fill 0) decoded from their
    expected code words (what `decompress` does) and from the most likely codes themselves
    (the codes `read_codes` returns, through `decode_image`)."""
    rows = []
    for name in names:
        codec = Codec.from_pretrained(name)
        for s in steps:
            r = {"model": name, "sent": s, "expected_psnr": [], "likely_psnr": [], "expected_lpips": [], "likely_lpips": []}
            for p in tqdm(files, desc=f"{name} s={s} fills", leave=False):
                rgb = load_image(p)
                data = codec.compress(rgb, send_steps=s)
                header, codes = codec.read_codes(data)
                for kind, out in (
                    ("expected", np.asarray(codec.decompress(data))),
                    ("likely", np.asarray(codec.decode_image(codes, header.width, header.height))),
                ):
                    r[f"{kind}_psnr"].append(psnr_uint8(rgb, out))
                    r[f"{kind}_lpips"].append(lpips_fn(rgb, out))
            rows.append({k: float(np.mean(v)) if isinstance(v, list) else v for k, v in r.items()} | {"images": [p.name for p in files]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench progressive", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 Kodak and 2 val images, q1 and q3, steps 1 and 4, budgets 200 and 2000")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--val", default=str(VAL))
    ap.add_argument("--fid-weights", default=str(FID_WEIGHTS))
    ap.add_argument("--fid-images", type=int, default=12, help="val images for FID/KID (as `bench run`'s default on a CPU)")
    ap.add_argument("--no-fid", action="store_true")
    ap.add_argument(
        "--fid-models", nargs="+", default=None, help=f"rungs whose send-steps files get FID/KID (default: {' '.join(FID_RUNGS)})"
    )
    ap.add_argument("--fid-steps", nargs="+", type=int, default=list(range(1, 8)), help="steps sent for FID/KID (default: 1 to 7)")
    ap.add_argument(
        "--parts",
        nargs="*",
        default=["send", "prefix", "max_bytes", "tiny", "fill", "fid", "pictures"],
        help="what to measure (default: all; none: only redraw the plots and the README from the JSON)",
    )
    ap.add_argument(
        "--models", nargs="+", default=None, help="pqmim models for the send-steps and prefix curves (default: every shipped rung)"
    )
    ap.add_argument("--readme", default=None, help="README to update (default: the project's for a full run)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = Path(args.results)
    cache = out / "cache"
    files = list_images(args.kodak)[: 2 if args.quick else None]
    names = list(zoo.quality_levels().values())
    if args.quick:
        names = [zoo.model_for_quality(1), zoo.DEFAULT_MODEL]
    names = args.models or names
    steps = [1, 4] if args.quick else None
    budgets = (200, 2000) if args.quick else BUDGETS
    lpips_fn = LPIPSAlex(LPIPS_BACKBONE)
    path = out / ("progressive_quick.json" if args.quick else "progressive.json")
    new: dict = {**environment(args.threads), "kodak": str(args.kodak), "images": len(files)}
    if "send" in args.parts:
        new["send"] = [
            {k: v for k, v in kodak.measure_point(p, files, lpips_fn, cache).items() if k != "rows"} for p in send_points(names, steps)
        ]
    if "prefix" in args.parts:
        new["prefix"] = [{k: v for k, v in prefix_bytes(n, files, cache).items() if k != "rows"} for n in names]
    if "max_bytes" in args.parts:
        new["max_bytes"] = target_sizes(files, budgets, lpips_fn, cache)
    if "tiny" in args.parts:
        new["tiny"] = {"budget": 200, "codecs": tiny_table(files, 200, lpips_fn)}
    if "fid" in args.parts and not args.no_fid:
        from . import fid

        rungs = [n for n in names if n in (args.fid_models or FID_RUNGS)]
        sent = [1, 4] if args.quick else args.fid_steps
        pts = send_points(rungs, sent) + send_points(rungs, sent, seed=0)
        measured = fid.measure(pts, args.val, args.fid_weights, cache, limit=2 if args.quick else args.fid_images)
        new["fid"] = [{**measured[p.key], "model": p.meta["model"], "sent": p.meta["sent"]} for p in pts]
    if "fill" in args.parts:
        pick = files if args.quick else [Path(args.kodak) / f"kodim{i:02d}.png" for i in (1, 5, 15, 23)]
        new["fill"] = fill_ablation(
            pick,
            names[:1] if args.quick else [zoo.model_for_quality(1), zoo.DEFAULT_MODEL],
            [1, 4] if args.quick else [1, 3, 5, 7],
            lpips_fn,
        )
    if "pictures" in args.parts:
        image = files[-1] if args.quick else Path(args.kodak) / "kodim23.png"
        progressive_picture(image, zoo.DEFAULT_MODEL, out / ("progressive_quick.png" if args.quick else "progressive.png"))
        new["tiny_picture"] = tiny_picture(image, (200, 1000), out / ("tiny_quick.png" if args.quick else "tiny.png"))
    # parts may be measured by separate runs at once: merge into what is there when writing
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update(new)
    atomic_write_json(path, res)
    if all(k in res for k in ("send", "prefix", "max_bytes", "tiny")):
        kod_path, fid_path = out / "kodak.json", out / "fid.json"
        plot(
            res,
            json.loads(kod_path.read_text()) if kod_path.exists() else None,
            json.loads(fid_path.read_text()) if fid_path.exists() else None,
            out,
        )
        md = markdown(res, "python -m bench progressive" + (" --quick" if args.quick else ""))
        readme = args.readme or (None if args.quick else Path(__file__).resolve().parents[1] / "README.md")
        if readme:
            report.update_readme(Path(readme), md, README_BEGIN, README_END)
        print(md)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
