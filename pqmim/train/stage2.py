"""Stage 2: the masked-image-modeling entropy model, on the frozen codes of stage 1.

Training sees random windows of whole images' code maps (and their mirror images). A
bidirectional model learns to predict a random share of masked positions from the visible ones;
a block-causal one learns every position given the coding groups before its own, for random
orders cut into the schedule's group sizes (the coder uses one fixed order; training on random
ones teaches the model every order).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import photos
from ..distributed import Dist, index_stream
from ..entropy.schedule import cumulative_counts
from ..image import to_tensor
from ..models import PQMIM
from .loop import Stage, StageEnv, load_ckpt, log, per_rank, save_ckpt


@dataclass(frozen=True)
class Stage2Plan:
    iterations: int = 3000
    batch: int = 32
    lr: float = 1e-3
    min_mask: float = 0.02
    minutes: float = 0.0  # > 0: a wall-time budget; iterations is then only an upper bound


def code_maps(model: PQMIM, images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Codes (m, h, w) of whole images (cropped to multiples of f), with their mirror images."""
    f = model.cfg.f
    maps = []
    model.eval()
    for im in images:
        h, w = (im.shape[0] // f) * f, (im.shape[1] // f) * f
        if h == 0 or w == 0:
            continue
        x = to_tensor(im[:h, :w]).to(device)
        for xx in (x, x.flip(-1)):
            codes = model.encode_codes(xx)[0].cpu()
            maps.append(codes.to(torch.uint8 if model.cfg.k <= 256 else torch.int32))  # compact in RAM
    return maps


def cached_code_maps(model: PQMIM, train: str, val: str, max_side: int, out: Path, device: torch.device, ctx: Dist):
    """Training and validation code maps, computed once by rank 0 and cached in the run folder
    (a resumed run or another rank reads them back)."""
    path = out / "stage2_codes.pt"
    if ctx.main and not path.exists():
        t0 = time.time()
        train_maps = code_maps(model, photos(train, "train", max_side), device)
        val_maps = code_maps(model, photos(val, "val", max_side), device)
        save_ckpt(path, train=train_maps, val=val_maps)
        log(out, f"stage2: coded {len(train_maps)} training and {len(val_maps)} validation code maps in {time.time() - t0:.0f}s", ctx)
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
    groups of the coding schedule's sizes. Padding gets step `steps`."""
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


class Stage2(Stage):
    name, unit = "stage2", "windows"

    def __init__(self, model: PQMIM, plan: Stage2Plan, env: StageEnv) -> None:
        self.model, self.plan, self.env = model, plan, env
        self.out, self.ctx, self.device = env.out, env.ctx, env.device
        self.params = list(model.entropy.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=plan.lr, weight_decay=0.01, betas=(0.9, 0.98))
        self.state = {"entropy": model.entropy, "opt": self.optimizer}
        cfg = model.cfg
        self.loss_fn = (CausalCodeLoss if cfg.causal else MaskedCodeLoss)(model.entropy, cfg.k)

    def hidden_part(self, valid: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """What the model is not told: each position's coding step, or which are visible."""
        cfg = self.model.cfg
        return random_groups(valid, rng, cfg.steps, cfg.alpha) if cfg.causal else random_visible(valid, rng, self.plan.min_mask)

    def begin(self, iteration: int) -> None:
        w = self.env
        self.maps, val_maps = cached_code_maps(self.model, w.train, w.val, w.max_side, w.out, w.device, w.ctx)
        self.net = w.wrap(self.loss_fn)
        self.b = per_rank(self.plan.batch, self.ctx)
        self.stream = index_stream(len(self.maps), self.ctx, w.seed, start=iteration * self.b)
        vrng = np.random.default_rng(1234)  # the same validation windows at every checkpoint
        self.val_batches = []
        for _ in range(8):
            c, v = sample_windows(val_maps, vrng.integers(len(val_maps), size=32).tolist(), self.model.cfg.window, vrng)
            self.val_batches.append((c, self.hidden_part(v, vrng), v))

    def train(self, mode: bool) -> None:
        self.model.eval()  # the autoencoder stays frozen
        self.model.entropy.train(mode)

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        codes, valid = sample_windows(self.maps, [next(self.stream) for _ in range(self.b)], self.model.cfg.window, rng)
        given = self.hidden_part(valid, rng)
        loss = self.net(codes.to(self.device), given.to(self.device), valid.to(self.device))
        return loss, {"bits_per_code": loss.item()}

    def validate(self) -> tuple[str, dict]:
        d = self.device
        bits = float(np.mean([self.loss_fn(c.to(d), h.to(d), v.to(d)).item() for c, h, v in self.val_batches]))
        cfg = self.model.cfg
        which = "all" if cfg.causal else "masked"
        return (
            f"{bits:.3f} bits/code on {which} val codes (uniform {math.log2(cfg.k):.2f})",
            {"bits_per_code": bits, "bpp": bits * cfg.m / cfg.f**2},
        )
