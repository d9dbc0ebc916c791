"""Stage 1: the autoencoder and the product quantizer's codebooks, on random crops.

The codebooks are k-means initialised from trained latents after `warmup_ae_iterations` of a
plain autoencoder (VQ-VAEs whose codebooks start at random lose most code words to dead codes);
the quantizer then keeps them alive with restarts (pqmim.models.quantizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import CropSource, center_crops, photos
from ..distributed import broadcast_buffers, index_stream
from ..evaluate import psnr_uint8
from ..image import to_uint8
from ..models import PQMIM
from .loop import Stage, StageEnv, log, per_rank


@dataclass(frozen=True)
class Stage1Plan:
    iterations: int = 5000
    # plain autoencoder before the codebooks are k-means initialised: short, so that the k-means
    # happens while the learning rate still warms up (the yardstick, models/TRAINING.md: 400
    # wasted budget, and switching the quantizer on at the peak rate made runs diverge)
    warmup_ae_iterations: int = 50
    small_crop_until: int = 2000  # small crops early: cheap iterations while the nets learn the basics
    small_crop: int = 96
    small_batch: int = 24
    crop: int = 128
    batch: int = 16
    lr: float = 5e-4  # 1e-3 diverged in 5 of 7 yardstick runs (models/TRAINING.md)
    beta: float = 2.0  # commitment loss weight: 0.25 lost 0.2-0.35 dB to 1.0-4.0 (TRAINING.md, table 3)
    # a rate-aware stage 1: loss = MSE + rate_weight x estimated bpp (ProductQuantizer.soft_bits);
    # near q3 one bpp is worth about 0.005 of MSE (1.1 dB per doubling of rate); a yardstick
    # trial, off by default (models/TRAINING.md, table 3)
    rate_weight: float = 0.0
    minutes: float = 0.0  # > 0: a wall-time budget; iterations is then only an upper bound


class AutoencoderLoss(nn.Module):
    """Stage 1's forward pass as one module, so that DDP sees (and syncs) every gradient."""

    def __init__(self, model: PQMIM, beta: float, rate_weight: float) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = model.encoder, model.quantizer, model.decoder
        self.beta, self.rate_weight, self.f2 = beta, rate_weight, model.cfg.f**2

    def forward(self, x: torch.Tensor, quantize: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        z = self.encoder(x - 0.5)
        if quantize:
            zq, _, stats = self.quantizer(z.float())
        else:  # plain autoencoder while the codebooks wait for k-means on trained latents
            zq, stats = z, {"commit": torch.zeros((), device=x.device), "perplexity": torch.zeros(())}
        mse = F.mse_loss(self.decoder(zq).float() + 0.5, x)
        loss = mse + self.beta * stats["commit"]
        if quantize and self.rate_weight > 0:
            stats["soft_bpp"] = self.quantizer.soft_bits(z) / self.f2
            loss = loss + self.rate_weight * stats["soft_bpp"]
        return loss, mse, stats


def psnr_of(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, 1e-10))


class Stage1(Stage):
    name, unit = "stage1", "crops"

    def __init__(self, model: PQMIM, plan: Stage1Plan, env: StageEnv) -> None:
        self.model, self.plan, self.env = model, plan, env
        self.out, self.ctx, self.device = env.out, env.ctx, env.device
        self.params = list(model.encoder.parameters()) + list(model.decoder.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=plan.lr)
        self.state = {"model": model, "opt": self.optimizer}

    def batch_at(self, iteration: int) -> int:
        return self.plan.small_batch if iteration < self.plan.small_crop_until else self.plan.batch

    def crop_at(self, iteration: int) -> int:
        return self.plan.small_crop if iteration < self.plan.small_crop_until else self.plan.crop

    def begin(self, iteration: int) -> None:
        w = self.env
        self.net = w.wrap(AutoencoderLoss(self.model, self.plan.beta, self.plan.rate_weight))
        self.data = CropSource(photos(w.train, "train", w.max_side), self.device)
        start = sum(per_rank(self.batch_at(i), self.ctx) for i in range(iteration))
        self.stream = index_stream(len(self.data), self.ctx, w.seed, start=start)
        self.val = center_crops(w.val, 256, 16).to(self.device) if self.ctx.main else None

    def train(self, mode: bool) -> None:
        self.model.train(mode)

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        model, plan = self.model, self.plan
        if iteration >= plan.warmup_ae_iterations and not bool(model.quantizer.initialised):
            with torch.no_grad():
                crops = [self.data.crops(rng.integers(len(self.data), size=64).tolist(), plan.crop, rng).to(self.device) for _ in range(4)]
                z = torch.cat([model.encoder(c - 0.5) for c in crops])
            model.quantizer.kmeans_init(z.float())
            broadcast_buffers(model.quantizer)
            log(self.out, f"stage1: k-means initialised the codebooks from {z.shape[0] * z.shape[2] * z.shape[3]} latents", self.ctx)
        x = self.data.crops([next(self.stream) for _ in range(per_rank(self.batch_at(iteration), self.ctx))], self.crop_at(iteration), rng)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        loss, mse, stats = self.net(x, quantize=iteration >= plan.warmup_ae_iterations)
        return loss, {"mse": mse.item(), "psnr": psnr_of(mse.item()), **{k: v.item() for k, v in stats.items()}}

    def validate(self) -> tuple[str, dict]:
        if not self.model.quantizer.initialised:
            return "", {}
        rec = self.model.decode_codes(self.model.encode_codes(self.val))
        psnr = psnr_uint8(to_uint8(self.val), to_uint8(rec))
        return f"psnr {psnr:.2f} dB ({len(self.val)} val crops 256x256, quantized)", {"psnr": psnr}
