"""Train a pqmim model: stage 1 (autoencoder + product quantizer), stage 2 (MIM entropy model),
then export a release model (safetensors + JSON card).

    python -m pqmim.train --out runs/default --train ../shared/data/train --val ../shared/data/val

Rerunning the same command resumes from the checkpoints in --out. Runs unchanged on CPU and CUDA
(bf16 autocast, channels-last and TF32 on GPU, where the photos live in GPU memory and crops are
cut there), alone or as several processes under torchrun (see pqmim.distributed). --train and
--val take folders or a data pack (pqmim.pack). A plan with "minutes" is a wall-time budget
(the learning rate decays over the time, and the stage ends when it is spent), as for a lent
GPU's round (pqmim.gpu_round); otherwise it is a number of steps.

    torchrun --standalone --nproc_per_node 2 -m pqmim.train --out runs/default ...
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
from torch import nn

from .config import ModelConfig
from .entropy.schedule import cumulative_counts
from .data import CropSource, center_crops, describe_source, photos
from .distributed import Dist, broadcast_buffers, index_stream, setup, teardown
from .evaluate import psnr_uint8
from .models import PQMIM, warm_start
from .models.weights import STORAGES


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
    minutes: float = 0.0  # > 0: a wall-time budget; steps is then only an upper bound


@dataclass
class Stage2Plan:
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    min_mask: float = 0.02
    minutes: float = 0.0  # > 0: a wall-time budget; steps is then only an upper bound


def log(out: Path, msg: str, ctx: Dist | None = None) -> None:
    if ctx is not None and not ctx.main:
        return
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def status(out: Path, ctx: Dist, **fields) -> None:
    """The run's latest figures as JSON (out/status.json, replaced atomically): what a poll of a
    detached run (pqmim.gpu_round) reads instead of parsing the log."""
    if ctx.main:
        old = read_json(out / "status.json")
        tmp = out / "status.json.tmp"
        tmp.write_text(json.dumps({**old, **fields, "time": time.time()}))
        tmp.replace(out / "status.json")


def record_plan(path: Path, plan) -> None:
    """The plan a run started with is the one it resumes and reports, whatever is passed later."""
    if not path.exists():
        path.write_text(json.dumps(vars(plan), indent=2))


def finished(step: int, elapsed: float, plan) -> bool:
    """A stage is done after plan.steps steps, or once a time-budgeted plan's minutes are spent."""
    return step >= plan.steps or (plan.minutes > 0 and elapsed >= plan.minutes * 60)


