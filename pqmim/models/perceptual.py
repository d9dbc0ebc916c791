"""The perceptual decoder: the default decoder's image, refined for realism.

A .pqm file holds codes; the default (MSE) decoder maps them to the pixels closest on average
to the original, which at low rates means blur. The perceptual decoder is that image passed
through a `Refiner`, a small convolutional network trained with MSE, LPIPS and a term on 8x8
block means (an optional conditional GAN term; pqmim/train/perceptual.py) to put back some of
the texture blur removes without moving colour and shading.

Invariants:
- Same files: the refiner's input is the 8-bit image the default decoder gives for the file's
  codes, a function of the codes alone, so every file decodes either way and the default path
  is untouched. The encoder, quantizer and entropy model are the shipped ones, frozen.
- Deterministic: on the CPU the refiner runs in fixed row bands like the transforms
  (pqmim/models/banded.py), in tiles of fixed size with a halo wider than its reach
  (pqmim/tiling.py): the same pixels for a file with any thread count or batch, on one machine.
- One refiner serves several models: it sees only pixels, so one set of weights is trained on
  the reconstructions of every model it lists (name and model id) in its file, and refuses to
  be applied to another model's output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import from_fields
from ..threads import fixed_pieces
from ..tiling import context_radius
from . import banded
from .autoencoder import ResBlock, Upsample, init_weights
from .weights import ModelFileError, check_state, expected_state, file_metadata, read_tensors, save_tensors

FORMAT_TAG = "pqmim-perceptual-1"


@dataclass(frozen=True)
class RefinerConfig:
    width: int = 32  # channels at 1/2 resolution
    channels: int = 96  # channels at 1/4 resolution, where the residual blocks work
    blocks: int = 3

    def __post_init__(self) -> None:
        sizes = (self.width, self.channels, self.blocks)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
            raise ValueError("invalid refiner config: sizes must be integers")
        if not (1 <= self.width <= 1024 and 1 <= self.channels <= 1024 and 0 <= self.blocks <= 32):
            raise ValueError("invalid refiner config: width and channels must be 1 to 1024, blocks 0 to 32")

    @classmethod
    def from_dict(cls, d: dict) -> "RefinerConfig":
        return from_fields(cls, d, "refiner config")


class Refiner(nn.Module):
    """(B, 3, H, W) images in [0, 1], H and W multiples of `f` -> refined images (not clamped).

    Down to 1/4 resolution with two stride-2 convolutions, residual blocks there, back up with
    sub-pixel convolutions; the output is added to the input, and the last convolution starts
    at zero, so an untrained refiner is the identity (training starts from the MSE image)."""

    f = 4  # input sides must be multiples of this

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.serves: list[str] = []  # ids of the models whose output it was trained on (from its file)
        w, c = cfg.width, cfg.channels
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(w, c, 3, stride=2, padding=1),
            nn.GELU(),
            *[ResBlock(c) for _ in range(cfg.blocks)],
            Upsample(c, w),
            nn.GELU(),
            Upsample(w, 3),
        )
        init_weights(self)
        nn.init.zeros_(self.net[-1].conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x - 0.5)

    @property
    def halo(self) -> int:
        """Pixels of context around a tile (tiling.refine_tiled): its reach, rounded up to a multiple of f."""
        return self.f * math.ceil(context_radius(self.net) / self.f)

    @torch.no_grad()
    def refine(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`forward` for decoding, clamped to [0, 1]: on the CPU image by image in fixed row
        bands (the same pixels with any thread count or batch), the inner convolutions in
        `dtype` (banded.lowered)."""
        if x.device.type != "cpu":
            return self(x).clamp(0, 1)
        net = banded.net_in(self, self.net, dtype)
        with fixed_pieces() as pool:
            return (x + banded.run(net, x - 0.5, pool)).clamp(0, 1)

    def refine_pieces(self, pieces: Iterable[torch.Tensor], dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """`refine` of each piece in turn (a large image's tiles: pqmim/tiling.py `refine_tiled`);
        each already spreads over every thread in bands."""
        for piece in pieces:
            yield self.refine(piece, dtype)

    # -- weights
    def save(self, path: str | Path, serves: list[dict], storage: str = "int8") -> None:
        """Write the weights with the models this refiner was trained for: [{name, model_id}]."""
        meta = {"format": FORMAT_TAG, "config": json.dumps(asdict(self.cfg)), "serves": json.dumps(serves)}
        save_tensors(path, self.state_dict(), meta, storage)

    @classmethod
    def load(cls, path: str | Path) -> "Refiner":
        meta, tensors = read_tensors(path, FORMAT_TAG, "pqmim perceptual decoder")
        try:
            cfg = RefinerConfig.from_dict(json.loads(meta["config"]))
            serves = json.loads(meta["serves"])
            ids = [s["model_id"] for s in serves]
        except (KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: bad perceptual decoder metadata: {e}") from None
        expected = expected_state(lambda: cls(cfg))
        check_state(path, tensors, expected)
        refiner = cls(cfg)
        refiner.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        refiner.serves = ids
        return refiner.eval()


def load_decoder(path: str | Path, model_id: str) -> "Refiner | LatentTexture":
    """The perceptual decoder in `path` for the model with id `model_id` (hex): a `Refiner`, or
    a `LatentTexture` (pqmim/models/texture.py), told apart by the file's format tag."""
    from .texture import FORMAT_TAG as TEXTURE_TAG, LatentTexture

    if file_metadata(path).get("format") == TEXTURE_TAG:
        return LatentTexture.load(path, model_id)
    return Refiner.load(path)


def served_ids(path: str | Path) -> list[str] | None:
    """The model ids a perceptual decoder file (either kind) was trained for; None for a file
    of another kind. Reads the metadata only."""
    from .texture import FORMAT_TAG as TEXTURE_TAG

    meta = file_metadata(path)
    if meta.get("format") not in (FORMAT_TAG, TEXTURE_TAG):
        return None
    try:
        return [s["model_id"] for s in json.loads(meta["serves"])]
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: bad perceptual decoder metadata: {e}") from None
