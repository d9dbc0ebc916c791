"""FID/KID of classical codecs at chosen quality settings, on the bench's FID set.

    python -m bench.classical_at avif:13 avif:15 avif:17 webp:2

`python -m bench run` measures FID only at the classical settings nearest pqmim's rates; this
measures any other setting the same way (the 12 val images spread as the bench spreads them,
HiFiC's 256x256 patches, the cache in bench/results/cache), for a comparison at a given rate,
e.g. issue 14's "at 0.1 bpp".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pqmim.checkout import FID_WEIGHTS, VAL

from .classical import LABELS
from .codecs import classical_point
from .fid import measure

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.classical_at", description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="CODEC:QUALITY, codec one of " + ", ".join(LABELS))
    ap.add_argument("--images", type=int, default=12, help="val images (the bench's default FID set)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    points = []
    for s in args.settings:
        codec, _, q = s.partition(":")
        if codec not in LABELS or not q.isdigit():
            ap.error(f"bad setting {s!r}: want CODEC:QUALITY")
        points.append(classical_point(codec, int(q)))
    results = measure(points, VAL, FID_WEIGHTS, RESULTS / "cache", limit=args.images, progress=False)
    print("| codec | setting | bpp | FID | KID x 1000 | patches |\n|---|---|---|---|---|---|")
    for p in points:
        r = results[p.key]
        print(f"| {LABELS[p.codec]} | {p.label} | {r['bpp']:.4f} | {r['fid']:.1f} | {r['kid'] * 1000:.1f} | {r['patches']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
