"""Product quantizer: each latent vector is split into m sub-vectors, each snapped to the nearest
of k code words of its own codebook. Or finite scalar quantization (FSQ, Mentzer et al. 2023):
the same codes, on a fixed grid instead of learned code words.

Codebooks are learned by exponential moving averages (online k-means), initialised by k-means on
real encoder outputs, and dead code words are restarted from the current batch, so that the
codebooks are actually used (watch ``perplexity`` in the training log). Under distributed
training the statistics are summed over all ranks and restarts come from rank 0, so every rank
holds the same codebooks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import active as _distributed


class ProductQuantizer(nn.Module):
    def __init__(self, m: int, k: int, sub_dim: int, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.m, self.k, self.sub_dim = m, k, sub_dim
        self.decay, self.eps = decay, eps
        self.register_buffer("codebooks", torch.empty(m, k, sub_dim).normal_(0, 0.1))  # no arithmetic: weights.expected_state
        self.register_buffer("ema_count", torch.ones(m, k))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    # -- shapes: latents (B, m*sub_dim, h, w) <-> sub-vectors (m, N, sub_dim) <-> codes (B, m, h, w)
    def _split(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return z.reshape(b, self.m, self.sub_dim, h * w).permute(1, 0, 3, 2).reshape(self.m, -1, self.sub_dim)

    def codes_for(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code word per sub-vector: (B, m*sub_dim, h, w) -> int64 codes (B, m, h, w)."""
        b, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):  # under training's bf16 autocast, bmm would pick wrong neighbours
            x = self._split(z.float())
            cb = self.codebooks.float()
            # squared distances (m, N, k) without the constant |x|^2 term
            dist = (cb * cb).sum(-1).unsqueeze(1) - 2 * torch.bmm(x, cb.transpose(1, 2))
            idx = dist.argmin(-1)  # (m, N)
        return idx.reshape(self.m, b, h, w).permute(1, 0, 2, 3).contiguous()

    def latents_for(self, codes: torch.Tensor) -> torch.Tensor:
        """Code words for codes (B, m, h, w) -> latents (B, m*sub_dim, h, w)."""
        b, m, h, w = codes.shape
        gathered = torch.stack([self.codebooks[i][codes[:, i]] for i in range(m)], dim=1)  # B,m,h,w,d
        return gathered.permute(0, 1, 4, 2, 3).reshape(b, m * self.sub_dim, h, w)

    # -- training
    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int = 15) -> None:
        """Initialise each codebook by k-means on sub-vectors of real latents (B, D, h, w)."""
        x = self._split(z.float())  # m, N, d
        n = x.shape[1]
        g = torch.Generator().manual_seed(0)
        for i in range(self.m):
            xi = x[i]
            c = xi[torch.randint(n, (self.k,), generator=g)].clone()
            for _ in range(iters):
                assign = torch.cdist(xi, c).argmin(1)
                sums = torch.zeros_like(c).index_add_(0, assign, xi)
                counts = torch.bincount(assign, minlength=self.k).float()
                empty = counts == 0
                c = torch.where(empty[:, None], xi[torch.randint(n, (self.k,), generator=g)], sums / counts.clamp(min=1)[:, None])
            self.codebooks[i] = c
        self.ema_sum.copy_(self.codebooks)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    def _usage(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, m, h, w) -> each code word's count in them (m, k), and the mean
        per-codebook perplexity of that usage."""
        counts = torch.stack([torch.bincount(codes[:, i].reshape(-1), minlength=self.k) for i in range(self.m)]).float()
        p = counts / counts.sum(-1, keepdim=True)
        return counts, torch.exp(-(p * torch.log(p + 1e-10)).sum(-1)).mean()

    def soft_bits(self, z: torch.Tensor) -> torch.Tensor:
        """A differentiable estimate of the rate of latents (B, m*sub_dim, h, w), in bits per
        latent position: the cross-entropy of soft assignments to the code words (a softmax of
        minus the squared distances, at the batch's mean nearest distance as temperature)
        against the codebooks' usage (the EMA counts). Its gradient moves latents towards code
        words that are used often, which lowers the codes' entropy: a rate-aware stage 1."""
        x = self._split(z.float())  # m, N, d
        cb = self.codebooks.float()
        d2 = (x * x).sum(-1, keepdim=True) + (cb * cb).sum(-1).unsqueeze(1) - 2 * torch.bmm(x, cb.transpose(1, 2))  # m, N, k
        tau = d2.min(-1).values.mean().detach().clamp(min=1e-8)
        usage = self.ema_count / self.ema_count.sum(-1, keepdim=True)
        bits = -(torch.softmax(-d2 / tau, -1) * torch.log2(usage + 1e-10).unsqueeze(1)).sum(-1)  # m, N
        return bits.sum(0).mean()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantize latents with a straight-through gradient.

        Returns (quantized latents, codes, stats) where stats holds the commitment loss and the
        mean per-codebook perplexity of this batch.
        """
        codes = self.codes_for(z.detach())
        zq = self.latents_for(codes)
        commit = F.mse_loss(z, zq.detach())
        onehot_counts, perplexity = self._usage(codes)
        if self.training:
            self._ema_update(z.detach(), codes, onehot_counts)
        zq = z + (zq - z).detach()
        return zq, codes, {"commit": commit, "perplexity": perplexity}

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        x = self._split(z.float())  # m, N, d
        idx = codes.permute(1, 0, 2, 3).reshape(self.m, -1)
        sums = torch.zeros_like(self.ema_sum)
        for i in range(self.m):
            sums[i].index_add_(0, idx[i], x[i])
        if _distributed():
            counts = counts.clone()
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum(-1, keepdim=True)
        count = (self.ema_count + self.eps) / (n + self.k * self.eps) * n
        self.codebooks.copy_(self.ema_sum / count.unsqueeze(-1))
        # restart dead code words from random sub-vectors of this batch
        dead = self.ema_count < 0.03 * n / self.k
        if dead.any():
            for i in range(self.m):
                d = dead[i].nonzero().squeeze(1)
                if d.numel():
                    pick = x[i][torch.randint(x.shape[1], (d.numel(),), device=x.device)]
                    c0 = 0.06 * n[i] / self.k
                    self.codebooks[i, d] = pick
                    self.ema_sum[i, d] = pick * c0
                    self.ema_count[i, d] = c0
            if _distributed():  # the same dead words everywhere (identical counts): take rank 0's picks
                for b in (self.codebooks, self.ema_sum, self.ema_count):
                    dist.broadcast(b, 0)


class FiniteScalarQuantizer(ProductQuantizer):
    """FSQ as a product quantizer with a fixed grid: each channel of a sub-vector is bounded
    (tanh) to `levels[j]` values and rounded; a sub-vector's code is its mixed-radix index, and
    its code word the grid point scaled to [-1, 1]. Nothing is learned (no codebook loss, no
    dead codes); the codebooks buffer holds the grid, so decoding and the entropy coder's
    expected code words work as for learned code words.
    """

    def __init__(self, m: int, levels: tuple[int, ...]) -> None:
        super().__init__(m, math.prod(levels), len(levels))
        self.levels = tuple(levels)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        radix = torch.cumprod(torch.tensor((1, *self.levels[:-1])), 0)
        self.register_buffer("radix", radix, persistent=False)  # code = sum(digit_j * radix_j)
        self.register_buffer("half_width", (lv - 1) / 2, persistent=False)
        digits = (torch.arange(self.k)[:, None] // radix) % torch.tensor(self.levels)  # k, sub_dim
        grid = ((digits - self.half_width) / self.half_width).expand(m, -1, -1).contiguous()
        # the grid follows from the config, so model files do not hold it (nor can contradict it)
        self.register_buffer("codebooks", grid, persistent=False)
        self.register_buffer("ema_sum", torch.zeros(0), persistent=False)
        self.initialised.fill_(True)

    def _digits(self, z: torch.Tensor) -> torch.Tensor:
        """Bounded, unrounded digits in [0, levels - 1] of latents (B, m*sub_dim, h, w), same shape."""
        b, _, h, w = z.shape
        half = self.half_width.view(1, 1, -1, 1, 1)
        return (torch.tanh(z.float().view(b, self.m, self.sub_dim, h, w)) * half * (1 - 1e-3) + half).view(b, -1, h, w)

    def _scaled(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits (B, m*sub_dim, h, w) -> values in [-1, 1], where the code words lie."""
        b, _, h, w = digits.shape
        half = self.half_width.view(1, 1, -1, 1, 1)
        return ((digits.view(b, self.m, self.sub_dim, h, w) - half) / half).view(b, -1, h, w)

    def soft_bits(self, z: torch.Tensor) -> torch.Tensor:
        return super().soft_bits(self._scaled(self._digits(z)))

    def codes_for(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        digits = self._digits(z).round().long().view(b, self.m, self.sub_dim, h, w)
        return (digits * self.radix.view(1, 1, -1, 1, 1)).sum(2)

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int = 15) -> None:
        pass  # a fixed grid

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        digits = self._digits(z)
        zq = self._scaled(digits + (digits.round() - digits).detach())  # straight-through
        codes = self.codes_for(z.detach())
        counts, perplexity = self._usage(codes)
        if self.training:  # usage only (for soft_bits): the grid itself never moves
            if _distributed():
                counts = counts.clone()
                dist.all_reduce(counts)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        return zq, codes, {"commit": torch.zeros((), device=z.device), "perplexity": perplexity}
