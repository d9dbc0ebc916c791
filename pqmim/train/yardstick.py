"""The training yardstick: score stage-1 runs made on the same short budget, so that recipes can
be compared at equal compute (models/TRAINING.md, "The yardstick").

    python -m pqmim train --out runs/yard/A --stages 1 --stage1-plan '{"minutes": 25}' --threads 1
    python -m pqmim.train.yardstick runs/yard/A runs/yard/B ... [--json runs/yard/table.json]

A trial is an ordinary `pqmim train` run of stage 1 with a time budget (the learning rate decays
over the minutes and the stage ends when they are spent), one torch thread, and only the recipe
changed. Each is scored on what predicts the shipped model's Kodak figures without the hour a
stage 2 costs:

- val PSNR: the quantized autoencoder on the 16 central 256x256 crops of the val photos (the
  figure the run logs);
- Kodak PSNR: the 24 Kodak images through the quantized autoencoder in float32 (the codes are
  what a file holds, so this is the PSNR a model with this stage 1 gets, whatever its entropy
  model; the codec's bfloat16 transforms, on CPUs that have them, differ by ~0.0004 dB);
- Kodak PSNR unquantized: the same images through encoder and decoder with no quantizer between
  them: the transform's ceiling, so that the gap to the quantized figure shows whether the
  networks or the quantizer hold a recipe back;
- rate bound: the empirical entropy of each sub-codebook's codes over Kodak, summed over the m
  sub-codebooks, per pixel. An entropy model only lowers it (the shipped q3: 0.181 bpp coded
  against its bound), and for one (m, k) it ranks the trials' rates.

Trials compared in one table must run on the same machine in the same session (its speed varies
between sessions), two at a time on the two cores, so each has its own core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..checkout import KODAK
from ..config import ModelConfig
from ..data import list_images, load_rgb
from ..evaluate import psnr_uint8
from ..fileio import atomic_write_json
from ..image import to_tensor, to_uint8
from ..models import PQMIM
from .loop import load_ckpt, read_json


def code_entropy_bits(codes: list[torch.Tensor], k: int) -> float:
    """Sum over sub-codebooks of the empirical entropy (bits) of their codes: codes (m, h, w) per
    image, pooled over the images."""
    flat = torch.cat([c.reshape(c.shape[0], -1) for c in codes], 1)  # (m, positions)
    bits = 0.0
    for row in flat:
        p = torch.bincount(row, minlength=k).double()
        p = p[p > 0] / p.sum()
        bits += float(-(p * p.log2()).sum())
    return bits


def last_validation(run: Path) -> tuple[float | None, int, float]:
    """The run's last logged val PSNR, its iteration count and wall seconds (metrics.jsonl)."""
    psnr, iteration, wall = None, 0, 0.0
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if row.get("stage") != "stage1":
            continue
        iteration, wall = row.get("iteration", iteration), row.get("elapsed", wall)
        if "val_psnr" in row:
            psnr = row["val_psnr"]
    return psnr, iteration, wall


def load_run(run: Path) -> tuple[PQMIM, dict]:
    """A stage-1 run folder's model and its checkpoint, or a model file (a shipped model, as the
    reference line) and no checkpoint."""
    if run.suffix == ".safetensors":
        return PQMIM.load(run), {}
    ck = load_ckpt(run / "stage1.pt")
    if ck is None:
        raise SystemExit(f"{run}: no stage1.pt (not a stage-1 run folder or model file)")
    model = PQMIM(ModelConfig.from_dict(read_json(run / "config.json")))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


@torch.no_grad()
def score(run: Path, kodak: Path, limit: int | None = None) -> dict:
    model, ck = load_run(run)
    cfg = model.cfg
    psnrs, unquantized, codes, pixels = [], [], [], 0
    for path in list_images(kodak)[:limit]:
        rgb = load_rgb(path)
        h, w = (s - s % cfg.f for s in rgb.shape[:2])
        rgb = rgb[:h, :w]
        x = to_tensor(rgb)
        c = model.encode_codes(x)
        psnrs.append(psnr_uint8(rgb, to_uint8(model.decode_codes(c)[0])))
        unquantized.append(psnr_uint8(rgb, to_uint8(model.decode_latents(model.encoder(x - 0.5))[0])))
        codes.append(c[0])
        pixels += h * w
    bits = code_entropy_bits(codes, cfg.k) * sum(c.shape[1] * c.shape[2] for c in codes)
    val_psnr, iteration, wall = last_validation(run)
    plan = read_json(run / "stage1_plan.json")
    return {
        "run": run.stem if run.suffix == ".safetensors" else run.name,
        "iterations": ck.get("iteration", iteration),
        "wall_s": round(ck.get("elapsed", wall)),
        "val_psnr": val_psnr,
        "kodak_psnr": float(np.mean(psnrs)),
        "kodak_psnr_unquantized": float(np.mean(unquantized)),
        "rate_bound_bpp": bits / pixels,
        "config": cfg.to_dict(),
        "plan": plan,
    }


def table(rows: list[dict]) -> str:
    out = [
        "| run | iterations | wall s | val PSNR | Kodak PSNR | unquantized | rate bound bpp |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = "-" if r["val_psnr"] is None else f"{r['val_psnr']:.2f}"
        out.append(
            f"| {r['run']} | {r['iterations']} | {r['wall_s']} | {v} | {r['kodak_psnr']:.2f} | {r['kodak_psnr_unquantized']:.2f} | {r['rate_bound_bpp']:.4f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        prog="python -m pqmim.train.yardstick", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="stage-1 run folders of `pqmim train` (or model files, for reference)")
    ap.add_argument("--kodak", default=str(KODAK))
    ap.add_argument("--limit", type=int, help="score on the first N Kodak images only")
    ap.add_argument("--json", help="also write the rows to this file")
    ns = ap.parse_args(argv)
    rows = [score(Path(r), Path(ns.kodak), ns.limit) for r in ns.runs]
    print(table(rows))
    if ns.json:
        atomic_write_json(Path(ns.json), rows, indent=2)
    return rows


if __name__ == "__main__":
    main()
