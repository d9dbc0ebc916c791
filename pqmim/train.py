"""Train a pqmim model: stage 1 (autoencoder + product quantizer), stage 2 (MIM entropy model),
then export a release model (safetensors + JSON card).

    python -m pqmim.train --out runs/default --train ../shared/data/train --val ../shared/data/val

Rerunning the same command resumes from the checkpoints in --out. Runs unchanged on CPU and CUDA
(bf16 autocast on GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .data import CropSampler, center_crops, list_images, load_rgb
from .evaluate import psnr_uint8
from .models import PQMIM


@dataclass
class Stage1Plan:
    steps: int = 5000
    warmup_ae_steps: int = 400  # plain autoencoder before the codebooks are k-means initialised
    small_crop_until: int = 2000  # small crops early: cheap steps while the nets learn the basics
    small_crop: int = 96
    small_batch: int = 24
    crop: int = 128
    batch: int = 16
    lr: float = 1e-3
    beta: float = 0.25  # commitment loss weight


@dataclass
class Stage2Plan:
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    min_mask: float = 0.02


def log(out: Path, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def record_plan(path: Path, plan) -> None:
    """The plan a run started with is the one it resumes and reports, whatever is passed later."""
    if not path.exists():
        path.write_text(json.dumps(vars(plan), indent=2))


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_ckpt(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- stage 1
def train_stage1(model: PQMIM, plan: Stage1Plan, args, device: torch.device) -> None:
    out = Path(args.out)
    ckpt_path = out / "stage1.pt"
    record_plan(out / "stage1_plan.json", plan)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=plan.lr)
    step, elapsed = 0, 0.0
    ck = load_ckpt(ckpt_path)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(out, f"stage1: resumed at step {step}")
    if step >= plan.steps:
        return
    sampler = CropSampler(args.train, seed=args.seed + step, max_side=args.max_side)
    val = center_crops(args.val, 256, 16).to(device)
    model.train()
    t0 = time.time() - elapsed
    while step < plan.steps:
        small = step < plan.small_crop_until
        x = sampler.sample(plan.small_batch if small else plan.batch, plan.small_crop if small else plan.crop).to(device)
        if step == plan.warmup_ae_steps or (step > plan.warmup_ae_steps and not bool(model.quantizer.initialised)):
            with torch.no_grad():
                z = torch.cat([model.encoder(sampler.sample(64, plan.crop).to(device) - 0.5) for _ in range(4)])
            model.quantizer.kmeans_init(z.float())
            log(out, f"stage1: k-means initialised the codebooks from {z.shape[0] * z.shape[2] * z.shape[3]} latents")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, plan.steps, plan.lr)
        with autocast(device):
            z = model.encoder(x - 0.5)
            if step < plan.warmup_ae_steps:
                zq, stats = z, {"commit": torch.zeros((), device=device), "perplexity": torch.zeros(())}
            else:
                zq, _, stats = model.quantizer(z.float())
            y = model.decoder(zq) + 0.5
        mse = F.mse_loss(y.float(), x)
        loss = mse + plan.beta * stats["commit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log(out, f"stage1 step {step} mse {mse.item():.5f} psnr {10 * math.log10(1 / max(mse.item(), 1e-10)):.2f} "
                     f"commit {stats['commit'].item():.4f} perplexity {stats['perplexity'].item():.1f}/{model.cfg.k} "
                     f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        if step % args.ckpt_every == 0 or step == plan.steps:
            if model.quantizer.initialised:
                model.eval()
                with torch.no_grad():
                    rec = model.decode_codes(model.encode_codes(val))
                model.train()
                log(out, f"stage1 val step {step}: psnr {psnr_uint8(to_uint8(val), to_uint8(rec)):.2f} dB ({len(val)} val crops 256x256, quantized)")
            save_ckpt(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0)


# ----------------------------------------------------------------------------- stage 2
def stage2_code_maps(model: PQMIM, folder: str, device: torch.device, max_side: int | None) -> list[torch.Tensor]:
    """Codes (m, h, w) of whole images (cropped to multiples of f), with their mirror images."""
    f = model.cfg.f
    maps = []
    model.eval()
    for p in list_images(folder):
        im = load_rgb(p, max_side)
        h, w = (im.shape[0] // f) * f, (im.shape[1] // f) * f
        if h == 0 or w == 0:
            continue
        x = torch.from_numpy(np.array(im[:h, :w])).permute(2, 0, 1)[None].float().div(255).to(device)
        for xx in (x, x.flip(-1)):
            maps.append(model.encode_codes(xx)[0].cpu())
    return maps


def sample_windows(maps: list[torch.Tensor], batch: int, window: int, rng: np.random.Generator):
    """Random windows of code maps, padded to window x window: (codes, valid)."""
    m = maps[0].shape[0]
    codes = torch.zeros(batch, m, window, window, dtype=torch.long)
    valid = torch.zeros(batch, window, window, dtype=torch.bool)
    for i in range(batch):
        c = maps[rng.integers(len(maps))]
        H, W = c.shape[1:]
        # mostly full windows; some smaller ones, as at image borders
        hh = min(H, window) if rng.random() < 0.8 else int(rng.integers(1, min(H, window) + 1))
        ww = min(W, window) if rng.random() < 0.8 else int(rng.integers(1, min(W, window) + 1))
        y, x = rng.integers(H - hh + 1), rng.integers(W - ww + 1)
        codes[i, :, :hh, :ww] = c[:, y : y + hh, x : x + ww]
        valid[i, :hh, :ww] = True
    return codes, valid


def random_visible(valid: torch.Tensor, rng: np.random.Generator, min_mask: float) -> torch.Tensor:
    """Per window, mask a uniformly drawn share of the real positions (at least one)."""
    b = valid.shape[0]
    scores = torch.from_numpy(rng.random(valid.shape)).float()
    ratio = torch.from_numpy(rng.uniform(min_mask, 1.0, size=b)).float()
    n_valid = valid.flatten(1).sum(1)
    n_mask = torch.clamp((ratio * n_valid).ceil(), min=1).long()
    scores = torch.where(valid, scores, torch.full_like(scores, 2.0))  # padding sorts last
    rank = scores.flatten(1).argsort(1).argsort(1).reshape(valid.shape)
    masked = rank < n_mask.view(b, 1, 1)
    return valid & ~masked


def mim_loss_bits(model: PQMIM, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits per code over masked real positions."""
    target = valid & ~visible
    sel = target.flatten(1)
    hid = model.entropy.hidden(codes, visible, valid)  # B, n, d
    lg = model.entropy.logits(hid[sel]).float()  # P, m, k: the head only where there is a loss
    tg = codes.flatten(2).transpose(1, 2)[sel]  # P, m
    return F.cross_entropy(lg.reshape(-1, model.cfg.k), tg.reshape(-1)) / math.log(2)


