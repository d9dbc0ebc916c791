"""Encode/decode time and peak memory with a shipped model, beside WebP and AVIF.

    python -m bench speed [--model pqmim-q3] [--image ../shared/data/kodak/kodim01.png]
    python -m bench speed --megapixels 1 4 16 --threads 2     # large images: the README table
    python -m bench speed --arithmetic integer float64        # also files in float64 arithmetic (--compat)
    python -m bench speed --perceptual                        # also decoding with --perceptual (q1-q3)

Default: the image at its size (Kodak, 768x512) and downscaled to 480x320 (Lanczos). For each,
pqmim encodes and decodes in fresh processes (so peak RSS is that of one encode or one
decode, model loading included); times are the median of --repeat runs inside that process,
after one warm-up, with the model already loaded (large images: one run, no warm-up). WebP and
AVIF (Pillow, the settings of the rate-distortion bench: pqmim.classical) are timed in this
process at the quality whose file is the largest not above pqmim's, median of --repeat runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pqmim.checkout import KODAK
from pqmim.fileio import atomic_write_json

DEFAULT_IMAGE = KODAK / "kodim01.png"


def worker(
    model: str,
    image: str,
    what: str,
    repeat: int,
    threads: int,
    pqm: str,
    device: str = "cpu",
    transforms: str = "auto",
    arithmetic: str = "integer",
) -> dict:
    """One process, one job: encode `image` into `pqm`, or decode `pqm` (made by an encode run),
    with the default decoder ("decode") or the perceptual one ("decode-perceptual"). Its start
    (torch and pqmim imported, the model and any perceptual decoder loaded) is timed apart: a
    command pays it once per run."""
    start = time.perf_counter()
    import torch

    from pqmim import Codec

    torch.set_num_threads(threads)
    codec = Codec.from_pretrained(model, device=device, transforms=transforms)
    if what == "decode-perceptual":
        codec.perceptual_decoder()
    start_s = time.perf_counter() - start
    times = []
    for i in range(repeat + (1 if repeat > 1 else 0)):  # one warm-up when the median is of several
        t = time.perf_counter()
        if what == "encode":
            data = codec.compress(image, arithmetic=arithmetic)
        else:
            codec.decompress(Path(pqm).read_bytes(), perceptual=what == "decode-perceptual")
        if repeat == 1 or i > 0:
            times.append(time.perf_counter() - t)
    if what == "encode":
        Path(pqm).write_bytes(data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "what": what,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "start_s": start_s,
        "peak_rss_mb": peak_mb,
        "bytes": Path(pqm).stat().st_size,
        "threads": threads,
        "transforms": str(codec.transform_dtype).removeprefix("torch."),
        "arithmetic": arithmetic,
    }


def measure(
    model: str,
    image: str,
    repeat: int,
    threads: int,
    device: str = "cpu",
    transforms: str = "auto",
    arithmetic: str = "integer",
    perceptual: bool = False,
) -> list[dict]:
    """Encode then decode `image` (and decode it with the perceptual decoder), each in a fresh
    process (so peak RSS is that job's alone)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pqm = str(Path(tmp) / "out.pqm")
        for what in ("encode", "decode") + ("decode-perceptual",) * perceptual:
            cmd = [
                sys.executable,
                "-m",
                "bench",
                "speed",
                "--model",
                model,
                "--image",
                image,
                "--repeat",
                str(repeat),
                "--device",
                device,
                "--transforms",
                transforms,
                "--arithmetic",
                arithmetic,
                "--worker",
                what,
                str(threads),
                pqm,
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if r.returncode:
                raise RuntimeError(f"{what} worker failed:\n{r.stderr}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def mosaic(width: int, height: int, path: Path) -> None:
    """A photo-like test image of any size: Kodak photos side by side (mirrored at the seams)."""
    import numpy as np
    from PIL import Image

    photos = sorted(DEFAULT_IMAGE.parent.glob("kodim*.png"))
    out = np.empty((height, width, 3), dtype=np.uint8)
    i = 0
    for y in range(0, height, 512):
        for x in range(0, width, 768):
            with Image.open(photos[i % len(photos)]) as im:
                tile = np.asarray(im.convert("RGB").resize((768, 512)) if im.size != (768, 512) else im.convert("RGB"))
            if i % 2:
                tile = tile[:, ::-1]
            out[y : y + 512, x : x + 768] = tile[: height - y, : width - x]
            i += 1
    Image.fromarray(out).save(path)


def large(
    model: str, megapixels: list[int], threads: int, repeat: int, device: str = "cpu", transforms: str = "auto", perceptual: bool = False
) -> list[dict]:
    """Time and peak memory of square photo-like images of the given megapixels (and of decoding
    them with the perceptual decoder)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in megapixels:
            side = int(round((mp * 2**20) ** 0.5))
            path = Path(tmp) / f"mosaic{mp}.png"
            mosaic(side, side, path)
            enc, dec, *rich = measure(model, str(path), repeat, threads, device, transforms, perceptual=perceptual)
            rows.append(
                {
                    "megapixels": mp,
                    "transforms": enc["transforms"],
                    "side": side,
                    "bytes": enc["bytes"],
                    "encode_s": enc["median_s"],
                    "decode_s": dec["median_s"],
                    "encode_peak_mb": enc["peak_rss_mb"],
                    "decode_peak_mb": dec["peak_rss_mb"],
                    "threads": threads,
                }
                | ({"perceptual_decode_s": rich[0]["median_s"], "perceptual_decode_peak_mb": rich[0]["peak_rss_mb"]} if rich else {})
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def classical_rows(image: str, pqm_bytes: int, repeat: int) -> list[dict]:
    """WebP and AVIF at the highest quality whose file is at most pqmim's: median times."""
    import numpy as np
    from PIL import Image

    from pqmim import classical

    with Image.open(image) as im:
        rgb = np.asarray(im.convert("RGB"))
    rows = []
    for codec in ("webp", "avif"):
        if not classical.available(codec):
            rows.append({"codec": codec, "skipped": "this Pillow cannot write it"})
            continue
        quality, data = classical.encode_at_size(codec, rgb, pqm_bytes)
        enc, dec = [], []
        for _ in range(repeat + 1):  # the first run is a warm-up
            t = time.perf_counter()
            classical.encode(codec, rgb, quality)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            classical.decode(data)
            dec.append(time.perf_counter() - t)
        rows.append(
            {
                "codec": codec,
                "quality": quality,
                "bytes": len(data),
                "over_budget": len(data) > pqm_bytes,
                "encode_s": statistics.median(enc[1:]),
                "decode_s": statistics.median(dec[1:]),
            }
        )
    return rows


def downscaled(image: str, width: int, height: int, folder: Path) -> str:
    from PIL import Image

    path = folder / f"{Path(image).stem}_{width}x{height}.png"
    with Image.open(image) as im:
        im.convert("RGB").resize((width, height), Image.LANCZOS).save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="shipped model name (default: the default model)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--small", default="480x320", help="also time the image downscaled to this size ('' for none)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument(
        "--megapixels", type=int, nargs="+", help="instead of --image: square Kodak mosaics of these sizes (e.g. 1 4 16), timed once each"
    )
    ap.add_argument("--device", default="cpu", help="where pqmim's networks run: cpu, or cuda (files decode on the CPU either way)")
    ap.add_argument(
        "--transforms",
        nargs="+",
        default=["auto"],
        choices=["auto", "float32", "bfloat16"],
        help="pqmim's transform precision(s) to time (auto: bfloat16 where the CPU has it natively)",
    )
    ap.add_argument(
        "--arithmetic",
        nargs="+",
        default=["integer"],
        choices=["integer", "float64"],
        help="the entropy model's arithmetic(s) to time: integer (files of version 4/5, the default) or float64 (version 2/3, --compat)",
    )
    ap.add_argument("--perceptual", action="store_true", help="also time decoding with the perceptual decoder (models that have one)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--worker", nargs=3, metavar=("WHAT", "THREADS", "PQM"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        job = worker(
            args.model,
            args.image,
            args.worker[0],
            args.repeat,
            int(args.worker[1]),
            args.worker[2],
            args.device,
            args.transforms[0],
            args.arithmetic[0],
        )
        print(json.dumps(job))
        return 0
    if args.megapixels:
        repeat = 1 if args.repeat == 5 else args.repeat
        rows = [
            r for t in args.transforms for r in large(args.model, args.megapixels, args.threads[0], repeat, args.device, t, args.perceptual)
        ]
        rich = args.perceptual and "perceptual_decode_s" in rows[0]
        print(f"{args.model}, {rows[0]['threads']} threads, photo-like Kodak mosaics, each job in a fresh process")
        print(
            "| megapixels | size | transforms | encode (s) | decode (s) | encode s per MP | decode s per MP | encode peak RSS (MB) | decode peak RSS (MB) |"
            + (" decode --perceptual (s) | its peak RSS (MB) |" if rich else "")
            + "\n|---|---|---|---|---|---|---|---|---|"
            + ("---|---|" if rich else "")
        )
        for r in rows:
            mp = r["side"] ** 2 / 2**20
            print(
                f"| {r['megapixels']} | {r['side']}x{r['side']} | {r['transforms']} | {r['encode_s']:.1f} | {r['decode_s']:.1f} | "
                f"{r['encode_s'] / mp:.2f} | {r['decode_s'] / mp:.2f} | {r['encode_peak_mb']:.0f} | {r['decode_peak_mb']:.0f} |"
                + (f" {r['perceptual_decode_s']:.1f} | {r['perceptual_decode_peak_mb']:.0f} |" if rich else "")
            )
    else:
        from PIL import Image

        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            images = [args.image]
            if args.small:
                w, h = (int(v) for v in args.small.split("x"))
                images.append(downscaled(args.image, w, h, Path(tmp)))
            for image in images:
                with Image.open(image) as im:
                    size = f"{im.width}x{im.height}"
                pq = {}
                for arithmetic, transforms, threads in itertools.product(args.arithmetic, args.transforms, args.threads):
                    enc, *decs = measure(args.model, image, args.repeat, threads, args.device, transforms, arithmetic, args.perceptual)
                    pq.setdefault(threads, enc["bytes"])
                    for dec in decs:
                        rows.append(
                            {
                                "image": size,
                                "codec": f"pqmim {args.model} {enc['transforms']}"
                                + ("" if arithmetic == "integer" else f", {arithmetic} entropy model")
                                + ("" if args.device == "cpu" else f" ({args.device})")
                                + (", decoded --perceptual" if dec["what"] == "decode-perceptual" else ""),
                                "arithmetic": arithmetic,
                                "threads": threads,
                                "bytes": enc["bytes"],
                                "encode_s": enc["median_s"],
                                "decode_s": dec["median_s"],
                                "encode_peak_mb": enc["peak_rss_mb"],
                                "decode_peak_mb": dec["peak_rss_mb"],
                                "decode_start_s": dec["start_s"],
                            }
                        )
                for r in classical_rows(image, pq[args.threads[0]], args.repeat):
                    rows.append({"image": size, "threads": "-", **r})
        print(f"{Path(args.image).name}, median of {args.repeat} runs; WebP and AVIF at the largest file not above pqmim's")
        print(
            "| image | codec | threads | bytes | encode (s) | decode (s) | encode peak RSS (MB) | decode peak RSS (MB) | decoder's start (s) |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        for r in rows:
            if "skipped" in r:
                print(f"| {r['image']} | {r['codec']} | | | {r['skipped']} | | | | |")
                continue
            label = (
                r["codec"]
                if r["codec"].startswith("pqmim")
                else f"{r['codec']} q={r['quality']}" + (" (its smallest file: larger than pqmim's)" if r["over_budget"] else "")
            )
            peaks = f"{r['encode_peak_mb']:.0f} | {r['decode_peak_mb']:.0f} | {r['decode_start_s']:.2f}" if "encode_peak_mb" in r else "| |"
            print(f"| {r['image']} | {label} | {r['threads']} | {r['bytes']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | {peaks} |")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
