"""Large images, tile by tile: memory stays bounded and time grows linearly with the pixels.

A convolutional transform's output at one position depends only on inputs within its context
radius. Computing a tile together with a halo at least that wide gives the same values as the
whole image at once (up to float rounding), so the core of each tile is kept and the halo
thrown away. Images that fit in one tile take the single-pass path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .image import to_tensor, to_uint8

TILE_PIXELS = 1024  # core side of a tile, in pixels: ~0.5 GB peak for the shipped models


def context_radius(net: nn.Module) -> float:
    """How far (in input positions) an output of `net` sees: a stack of convolutions, residual
    blocks and pixel shuffles, walked in the order its modules are defined (= applied)."""
    radius, step = 0.0, 1.0  # step: input positions per position of the current layer
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            radius += (mod.kernel_size[0] // 2) * mod.dilation[0] * step
            step *= mod.stride[0]
        elif isinstance(mod, nn.PixelShuffle):
            step /= mod.upscale_factor
    return radius


def spans(n: int, core: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of length `core` (the last may be shorter) covering range(n)."""
    return [(a, min(a + core, n)) for a in range(0, n, core)]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_tiled(model, padded: np.ndarray, tile: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes (m, h, w) of an HxWx3 uint8 image whose sides are multiples of f (the analysis in
    `dtype`: see PQMIM.encode_codes)."""
    f, m = model.cfg.f, model.cfg.m
    h, w = padded.shape[0] // f, padded.shape[1] // f
    halo = math.ceil(context_radius(model.encoder) / f)  # in latent positions
    codes = torch.empty(m, h, w, dtype=torch.long)
    for y0, y1 in spans(h, tile):
        for x0, x1 in spans(w, tile):
            a, b = max(0, y0 - halo), min(h, y1 + halo)
            c, d = max(0, x0 - halo), min(w, x1 + halo)
            x = to_tensor(padded[a * f : b * f, c * f : d * f]).to(model_device(model))
            codes[:, y0:y1, x0:x1] = model.encode_codes(x, dtype)[0, :, y0 - a : y1 - a, x0 - c : x1 - c].cpu()
    return codes


@torch.no_grad()
def decode_tiled(model, z: torch.Tensor, tile: int, width: int, height: int, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """HxWx3 uint8 image of a latent grid (m*sub_dim, h, w), cropped to width x height (the
    synthesis in `dtype`: see PQMIM.decode_latents)."""
    f = model.cfg.f
    _, h, w = z.shape
    halo = math.ceil(context_radius(model.decoder))  # the decoder's input is the latent grid
    out = np.empty((height, width, 3), dtype=np.uint8)
    for y0, y1 in spans(h, tile):
        for x0, x1 in spans(w, tile):
            a, b = max(0, y0 - halo), min(h, y1 + halo)
            c, d = max(0, x0 - halo), min(w, x1 + halo)
            x = model.decode_latents(z[None, :, a:b, c:d].to(model_device(model)), dtype)[0].cpu()
            x = x[:, (y0 - a) * f : (y1 - a) * f, (x0 - c) * f : (x1 - c) * f]
            py0, px0 = y0 * f, x0 * f
            py1, px1 = min(y1 * f, height), min(x1 * f, width)
            out[py0:py1, px0:px1] = to_uint8(x[:, : py1 - py0, : px1 - px0])
    return out


@torch.no_grad()
def refine_tiled(refiner, rgb: np.ndarray, tile: int, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The perceptual decoder's HxWx3 uint8 image of the default decoder's (a `Refiner`,
    pqmim/models/perceptual.py, or a `LatentTexture`, pqmim/models/texture.py): edge-padded to
    multiples of the decoder's stride `f`, tiles of `tile` pixels with a halo of `halo` pixels
    (both multiples of the stride, so every tile sees the stride grid the whole image has). A
    Refiner's halo is wider than its reach; a LatentTexture's GroupNorm reaches the whole tile,
    so an image larger than one tile gets slightly other pixels than it would in one piece."""
    f = refiner.f
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -height % f), (0, -width % f), (0, 0)), mode="edge")
    h, w = padded.shape[:2]
    tile = max(f, tile - tile % f)
    halo = refiner.halo
    out = np.empty_like(rgb)
    boxes = [
        (y0, y1, x0, x1, max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))
        for y0, y1 in spans(h, tile)
        for x0, x1 in spans(w, tile)
    ]
    device = model_device(refiner)
    tiles = (to_tensor(padded[a:b, c:d]).to(device) for *_, a, b, c, d in boxes)  # made as the refiner takes them
    for (y0, y1, x0, x1, a, b, c, d), refined in zip(boxes, refiner.refine_pieces(tiles, dtype)):
        core = to_uint8(refined[0, :, y0 - a : y1 - a, x0 - c : x1 - c])
        out[y0 : min(y1, height), x0 : min(x1, width)] = core[: min(y1, height) - y0, : min(x1, width) - x0]
    return out