def train_stage2(model: PQMIM, plan: Stage2Plan, args, device: torch.device) -> None:
    out = Path(args.out)
    ckpt_path = out / "stage2.pt"
    record_plan(out / "stage2_plan.json", plan)
    opt = torch.optim.AdamW(model.entropy.parameters(), lr=plan.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, elapsed = 0, 0.0
    ck = load_ckpt(ckpt_path)
    if ck is not None:
        model.entropy.load_state_dict(ck["entropy"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(out, f"stage2: resumed at step {step}")
    if step >= plan.steps:
        return
    t = time.time()
    maps = stage2_code_maps(model, args.train, device, args.max_side)
    val_maps = stage2_code_maps(model, args.val, device, args.max_side)
    log(out, f"stage2: coded {len(maps)} training and {len(val_maps)} validation code maps in {time.time() - t:.0f}s")
    rng = np.random.default_rng(args.seed + step)
    vrng = np.random.default_rng(1234)
    val_batches = []
    for _ in range(8):
        c, v = sample_windows(val_maps, 32, model.cfg.window, vrng)
        val_batches.append((c, random_visible(v, vrng, plan.min_mask), v))
    model.entropy.train()
    t0 = time.time() - elapsed
    while step < plan.steps:
        codes, valid = sample_windows(maps, plan.batch, model.cfg.window, rng)
        visible = random_visible(valid, rng, plan.min_mask)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, plan.steps, plan.lr)
        with autocast(device):
            loss = mim_loss_bits(model, codes.to(device), visible.to(device), valid.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.entropy.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log(out, f"stage2 step {step} bits/code {loss.item():.3f} (uniform {math.log2(model.cfg.k):.2f}) "
                     f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        if step % args.ckpt_every == 0 or step == plan.steps:
            model.entropy.eval()
            with torch.no_grad():
                vl = np.mean([mim_loss_bits(model, c.to(device), vi.to(device), v.to(device)).item() for c, vi, v in val_batches])
            model.entropy.train()
            log(out, f"stage2 val step {step}: {vl:.3f} bits/code on masked val codes")
            save_ckpt(ckpt_path, entropy=model.entropy.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0)
    model.eval()


# ----------------------------------------------------------------------------- export
def export(model: PQMIM, args, device_name: str) -> Path:
    """Write the release model (safetensors + card) and measure it on Kodak with the real codec."""
    from .codec import Codec
    from .evaluate import evaluate_folder

    out = Path(args.out)
    s1, s2 = load_ckpt(out / "stage1.pt"), load_ckpt(out / "stage2.pt")
    dest = Path(args.export_dir)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{args.name}.safetensors"
    model.cpu().eval().save(weights, half=not args.fp32)
    codec = Codec(PQMIM.load(weights), name=args.name)
    card = {
        "name": args.name,
        "description": args.description,
        "config": model.cfg.to_dict(),
        "model_id": codec.model_id.hex(),
        "data": {"train": str(args.train), "train_images": len(list_images(args.train)), "val": str(args.val)},
        "training": {
            "stage1": {**read_json(out / "stage1_plan.json"), "steps_done": s1["step"] if s1 else 0, "wall_s": round(s1["elapsed"]) if s1 else None},
            "stage2": {**read_json(out / "stage2_plan.json"), "steps_done": s2["step"] if s2 else 0, "wall_s": round(s2["elapsed"]) if s2 else None},
            "device": device_name,
            "torch": torch.__version__,
        },
    }
    if args.kodak:
        res = evaluate_folder(codec, args.kodak)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "encode_s", "decode_s")}
        log(out, f"export: Kodak bpp {res['bpp']:.4f} psnr {res['psnr']:.2f} dB over {res['images']} images")
    tmp = dest / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(dest / f"{args.name}.json")
    log(out, f"export: wrote {weights} and its card")
    return weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pqmim train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder: checkpoints and train.log (resumed if present)")
    ap.add_argument("--train", default="../shared/data/train")
    ap.add_argument("--val", default="../shared/data/val")
    ap.add_argument("--kodak", default="../shared/data/kodak", help="measured at export; '' to skip")
    ap.add_argument("--config", default="{}", help="ModelConfig fields as JSON, e.g. '{\"m\": 8, \"k\": 256}'")
    ap.add_argument("--stage1-plan", default="{}", help="Stage1Plan fields as JSON (steps, crop, batch, lr, ...)")
    ap.add_argument("--stage2-plan", default="{}", help="Stage2Plan fields as JSON")
    ap.add_argument("--stages", default="1,2,export", help="which of 1, 2, export to run")
    ap.add_argument("--name", default="pqmim-default")
    ap.add_argument("--description", default="")
    ap.add_argument("--export-dir", default="models")
    ap.add_argument("--fp32", action="store_true", help="export float32 weights (default: float16, half the size)")
    ap.add_argument("--max-side", type=int, default=1024, help="downscale larger training images to this side")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    cfg = ModelConfig.from_dict(json.loads(args.config))
    if cfg_file.exists():
        saved = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
        if args.config != "{}" and saved != cfg:
            raise SystemExit(f"{out} holds a run with another config; use a new --out")
        cfg = saved
    else:
        cfg_file.write_text(json.dumps(cfg.to_dict(), indent=2))
    model = PQMIM(cfg).to(device)
    stages = set(args.stages.split(","))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    log(out, f"start: stages {sorted(stages)} on {device_name}, config {cfg.to_dict()}")
    if "1" in stages:
        train_stage1(model, Stage1Plan(**(read_json(out / "stage1_plan.json") or json.loads(args.stage1_plan))), args, device)
    if "2" in stages or "export" in stages:
        ck = load_ckpt(out / "stage1.pt")
        if ck is None:
            raise SystemExit("stage 2 needs a finished stage 1 checkpoint in --out")
        model.load_state_dict(ck["model"])
    if "2" in stages:
        train_stage2(model, Stage2Plan(**(read_json(out / "stage2_plan.json") or json.loads(args.stage2_plan))), args, device)
    if "export" in stages:
        ck = load_ckpt(out / "stage2.pt")
        if ck is not None:
            model.entropy.load_state_dict(ck["entropy"])
        export(model, args, device_name)


if __name__ == "__main__":
    main()
