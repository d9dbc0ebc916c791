"""Convolutional analysis (encoder) and synthesis (decoder) transforms of the VQ-VAE.

Cheap at high resolution, wide at low resolution: most of the capacity sits where the latent
grid lives, which keeps a 768x512 image well under a second on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig


def init_weights(module: nn.Module) -> None:
    """He initialisation: PyTorch's default shrinks the signal at every layer, and with no
    normalisation layers a deep stack then learns very slowly."""
    for mod in module.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            nn.init.zeros_(mod.bias)
    for mod in module.modules():
        if isinstance(mod, ResBlock):  # residual branches start as identity
            nn.init.zeros_(mod.conv2.weight)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class Upsample(nn.Module):
    """Sub-pixel convolution: a 3x3 conv to 4x the channels, then PixelShuffle(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def stage_activation(cfg: ModelConfig, channels: int, inverse: bool) -> nn.Module:
    """The nonlinearity after a resolution change: GELU, or (cfg.gdn) compressai's GDN / IGDN,
    imported only for such a model (compressai is the bench's dependency, not the codec's)."""
    if not cfg.gdn:
        return nn.GELU()
    try:
        from compressai.layers import GDN
    except ImportError as e:
        raise ImportError(f"a model with GDN transforms (config gdn) needs compressai: pip install 'pqmim[bench]' ({e})") from e

    with torch.device("cpu"):  # its reparametrisation computes on CPU tensors: not under a meta device
        return GDN(channels, inverse=inverse)


def gdn_init(net: nn.Sequential) -> None:
    """Give the convolutions that feed a (I)GDN PyTorch's default initialisation: with He
    initialisation IGDN's x * sqrt(beta + gamma x^2) grows the signal at every stage (an
    initial MSE of ~1000 instead of 0.08), while GDN normalises what the default scale gives."""
    layers = list(net)
    for layer, after in zip(layers, layers[1:]):
        if type(after).__name__ == "GDN":
            (layer.conv if isinstance(layer, Upsample) else layer).reset_parameters()


class Encoder(nn.Module):
    """Maps an image in [-0.5, 0.5] of shape (B, 3, H, W), H and W multiples of f, to latents
    of shape (B, m * sub_dim, H / f, W / f)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        n = len(cfg.widths)
        for i, w in enumerate(cfg.widths):
            k = 5 if i == 0 else 3
            layers.append(nn.Conv2d(cin, w, k, stride=2, padding=k // 2))
            layers.append(stage_activation(cfg, w, inverse=False))
            if i == n - 2 and n > 2:  # one block at f/2 resolution
                layers.append(ResBlock(w))
            cin = w
        layers += [ResBlock(cin) for _ in range(cfg.res_blocks)]
        layers += [nn.GELU(), nn.Conv2d(cin, cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)
        init_weights(self)
        gdn_init(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Maps latents (B, m * sub_dim, h, w) back to an image (B, 3, h * f, w * f) in [-0.5, 0.5]
    (not clamped: clamp at inference)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = list(reversed(cfg.widths))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 1)]
        layers += [ResBlock(widths[0]) for _ in range(cfg.res_blocks)]
        n = len(widths)
        for i in range(n):
            cout = widths[i + 1] if i + 1 < n else 3
            layers.append(Upsample(widths[i], cout))
            if i + 1 < n:
                layers.append(stage_activation(cfg, cout, inverse=True))
                if i == 0 and n > 2:  # one block at f/2 resolution
                    layers.append(ResBlock(cout))
        self.net = nn.Sequential(*layers)
        init_weights(self)
        gdn_init(self.net)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
