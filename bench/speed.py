"""Encode/decode time and peak memory of a 768x512 Kodak image with a shipped model.

    python -m bench speed [--model pqmim-q3] [--image ../shared/data/kodak/kodim01.png]

Each measurement runs in a fresh process (so peak RSS is that of one encode or one decode,
model loading included); times are the median of --repeat runs inside that process, after
one warm-up, with the model already loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak" / "kodim01.png"


def worker(model: str, image: str, what: str, repeat: int, threads: int) -> dict:
    import torch

    from pqmim import Codec

    torch.set_num_threads(threads)
    codec = Codec.from_pretrained(model)
    data = codec.compress(image)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        if what == "encode":
            codec.compress(image)
        else:
            codec.decompress(data)
        times.append(time.perf_counter() - t)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"what": what, "median_s": statistics.median(times), "min_s": min(times), "peak_rss_mb": peak_mb, "bytes": len(data), "threads": threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="shipped model name (default: the default model)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--worker", nargs=2, metavar=("WHAT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.model, args.image, args.worker[0], args.repeat, int(args.worker[1]))))
        return 0
    rows = []
    for threads in args.threads:
        for what in ("encode", "decode"):
            cmd = [sys.executable, "-m", "bench", "speed", "--model", args.model, "--image", args.image, "--repeat", str(args.repeat), "--worker", what, str(threads)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    from PIL import Image

    w, h = Image.open(args.image).size
    print(f"{args.model} on {Path(args.image).name} ({w}x{h}), median of {args.repeat} runs")
    print(f"| threads | step | time (s) | peak RSS (MB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['what']} | {r['median_s']:.3f} | {r['peak_rss_mb']:.0f} |")
    return 0
