"""taef2's architecture (github madebyollin/taesd, MIT: models/LICENSE.taesd): a small pretrained
autoencoder, RGB in [0, 1] to 32 channels at 1/8 resolution and back, distilled from the FLUX.2
VAE. The module indices are the keys of its published weight files (taef2_encoder.pth,
taef2_decoder.pth), so they load as they are.

Its mid blocks hold a GroupNorm whose statistics span the whole input: its output for a pixel
depends on everything it is given, so a caller that needs pixels fixed by the file computes
it on inputs of fixed extent (pqmim/models/texture.py).
"""

from __future__ import annotations

import torch
from torch import nn


def conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """taef2's block: conv-ReLU-conv-ReLU-conv plus the input, then ReLU; a mid block first adds a
    1x1 conv - GroupNorm - ReLU - 1x1 conv branch to its input."""

    def __init__(self, n: int, mid: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.pool = (
            nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(), nn.Conv2d(4 * n, n, 1, bias=False))
            if mid
            else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def taef2_encoder() -> nn.Sequential:
    """RGB in [0, 1] (B, 3, H, W) -> (B, 32, H/8, W/8); the indices are the weight file's keys."""
    down = lambda: conv(64, 64, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(
        conv(3, 64), Block(64), down(), Block(64), Block(64), Block(64), down(), Block(64), Block(64), Block(64), down(),
        Block(64, True), Block(64, True), Block(64, True), conv(64, 32),
    )  # fmt: skip


def taef2_decoder() -> nn.Sequential:
    """(B, 32, h, w) -> RGB in about [0, 1] (B, 3, 8h, 8w)."""
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731
    return nn.Sequential(
        Clamp(), conv(32, 64), nn.ReLU(), Block(64, True), Block(64, True), Block(64, True),
        up(), conv(64, 64, bias=False), Block(64), Block(64), Block(64),
        up(), conv(64, 64, bias=False), Block(64), Block(64), Block(64),
        up(), conv(64, 64, bias=False), Block(64), conv(64, 3),
    )  # fmt: skip
