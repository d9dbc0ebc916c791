"""Does a file decode exactly elsewhere? Round trips across thread counts, the integer
arithmetic's checks (pqmim/entropy/exact.py), and the margin analysis behind the float64
arithmetic's deterministic probabilities (pqmim/entropy/pmf.py).

    python -m bench exactness [--model default] [--enc-threads 2 --dec-threads 1]

For every Kodak image: encode with --enc-threads, decode with --dec-threads, compare the codes
(files in integer arithmetic, the default). With the encoder's codes as context: the integer
logits again with every exact product computed as a float64 matrix product (as on a GPU) and
one thread (they must be the same bits), and the information (bits) of the codes under the
integer and the float64 tables (what the integer arithmetic costs in rate).
Then, for the float64 arithmetic of versions 2 and 3, compute every logit the coder uses along two more
arithmetic paths and compare with the coder's own (read from its replay: pieces of windows,
single-threaded ops, last layer on the coded rows only):
  - float64, all windows of the image in one batch with full rows and the process's threads:
    other matrix shapes, so other kernels and summation orders, as on another machine (for a
    block-causal model: the training path, both streams under a mask, instead of the cache);
  - float32, the same batch: what a decoder running the model in float32 would compute.
For each it reports the largest logit difference and how many snapped logits (the integers the
probability tables are built from) differ. Writes bench/results/exactness.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pqmim import Codec
from pqmim.data import list_images
from pqmim.entropy import exact, pmf
from pqmim.entropy.replay import CodingPass, Layout, Where
from pqmim.entropy.schedule import reveal_groups

from pqmim.fileio import atomic_write_json
from pqmim.checkout import KODAK

from .suite import RESULTS, environment


class _Observe(CodingPass):
    """Replays the encoder's codes, as the encoder does, keeping the coder's own float64 logits."""

    wants_logits = True

    def __init__(self, padded: torch.Tensor) -> None:
        self.padded, self.calls = padded, []

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        return Layout.symbols(self.padded, where)

    def logits(self, step: int, logits: torch.Tensor, where: Where) -> None:
        self.calls.append((step, logits, where))


@torch.no_grad()
def logit_paths(codec: Codec, codes: torch.Tensor) -> dict[str, float]:
    """Compare the coder's float64 logits (its own replay) with a batched float64 and a batched
    float32 path. For a block-causal model the batched paths are the training path
    (`two_stream`: both streams of every window at once, under an attention mask), not the
    coder's cached one."""
    cfg, coder = codec.cfg, codec.coder
    W, m = cfg.window, cfg.m
    layout = coder.layout(codes.shape[1], codes.shape[2])
    padded = layout.pad(codes)
    seen = _Observe(padded)
    coder.replayer.run(layout, seen, arithmetic="float64")
    padded, valid = padded.view(-1, m, W, W), layout.valid()
    step_of = torch.full((len(layout.boxes), W * W), cfg.steps)  # each position's coding step
    for t, (_, _, hh, ww) in enumerate(layout.boxes):
        for s, g in enumerate(reveal_groups(hh, ww, W, cfg.steps, cfg.alpha)):
            step_of[t, torch.from_numpy(g)] = s
    step_of = step_of.view(-1, W, W)
    f32 = copy.deepcopy(coder.entropy).float()
    stats = {"logits": 0, "max_diff_f64": 0.0, "max_diff_f32": 0.0, "snap_diff_f64": 0, "snap_diff_f32": 0, "min_margin": np.inf}
    if cfg.causal:
        full64 = coder.entropy.two_stream(padded, step_of, valid)  # (windows, W*W, m, k)
        full32 = f32.two_stream(padded, step_of, valid).double()
    current = None
    for s, own, where in seen.calls:
        if not cfg.causal and s != current:  # the whole image's windows, given the steps before s
            visible = valid & (step_of < s)
            full64 = coder.entropy(padded, visible, valid)  # (windows, W*W, m, k)
            full32 = f32(padded, visible, valid).double()
            current = s
        snap = pmf.snap(own)
        stats["logits"] += own.numel()
        stats["min_margin"] = min(stats["min_margin"], pmf.margin(own, 0))
        for name, full in (("f64", full64), ("f32", full32)):
            other = torch.cat([full[t, torch.from_numpy(g)].reshape(-1, cfg.k) for t, g in where])
            stats[f"max_diff_{name}"] = max(stats[f"max_diff_{name}"], float((own - other).abs().max()))
            stats[f"snap_diff_{name}"] += int((pmf.snap(other) != snap).sum())
    return stats