def lr_at(step: int, elapsed: float, plan, warmup: int = 100) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 5% over the plan's steps, or over
    its minutes when it has a time budget."""
    if step < warmup:
        return plan.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, plan.steps - warmup)
    if plan.minutes > 0:
        t = max(t, elapsed / (plan.minutes * 60))
    return plan.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Checkpoints:
    """When to validate and checkpoint: every `every` steps, every `minutes` of wall time (the
    GPU round: a lent machine can go at any moment), and at the end of a stage."""

    def __init__(self, every: int, minutes: float) -> None:
        self.every, self.seconds, self.last = every, minutes * 60, time.time()

    def due(self, step: int, stop: bool) -> bool:
        if stop or step % self.every == 0 or (self.seconds > 0 and time.time() - self.last >= self.seconds):
            self.last = time.time()
            return True
        return False


def per_rank(batch: int, ctx: Dist) -> int:
    """A plan's batch is global: each of the ranks takes an equal share."""
    if batch % ctx.world:
        raise SystemExit(f"batch {batch} does not split evenly over {ctx.world} processes")
    return batch // ctx.world


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_ckpt(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def resume(path: Path, out: Path, what: str, ctx: Dist, **targets) -> tuple[int, float, int]:
    """Load a checkpoint's states into `targets` (checkpoint key -> model or optimizer) and the
    torch rngs; returns (step, elapsed seconds, samples seen), zeros when there is no checkpoint."""
    ck = load_ckpt(path)
    if ck is None:
        return 0, 0.0, 0
    for key, target in targets.items():
        target.load_state_dict(ck[key])
    if "rng" in ck:  # the generator behind dead-code restarts
        torch.set_rng_state(ck["rng"])
    if "cuda_rng" in ck and torch.cuda.is_available():  # restarts draw on the device in a GPU run
        torch.cuda.set_rng_state(ck["cuda_rng"])
    log(out, f"{what}: resumed at step {ck['step']}", ctx)
    return ck["step"], ck["elapsed"], ck.get("seen", 0)


def rng_states() -> dict:
    return {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def progress(ck: dict | None) -> dict:
    """A stage's figures for a model card, from its last checkpoint: steps, wall time, samples seen
    (crops for stage 1 and the baselines, code windows for stage 2) and their rate."""
    if ck is None:
        return {"steps_done": 0, "wall_s": None}
    seen = ck.get("seen")
    return {"steps_done": ck["step"], "wall_s": round(ck["elapsed"]), "seen": seen,
            "per_s": round(seen / ck["elapsed"], 1) if seen and ck["elapsed"] > 0 else None}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def compiled(net: nn.Module, args) -> nn.Module:
    """torch.compile the training step's module when asked (--compile: worth it for long GPU runs)."""
    return torch.compile(net) if args.compile else net


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- stage 1
class AutoencoderLoss(nn.Module):
    """Stage 1's forward pass as one module, so that DDP sees (and syncs) every gradient."""

    def __init__(self, model: PQMIM, beta: float) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder, self.beta = model.encoder, model.quantizer, model.decoder, beta

    def forward(self, x: torch.Tensor, quantize: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        z = self.encoder(x - 0.5)
        if quantize:
            zq, _, stats = self.quantizer(z.float())
        else:  # plain autoencoder while the codebooks wait for k-means on trained latents
            zq, stats = z, {"commit": torch.zeros((), device=x.device), "perplexity": torch.zeros(())}
        mse = F.mse_loss(self.decoder(zq).float() + 0.5, x)
        return mse + self.beta * stats["commit"], mse, stats


def train_stage1(model: PQMIM, plan: Stage1Plan, args, device: torch.device, ctx: Dist) -> bool:
    """Train the autoencoder and codebooks; True once all plan.steps are done."""
    out = Path(args.out)
    ckpt_path = out / "stage1.pt"
    if ctx.main:
        record_plan(out / "stage1_plan.json", plan)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=plan.lr)
    step, elapsed, seen = resume(ckpt_path, out, "stage1", ctx, model=model, opt=opt)
    if finished(step, elapsed, plan):
        return True
    net = compiled(ctx.wrap(AutoencoderLoss(model, plan.beta), device), args)
    data = CropSource(photos(args.train, "train", args.max_side), device)
    batch_at = lambda s: (plan.small_batch, plan.small_crop) if s < plan.small_crop_until else (plan.batch, plan.crop)  # noqa: E731
    stream = index_stream(len(data), ctx, args.seed, start=sum(per_rank(batch_at(s)[0], ctx) for s in range(step)))
    val = center_crops(args.val, 256, 16).to(device) if ctx.main else None
    model.train()
    t0 = time.time() - elapsed
    ckpts = Checkpoints(args.ckpt_every, args.ckpt_minutes)
    while not finished(step, elapsed, plan):
        rng = np.random.default_rng([args.seed, ctx.rank, step])  # a pure function of the step: resumes exactly
        batch, crop = batch_at(step)
        if step >= plan.warmup_ae_steps and not bool(model.quantizer.initialised):
            with torch.no_grad():
                z = torch.cat([model.encoder(data.crops(rng.integers(len(data), size=64).tolist(), plan.crop, rng).to(device) - 0.5) for _ in range(4)])
            model.quantizer.kmeans_init(z.float())
            broadcast_buffers(model.quantizer)
            log(out, f"stage1: k-means initialised the codebooks from {z.shape[0] * z.shape[2] * z.shape[3]} latents", ctx)
        x = data.crops([next(stream) for _ in range(per_rank(batch, ctx))], crop, rng)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed, plan)
        with autocast(device):
            loss, mse, stats = net(x, quantize=step >= plan.warmup_ae_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += batch
        elapsed = time.time() - t0
        if step % args.log_every == 0 or step == 1:  # step 1: a detached run shows it is under way
            log(out, f"stage1 step {step} mse {mse.item():.5f} psnr {10 * math.log10(1 / max(mse.item(), 1e-10)):.2f} "
                     f"commit {stats['commit'].item():.4f} perplexity {stats['perplexity'].item():.1f}/{model.cfg.k} "
                     f"lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s crops {seen}", ctx)
            status(out, ctx, stage="1", step=step, elapsed=elapsed, seen=seen, per_s=seen / max(elapsed, 1e-9), psnr=10 * math.log10(1 / max(mse.item(), 1e-10)))
        stop = finished(step, elapsed, plan) or step == args.stop_at
        if ckpts.due(step, stop) and ctx.main:
            if model.quantizer.initialised:
                model.eval()
                with torch.no_grad():
                    rec = model.decode_codes(model.encode_codes(val))
                model.train()
                vpsnr = psnr_uint8(to_uint8(val), to_uint8(rec))
                log(out, f"stage1 val step {step}: psnr {vpsnr:.2f} dB ({len(val)} val crops 256x256, quantized)", ctx)
                status(out, ctx, val_psnr=vpsnr, val_step=step)
            save_ckpt(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), **rng_states(), step=step, elapsed=time.time() - t0, seen=seen)
        if stop:
            break
    ctx.barrier()
    return finished(step, elapsed, plan)


# ----------------------------------------------------------------------------- stage 2
def stage2_code_maps(model: PQMIM, images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Codes (m, h, w) of whole images (cropped to multiples of f), with their mirror images."""
    f = model.cfg.f
    maps = []
    model.eval()
    for im in images:
        h, w = (im.shape[0] // f) * f, (im.shape[1] // f) * f
        if h == 0 or w == 0:
            continue
        x = torch.from_numpy(np.array(im[:h, :w])).permute(2, 0, 1)[None].float().div(255).to(device)
        for xx in (x, x.flip(-1)):
            codes = model.encode_codes(xx)[0].cpu()
            maps.append(codes.to(torch.uint8 if model.cfg.k <= 256 else torch.int32))  # compact in RAM
    return maps


def cached_code_maps(model: PQMIM, args, device: torch.device, ctx: Dist) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training and validation code maps, computed once by rank 0 and cached in the run folder
    (a resumed run or another rank reads them back)."""
    path = Path(args.out) / "stage2_codes.pt"
    if ctx.main and not path.exists():
        t = time.time()
        train = stage2_code_maps(model, photos(args.train, "train", args.max_side), device)
        val = stage2_code_maps(model, photos(args.val, "val", args.max_side), device)
        save_ckpt(path, train=train, val=val)
        log(Path(args.out), f"stage2: coded {len(train)} training and {len(val)} validation code maps in {time.time() - t:.0f}s", ctx)
    ctx.barrier()
    ck = load_ckpt(path)
    return ck["train"], ck["val"]


def sample_windows(maps: list[torch.Tensor], indices: list[int], window: int, rng: np.random.Generator):
    """A random window (padded to window x window) of each chosen code map: (codes, valid)."""
    m = maps[0].shape[0]
    codes = torch.zeros(len(indices), m, window, window, dtype=torch.long)
    valid = torch.zeros(len(indices), window, window, dtype=torch.bool)
    for i, j in enumerate(indices):
        c = maps[j]
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


def random_groups(valid: torch.Tensor, rng: np.random.Generator, steps: int, alpha: float) -> torch.Tensor:
    """Per window, the coding step of every real position (B, W, W): a random order cut into
    groups of the coding schedule's sizes (the coder uses one fixed order; training on random
    ones teaches the model every order). Padding gets step `steps`."""
    b = valid.shape[0]
    scores = torch.from_numpy(rng.random(valid.shape)).float()
    scores = torch.where(valid, scores, torch.full_like(scores, 2.0))  # padding sorts last
    rank = scores.flatten(1).argsort(1).argsort(1)  # B, n
    group = torch.full_like(rank, steps)
    for i, n in enumerate(valid.flatten(1).sum(1).tolist()):
        bounds = torch.tensor(cumulative_counts(n, steps, alpha))
        real = rank[i] < n
        group[i, real] = torch.searchsorted(bounds, rank[i, real], right=True)
    return group.reshape(valid.shape)


class CausalCodeLoss(nn.Module):
    """Stage 2's loss for a block-causal model: mean cross-entropy, in bits per code, of every
    real position given the groups before its own (exactly what coding the window costs)."""

    def __init__(self, entropy: nn.Module, k: int) -> None:
        super().__init__()
        self.entropy, self.k = entropy, k

    def forward(self, codes: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        sel = valid.flatten(1)
        lg = self.entropy.two_stream(codes, group, valid)[sel].float()  # P, m, k
        tg = codes.flatten(2).transpose(1, 2)[sel]  # P, m
        return F.cross_entropy(lg.reshape(-1, self.k), tg.reshape(-1)) / math.log(2)


class MaskedCodeLoss(nn.Module):
    """Mean cross-entropy, in bits per code, of the masked real positions (stage 2's loss)."""

    def __init__(self, entropy: nn.Module, k: int) -> None:
        super().__init__()
        self.entropy, self.k = entropy, k

    def forward(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        sel = (valid & ~visible).flatten(1)
        hid = self.entropy.hidden(codes, visible, valid)  # B, n, d
        lg = self.entropy.logits(hid[sel]).float()  # P, m, k: the head only where there is a loss
        tg = codes.flatten(2).transpose(1, 2)[sel]  # P, m
        return F.cross_entropy(lg.reshape(-1, self.k), tg.reshape(-1)) / math.log(2)


def train_stage2(model: PQMIM, plan: Stage2Plan, args, device: torch.device, ctx: Dist) -> bool:
    """Train the MIM entropy model on the frozen codes; True once all plan.steps are done."""
    out = Path(args.out)
    ckpt_path = out / "stage2.pt"
    if ctx.main:
        record_plan(out / "stage2_plan.json", plan)
    opt = torch.optim.AdamW(model.entropy.parameters(), lr=plan.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, elapsed, seen = resume(ckpt_path, out, "stage2", ctx, entropy=model.entropy, opt=opt)
    if finished(step, elapsed, plan):
        return True
    maps, val_maps = cached_code_maps(model, args, device, ctx)
    cfg = model.cfg
    loss_fn = (CausalCodeLoss if cfg.causal else MaskedCodeLoss)(model.entropy, cfg.k)

    def hidden_part(valid: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """What the model is not told: each position's coding step, or which are visible."""
        return random_groups(valid, rng, cfg.steps, cfg.alpha) if cfg.causal else random_visible(valid, rng, plan.min_mask)

    net = compiled(ctx.wrap(loss_fn, device), args)
    b = per_rank(plan.batch, ctx)
    stream = index_stream(len(maps), ctx, args.seed, start=step * b)
    vrng = np.random.default_rng(1234)
    val_batches = []
    for _ in range(8):
        c, v = sample_windows(val_maps, vrng.integers(len(val_maps), size=32).tolist(), cfg.window, vrng)
        val_batches.append((c, hidden_part(v, vrng), v))
    model.entropy.train()
    t0 = time.time() - elapsed
    ckpts = Checkpoints(args.ckpt_every, args.ckpt_minutes)
    while not finished(step, elapsed, plan):
        rng = np.random.default_rng([args.seed, ctx.rank, step])
        codes, valid = sample_windows(maps, [next(stream) for _ in range(b)], model.cfg.window, rng)
        given = hidden_part(valid, rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed, plan)
        with autocast(device):
            loss = net(codes.to(device), given.to(device), valid.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.entropy.parameters(), 1.0)
        opt.step()
        step += 1
        seen += plan.batch
        elapsed = time.time() - t0
        if step % args.log_every == 0 or step == 1:  # step 1: a detached run shows it is under way
            log(out, f"stage2 step {step} bits/code {loss.item():.3f} (uniform {math.log2(model.cfg.k):.2f}) "
                     f"lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s windows {seen}", ctx)
            status(out, ctx, stage="2", step=step, elapsed=elapsed, seen=seen, per_s=seen / max(elapsed, 1e-9), bits_per_code=loss.item())
        stop = finished(step, elapsed, plan) or step == args.stop_at
        if ckpts.due(step, stop) and ctx.main:
            model.entropy.eval()
            with torch.no_grad():
                vl = np.mean([loss_fn(c.to(device), vi.to(device), v.to(device)).item() for c, vi, v in val_batches])
            model.entropy.train()
            log(out, f"stage2 val step {step}: {vl:.3f} bits/code on {'all' if cfg.causal else 'masked'} val codes", ctx)
            status(out, ctx, val_bits_per_code=float(vl), val_bpp=float(vl) * model.cfg.m / model.cfg.f**2, val_step=step)
            save_ckpt(ckpt_path, entropy=model.entropy.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0, seen=seen)
        if stop:
            break
    model.eval()
    ctx.barrier()
    return finished(step, elapsed, plan)


# ----------------------------------------------------------------------------- baselines
class RateDistortionLoss(nn.Module):
    """CompressAI's training loss, lambda * 255^2 * MSE + bpp, as one module for DDP."""

    def __init__(self, net: nn.Module, lmbda: float) -> None:
        super().__init__()
        self.net, self.lmbda = net, lmbda

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2) * pixels)
        mse = F.mse_loss(out["x_hat"].float(), x)
        return self.lmbda * 255**2 * mse + bpp, mse, bpp


def train_baseline(net: nn.Module, plan: Stage1Plan, args, device: torch.device, ctx: Dist) -> bool:
    """Train a CompressAI model on the same data stream and crop plan as stage 1 (one stage:
    its entropy model trains jointly); the quantiles of its factorized prior take the aux loss."""
    out = Path(args.out)
    ckpt_path = out / "baseline.pt"
    if ctx.main:
        record_plan(out / "stage1_plan.json", plan)
    main_params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(main_params, lr=plan.lr), torch.optim.Adam(aux_params, lr=1e-3)
    step, elapsed, seen = resume(ckpt_path, out, "baseline", ctx, model=net, opt=opt, aux_opt=aux_opt)
    if finished(step, elapsed, plan):
        return True
    loss_fn = compiled(ctx.wrap(RateDistortionLoss(net, args.lmbda), device), args)
    data = CropSource(photos(args.train, "train", args.max_side), device)
    stream = index_stream(len(data), ctx, args.seed, start=step * per_rank(plan.batch, ctx))
    val = center_crops(args.val, 256, 16).to(device) if ctx.main else None
    net.train()
    t0 = time.time() - elapsed
    ckpts = Checkpoints(args.ckpt_every, args.ckpt_minutes)
    while not finished(step, elapsed, plan):
        rng = np.random.default_rng([args.seed, ctx.rank, step])
        x = data.crops([next(stream) for _ in range(per_rank(plan.batch, ctx))], plan.crop, rng)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed, plan)
        loss, mse, bpp = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = net.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        step += 1
        seen += plan.batch
        elapsed = time.time() - t0
        if step % args.log_every == 0 or step == 1:  # step 1: a detached run shows it is under way
            log(out, f"baseline step {step} loss {loss.item():.4f} psnr {10 * math.log10(1 / max(mse.item(), 1e-10)):.2f} "
                     f"bpp {bpp.item():.4f} aux {aux.item():.1f} lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s crops {seen}", ctx)
            status(out, ctx, stage="1", step=step, elapsed=elapsed, seen=seen, per_s=seen / max(elapsed, 1e-9), psnr=10 * math.log10(1 / max(mse.item(), 1e-10)), bpp=bpp.item())
        stop = finished(step, elapsed, plan) or step == args.stop_at
        if ckpts.due(step, stop) and ctx.main:
            net.eval()
            with torch.no_grad():
                o = net(val)
                vbpp = sum(torch.log(lk).sum() for lk in o["likelihoods"].values()).item() / (-math.log(2) * val.shape[0] * 256 * 256)
            net.train()
            vpsnr = psnr_uint8(to_uint8(val), to_uint8(o["x_hat"]))
            log(out, f"baseline val step {step}: psnr {vpsnr:.2f} dB, {vbpp:.4f} bpp (estimated by the likelihoods, {len(val)} val crops 256x256)", ctx)
            status(out, ctx, val_psnr=vpsnr, val_bpp=vbpp, val_step=step)
            save_ckpt(ckpt_path, model=net.state_dict(), opt=opt.state_dict(), aux_opt=aux_opt.state_dict(), step=step, elapsed=time.time() - t0, seen=seen)
        if stop:
            break
    ctx.barrier()
    return finished(step, elapsed, plan)


def settle_quantiles(net: nn.Module) -> float:
    """Finish fitting the quantiles that bound the hyper-latents' coding range. CompressAI's aux
    loss does not depend on the data, so a short run of large then small steps finishes it here,
    cheaply (during training it moves too slowly to converge in a short budget)."""
    params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    for steps, lr in ((2000, 0.2), (1000, 0.01)):
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            aux = net.aux_loss()
            opt.zero_grad(set_to_none=True)
            aux.backward()
            opt.step()
    return float(net.aux_loss().detach())


def export_baseline(net: nn.Module, args, device_name: str) -> Path:
    """Write a baseline (safetensors + card in --export-dir) and measure it on Kodak with its real bitstreams."""
    from .baselines import Baseline
    from .evaluate import evaluate_folder

    out = Path(args.out)
    ck = load_ckpt(out / "baseline.pt")
    dest = Path(args.export_dir)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{args.name}.safetensors"
    aux = settle_quantiles(net.cpu())
    log(out, f"export: aux loss {aux:.3f} after settling the factorized prior's quantiles")
    Baseline(net.eval(), args.arch, args.n, args.m).save(weights, storage=args.storage)
    model = Baseline.load(weights)  # measure what ships: fp16 weights, stored tables
    card = {
        "name": args.name, "description": args.description, "arch": args.arch, "n": args.n, "m": args.m, "lmbda": args.lmbda,
        "init_from": read_json(out / "warm_start.json") or None,
        "data": {**describe_source(args.train), "val": str(args.val)},
        "storage": args.storage,
        **({"entropy_variant_of": args.base} if args.base else {}),
        "training": {**read_json(out / "stage1_plan.json"), **progress(ck), "device": device_name, "torch": torch.__version__},
    }
    if args.kodak:
        res = evaluate_folder(model, args.kodak)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim")}
        log(out, f"export: Kodak bpp {res['bpp']:.4f} psnr {res['psnr']:.2f} dB ms-ssim {res['ms_ssim'] or float('nan'):.4f} over {res['images']} images")
    tmp = dest / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(dest / f"{args.name}.json")
    log(out, f"export: wrote {weights} and its card")
    return weights


def _run_baseline(args, ctx: Dist, device: torch.device, device_name: str) -> nn.Module:
    from .baselines import Baseline, build

    out = Path(args.out)
    net = build(args.arch, args.n, args.m)
    if args.init_from and not (out / "baseline.pt").exists():
        source = Baseline.load(args.init_from)
        if (source.arch, source.n, source.m) != (args.arch, args.n, args.m):
            raise SystemExit(f"--init-from {args.init_from} is a {source.arch} N={source.n} M={source.m}, not this architecture")
        net.load_state_dict(source.net.state_dict())
        log(out, f"warm start from {args.init_from}: all weights", ctx)
        if ctx.main:
            # the source's own training is part of this model's budget: keep it in the card
            source_card = read_json(Path(args.init_from).with_suffix(".json"))
            (out / "warm_start.json").write_text(json.dumps({"model": Path(args.init_from).stem, "training": source_card.get("training")}))
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    log(out, f"start: {args.arch} N={args.n} M={args.m} lambda={args.lmbda} on {device_name}", ctx)
    stages = set(args.stages.split(","))
    if "1" in stages:
        # crops stay at plan.crop: the hyperprior needs sides divisible by 64
        plan = Stage1Plan(**{**json.loads(args.stage1_plan), **read_json(out / "stage1_plan.json"), "small_crop_until": 0, "warmup_ae_steps": 0})
        if not train_baseline(net, plan, args, device, ctx):
            return net
    if "export" in stages and ctx.main:
        ck = load_ckpt(out / "baseline.pt")
        if ck is None:
            raise SystemExit("export needs a baseline checkpoint in --out")
        net.load_state_dict(ck["model"], strict=False)
        export_baseline(net, args, device_name)
    return net


# ----------------------------------------------------------------------------- export
def export(model: PQMIM, args, device_name: str) -> Path:
    """Write the release model (safetensors + card) and, unless --kodak is '', measure it on Kodak
    with the real codec (the GPU round measures here, after the weights came back)."""
    out = Path(args.out)
    s1, s2 = load_ckpt(out / "stage1.pt"), load_ckpt(out / "stage2.pt")
    dest = Path(args.export_dir)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{args.name}.safetensors"
    model.cpu().eval().save(weights, storage=args.storage, base=dest / f"{args.base}.safetensors" if args.base else None)
    shipped = PQMIM.load(weights)  # what ships: the stored weights, read back
    card = {
        "name": args.name,
        "description": args.description,
        "config": model.cfg.to_dict(),
        "model_id": shipped.model_id().hex(),
        "storage": args.storage,
        **({"entropy_variant_of": args.base} if args.base else {}),
        "init_from": read_json(out / "warm_start.json") or None,
        "data": {**describe_source(args.train), "val": str(args.val)},
        "training": {
            "stage1": {**read_json(out / "stage1_plan.json"), **progress(s1)},
            "stage2": {**read_json(out / "stage2_plan.json"), **progress(s2)},
            "device": device_name,
            "torch": torch.__version__,
        },
    }
    if args.kodak:
        from .codec import Codec
        from .evaluate import evaluate_folder

        codec = Codec(shipped, name=args.name)
        res = evaluate_folder(codec, args.kodak)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim", "all_exact")}  # speed: bench speed, on an idle machine
        log(out, f"export: Kodak bpp {res['bpp']:.4f} psnr {res['psnr']:.2f} dB ms-ssim {res['ms_ssim'] or float('nan'):.4f} over {res['images']} images")
    tmp = dest / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(dest / f"{args.name}.json")
    log(out, f"export: wrote {weights} and its card")
    return weights


def main(argv: list[str] | None = None) -> PQMIM:
    """Run `pqmim train`; returns the model as trained so far."""
    ap = argparse.ArgumentParser(prog="pqmim train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder: checkpoints and train.log (resumed if present)")
    ap.add_argument("--train", default="../shared/data/train")
    ap.add_argument("--val", default="../shared/data/val")
    ap.add_argument("--kodak", default="../shared/data/kodak", help="measured at export; '' to skip")
    ap.add_argument("--arch", default="pqmim", help="pqmim, or a CompressAI baseline: bmshj2018-hyperprior, mbt2018-mean")
    ap.add_argument("--lmbda", type=float, default=0.0018, help="baselines: rate-distortion trade-off (loss lambda*255^2*MSE + bpp)")
    ap.add_argument("--n", type=int, default=128, help="baselines: CompressAI's N channels")
    ap.add_argument("--m", type=int, default=192, help="baselines: CompressAI's M channels")
    ap.add_argument("--init-from", default="", help="warm start from a trained .safetensors model (any config): every layer that fits is copied")
    ap.add_argument("--config", default="{}", help="ModelConfig fields as JSON, e.g. '{\"m\": 8, \"k\": 256}'")
    ap.add_argument("--stage1-plan", default="{}", help="Stage1Plan fields as JSON (steps, crop, batch, lr, ...); batches are global")
    ap.add_argument("--stage2-plan", default="{}", help="Stage2Plan fields as JSON")
    ap.add_argument("--stages", default="1,2,export", help="which of 1, 2, export to run")
    ap.add_argument("--stop-at", type=int, default=0, help="checkpoint and stop when the running stage reaches this step (rerun to go on)")
    ap.add_argument("--name", default="pqmim-default")
    ap.add_argument("--description", default="")
    ap.add_argument("--export-dir", default="models")
    ap.add_argument("--base", default="", help="export only the entropy model, as a variant of this model in --export-dir (same autoencoder; e.g. a block-causal entropy model trained with --stages 2 on a shipped model's codes)")
    ap.add_argument("--storage", default="int8", choices=STORAGES, help="exported weights: int8 per channel (default, exact everywhere), float16 or float32")
    ap.add_argument("--max-side", type=int, default=1024, help="downscale larger training images to this side")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--ckpt-minutes", type=float, default=0, help="also checkpoint (and validate) every this many minutes")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (slow to start; pays off on long GPU runs)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx, device = setup(args.device)
    try:
        return _run(args, ctx, device)
    finally:
        teardown(ctx)


def _run(args, ctx: Dist, device: torch.device) -> PQMIM:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    if ctx.world > 1:
        device_name = f"{ctx.world} processes (torchrun, DDP), each on {device_name}"
        if any(json.loads(p).get("minutes") for p in (args.stage1_plan, args.stage2_plan)):
            raise SystemExit("time-budgeted plans (minutes) need a single process: ranks' clocks would disagree on when to stop")
    if device.type == "cuda":  # TF32 for the float32 parts (quantizer, baselines); autotuned convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.arch != "pqmim":
        return _run_baseline(args, ctx, device, device_name)
    cfg_file = out / "config.json"
    cfg = ModelConfig.from_dict(json.loads(args.config))
    if cfg_file.exists():
        saved = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
        if args.config != "{}" and saved != cfg:
            raise SystemExit(f"{out} holds a run with another config; use a new --out")
        cfg = saved
    elif ctx.main:
        cfg_file.write_text(json.dumps(cfg.to_dict(), indent=2))
    model = PQMIM(cfg)
    if args.init_from and not (out / "stage1.pt").exists():
        source = PQMIM.load(args.init_from)
        copied = warm_start(model, source)
        log(out, f"warm start from {args.init_from}: copied {len(copied)} modules: {', '.join(copied)}", ctx)
        if ctx.main:
            (out / "warm_start.json").write_text(json.dumps({"model": Path(args.init_from).stem, "model_id": source.model_id().hex(), "modules_copied": len(copied)}))
    model = model.to(device)
    if device.type == "cuda":  # tensor-core friendly layout for the convolutions
        model = model.to(memory_format=torch.channels_last)
    stages = set(args.stages.split(","))
    log(out, f"start: stages {sorted(stages)} on {device_name}, config {cfg.to_dict()}", ctx)
    if "1" in stages:
        plan1 = Stage1Plan(**(read_json(out / "stage1_plan.json") or json.loads(args.stage1_plan)))
        if not train_stage1(model, plan1, args, device, ctx):
            return model
    if "1" not in stages and args.init_from and not (out / "stage1.pt").exists() and ctx.main:
        # stage 2 alone on a trained model's autoencoder (e.g. a block-causal entropy model for a
        # shipped model, fine-tuned from its full-attention one): the warm start is stage 1
        save_ckpt(out / "stage1.pt", model=model.state_dict(), step=0, elapsed=0.0)
        log(out, f"stage 1: the autoencoder and quantizer of {args.init_from}, as they are", ctx)
    ctx.barrier()
    if "2" in stages or "export" in stages:
        ck = load_ckpt(out / "stage1.pt")
        if ck is None:
            raise SystemExit("stage 2 needs a finished stage 1 checkpoint in --out")
        model.load_state_dict(ck["model"])
    if "2" in stages:
        plan2 = Stage2Plan(**(read_json(out / "stage2_plan.json") or json.loads(args.stage2_plan)))
        if not train_stage2(model, plan2, args, device, ctx):
            return model
    if "export" in stages and ctx.main:
        ck = load_ckpt(out / "stage2.pt")
        if ck is not None:
            model.entropy.load_state_dict(ck["entropy"])
        export(model, args, device_name)
    return model


if __name__ == "__main__":
    main()