@torch.no_grad()
def integer_checks(codec: Codec, codes: torch.Tensor, threads: int) -> dict[str, float]:
    """Integer logits of the coder (its threads, int8 and float32 kernels) against the same with
    float64 matrix products and one thread (differing logits: must be 0), and the codes'
    information under the integer and the float64 tables."""
    layout = codec.coder.layout(codes.shape[1], codes.shape[2])
    runs = {}
    for name, float64_products, n, arithmetic in (
        ("int", False, threads, "integer"),
        ("ref", True, 1, "integer"),
        ("f64", False, threads, "float64"),
    ):
        seen = _Observe(layout.pad(codes))
        torch.set_num_threads(n)
        exact.FLOAT64_PRODUCTS = float64_products
        try:
            codec.coder.replayer.run(layout, seen, arithmetic=arithmetic)
        finally:
            exact.FLOAT64_PRODUCTS = False
        runs[name] = (torch.cat([lg for _, lg, _ in seen.calls]), codec.coder.information_bits(codes, arithmetic=arithmetic))
    torch.set_num_threads(threads)
    return {
        "integer_logits_differing": int((runs["int"][0] != runs["ref"][0]).sum()),
        "bits_integer": runs["int"][1],
        "bits_float64": runs["f64"][1],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench exactness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="shipped model (default: the default model)")
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--images", type=int, default=None, help="only the first N images")
    ap.add_argument("--enc-threads", type=int, default=2)
    ap.add_argument("--dec-threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "exactness.json"))
    args = ap.parse_args(argv)

    from PIL import Image

    codec = Codec.from_pretrained(args.model)
    images = list_images(args.kodak)[: args.images]
    rows, totals = (
        [],
        {"logits": 0, "snap_diff_f64": 0, "snap_diff_f32": 0, "integer_logits_differing": 0, "bits_integer": 0.0, "bits_float64": 0.0},
    )
    for path in tqdm(images, desc=f"exactness {codec.name}"):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        torch.set_num_threads(args.enc_threads)
        chosen = codec.encode_codes([rgb])[0]
        t0 = time.perf_counter()
        data = codec.compress(rgb)
        enc_s = time.perf_counter() - t0
        torch.set_num_threads(args.dec_threads)
        header, decoded = codec.read_codes(data)
        exact = bool(torch.equal(decoded, chosen))
        torch.set_num_threads(args.enc_threads)
        st = logit_paths(codec, chosen)
        st.update(integer_checks(codec, chosen, args.enc_threads))
        for k in totals:
            totals[k] += st[k]
        rows.append({"image": path.name, "bytes": len(data), "exact": exact, "grid_shift": header.shift, "encode_s": enc_s, **st})
    summary = {
        "model": codec.name,
        "images": len(rows),
        "exact_roundtrips": sum(r["exact"] for r in rows),
        "enc_threads": args.enc_threads,
        "dec_threads": args.dec_threads,
        "grid_shifts_used": {str(s): sum(r["grid_shift"] == s for r in rows) for s in range(pmf.GRID_SHIFTS)},
        "margin_nats": pmf.MARGIN,
        "smallest_margin_seen": min(r["min_margin"] for r in rows),
        "max_logit_diff_f64_batched": max(r["max_diff_f64"] for r in rows),
        "max_logit_diff_f32_batched": max(r["max_diff_f32"] for r in rows),
        **totals,
        "integer_rate_vs_float64": totals["bits_integer"] / totals["bits_float64"] - 1,
        **environment(args.enc_threads),
        "per_image": rows,
    }
    atomic_write_json(Path(args.out), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=1))
    return 0 if summary["exact_roundtrips"] == len(rows) else 1
