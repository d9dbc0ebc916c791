"""The latent-texture perceptual decoder: texture drawn in a pretrained autoencoder's latent space.

At the lowest rates the default decoder's image is smooth where the original had grain, foliage
or fabric: the codes say little about texture, and an MSE decoder averages over what they leave
open. `LatentTexture` puts texture back where a learned model expects it. It maps the default
decoder's image `x` into taef2's latent space (pqmim/models/taef2.py: 32 channels at 1/8
resolution, trained on far more photos than ours), where a small head predicts, position by
position, the mean `mu` and spread `sigma` of what the coding lost there,
r = enc(original) - enc(x) (fitted per pqmim model: pqmim/train/texture.py), and adds a draw:

    z = enc(x);  z' = z + a * mu + strength * sigma^p * n,  n ~ N(0, 1) from a fixed seed (with `sharpen`,
                                                              blue: its 3x3 local mean partly taken out)
    out = x + dec(z') - dec(z)          (`decodes` 2, before 0.12.2)
    out = x + (dec(z') - x)             (`decodes` 1, since 0.12.2: one taef2 decoding fewer)

with p = `power` (1 before 0.12.0; 2 since: texture drawn where the head is unsure of what was lost;
strength 0.8 since 0.12.1) and a = `mean` (1 as shipped: the predicted mean is what the val scenes'
FID gains most from and what photos of people and objects lose most by, models/TRAINING.md). With
`gate` (0.13.0) a is `mean` times the head's `TextureGate`, a number in [0, 1] per tile read off
the tile's own latent statistics: the mean where it is predicted to bring the tile nearer the
original in Inception's eyes, none where it is predicted to take it further (bench/texture_gate.py).

Adding the difference of two decodes, not dec(z') itself, keeps what taef2's own round trip
would lose (it is not lossless either): where the head predicts nothing, out = x. With one
decoding, what taef2's round trip loses of x's detail is replaced by its own, and the flatten
below keeps x's colour and shading: out = dec(z') less its local mean, plus x's local mean. With
`flatten` r the change's local mean (a (2r + 1)-pixel box, applied twice) is taken out first, so
the slow part of it, a shift of colour and shading, stays the default decoder's (32 as shipped).

Invariants:
- Same files: its input is the default decoder's 8-bit image, a function of the codes, so every
  file decodes either way and the default path is untouched.
- Deterministic: the noise comes from a generator seeded by the tile's own pixels, the gate from
  the tile's own latents (reduced by single-threaded calls, as everything in `refine_pieces`), and each tile
  of fixed size (pqmim/tiling.py `refine_tiled`) is computed in row bands fixed by each layer's
  height (pqmim/models/banded.py), each band one single-threaded call; taef2's GroupNorm spans
  its input, so it runs in one call on its whole (1/8-resolution) input, between bands. Every
  pass gets channels-last input with that layout's own strides (a view that merely passes for
  channels-last is convolved as NCHW: other arithmetic). A file gives the same perceptual
  pixels with any thread count or batch, on one
  machine and transforms setting (bfloat16 passes give other pixels than float32 ones, by about
  46 dB PSNR on kodim01, and may differ between bfloat16 ISAs, as the default decoder's do).
- One file serves several models: taef2 is shared, one head per model, keyed by the model id
  it was fitted on; loading picks the head of one model and refuses a model it has none for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_fields
from ..threads import fixed_pieces
from . import banded
from .taef2 import taef2_decoder, taef2_encoder
from .weights import ModelFileError, check_state, expected_state, read_tensors, save_tensors

FORMAT_TAG = "pqmim-texture-1"
LATENT = 32  # taef2's latent channels
TAEF2_SOURCE = "github madebyollin/taesd taef2_encoder.pth, taef2_decoder.pth (MIT, models/LICENSE.taesd)"  # for cards


@dataclass(frozen=True)
class TextureConfig:
    channels: int = 64  # the head's hidden channels
    strength: float = 0.6  # of the predicted spread: the FID-best of 0.6 and 1.0 at q1 (models/TRAINING.md)
    flatten: int = 0  # radius in pixels: remove the change's local mean (a box blur, twice), 0 = keep it
    sharpen: float = 0.0  # of the noise's 3x3 local mean taken out (blue noise); 0 = white noise, as before 0.11
    power: float = 1.0  # the draw's spread is strength * sigma^power: 1 as predicted, as before 0.12; 2 more where sigma is large
    decodes: int = 2  # taef2 decodings a tile: 2, change dec(z') - dec(z), as before 0.12.2; 1, dec(z') - x
    mean: float = 1.0  # of the predicted mean mu added: 1 as before 0.12.5; 0 draws the noise about z alone
    gate: bool = False  # each head has a TextureGate: mu scaled per tile by what it reads off the tile (0.13)

    def __post_init__(self) -> None:
        if not (isinstance(self.channels, int) and not isinstance(self.channels, bool) and 1 <= self.channels <= 1024):
            raise ValueError("invalid texture config: channels must be an integer from 1 to 1024")
        if not (isinstance(self.strength, (int, float)) and 0 <= self.strength <= 4):
            raise ValueError("invalid texture config: strength must be a number from 0 to 4")
        if not (isinstance(self.flatten, int) and not isinstance(self.flatten, bool) and 0 <= self.flatten <= 64):
            raise ValueError("invalid texture config: flatten must be an integer from 0 to 64")
        if not (isinstance(self.sharpen, (int, float)) and not isinstance(self.sharpen, bool) and 0 <= self.sharpen <= 1):
            raise ValueError("invalid texture config: sharpen must be a number from 0 to 1")
        if not (isinstance(self.power, (int, float)) and not isinstance(self.power, bool) and 0 <= self.power <= 4):
            raise ValueError("invalid texture config: power must be a number from 0 to 4")
        if self.decodes not in (1, 2) or isinstance(self.decodes, bool):
            raise ValueError("invalid texture config: decodes must be 1 or 2")
        if not (isinstance(self.mean, (int, float)) and not isinstance(self.mean, bool) and 0 <= self.mean <= 1):
            raise ValueError("invalid texture config: mean must be a number from 0 to 1")
        if not isinstance(self.gate, bool):
            raise ValueError("invalid texture config: gate must be true or false")

    @classmethod
    def from_dict(cls, d: dict) -> "TextureConfig":
        return from_fields(cls, d, "texture config")


class TextureGate(nn.Module):
    """How much of the predicted mean a tile gets: clamp(w . s + b, 0, 1), s the tile's `STATISTICS`
    (per latent channel: the mean and standard deviation of z, the mean of mu and of |mu|, the
    mean and standard deviation of log sigma), w and b fitted per model (bench/texture_gate.py)
    to predict from them whether the mean brings the tile's Inception features nearer the
    original's (it does on the val scenes and costs on photos of people and objects: models/TRAINING.md)."""

    STATISTICS = 6 * LATENT

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(self.STATISTICS))
        self.bias = nn.Parameter(torch.ones(1))  # as made: 1 everywhere, the ungated draw

    @classmethod
    def open_state(cls) -> dict[str, torch.Tensor]:
        """A head's gate entries (`gate.*`) as made: 1 everywhere, the ungated draw bit for bit."""
        return {f"gate.{k}": v for k, v in cls().state_dict().items()}

    @staticmethod
    def statistics(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """(B, 32, h, w) each -> (B, STATISTICS), float32."""
        z, mu, log_sigma = (t.float().flatten(2) for t in (z, mu, log_sigma))
        return torch.cat([z.mean(2), z.std(2), mu.mean(2), mu.abs().mean(2), log_sigma.mean(2), log_sigma.std(2)], 1)

    def forward(self, z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """-> (B, 1, 1, 1) in [0, 1]."""
        return (self.statistics(z, mu, log_sigma) @ self.weight + self.bias).clamp(0, 1)[:, None, None, None]


class TextureHead(nn.Module):
    """(B, 32, h, w) taef2 latents -> mean and log spread, each (B, 32, h, w), of what the coding
    lost there. Four 3x3 convolutions: it sees 9x9 latent positions (72x72 pixels). With `gate`,
    a TextureGate too (used by `LatentTexture.drawn`)."""

    def __init__(self, channels: int = 64, gate: bool = False) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(LATENT, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * LATENT, 3, padding=1),
        )  # fmt: skip
        self.gate = TextureGate() if gate else None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(z)
        return out[:, :LATENT], out[:, LATENT:].clamp(-6, 3)  # log sigma kept where exp is tame


class LatentTexture(nn.Module):
    """(B, 3, H, W) images in [0, 1], H and W multiples of `f` -> the same with texture added."""

    f = 8  # taef2's downsampling: input sides must be multiples of this
    halo = 32  # pixels of context around each tile (4 latent positions; the head's reach and more)

    def __init__(self, cfg: TextureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = taef2_encoder(), taef2_decoder()
        self.head = TextureHead(cfg.channels, cfg.gate)
        self.serves: list[str] = []  # ids of the models its file has a head for

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)  # (B, 32, H/8, W/8)
        return self.finish(x, self.decoder(self.drawn(z, noise)) - (self.decoder(z) if self.cfg.decodes == 2 else x))

    def drawn(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z + mean * mu + strength * sigma^power * noise: the latents with texture drawn in (float32).
        A power above 1 draws more where the head is unsure what was lost (edges, foliage) and
        less where it is sure (flat sky): held-out FID and KID prefer it (models/TRAINING.md, 0.12.0).
        `mean` 1 times mu is mu, bit for bit: files of `mean` 1 decode to the pixels they did."""
        z = z.float()
        mu, log_sigma = self.head(z)
        mean = self.cfg.mean * self.head.gate(z, mu, log_sigma) if self.head.gate is not None else self.cfg.mean
        return z + mean * mu + self.cfg.strength * (self.cfg.power * log_sigma).exp() * noise

    def finish(self, x: torch.Tensor, change: torch.Tensor, pool: Executor | None = None) -> torch.Tensor:
        """x plus the change dec(z') - dec(z) (or dec(z') - x), less its local mean where `flatten`
        asks. With a `pool` the box runs on it in pieces (`STRIP` rows for a row box, as many
        columns for a column box: each piece holds whole windows, so every mean is the sum it is
        in one call)."""
        if self.cfg.flatten:  # texture only: colour and shading stay the default decoder's
            r = self.cfg.flatten
            rows = lambda t: F.avg_pool2d(t, (1, 2 * r + 1), stride=1, padding=(0, r), count_include_pad=False)  # noqa: E731
            cols = lambda t: F.avg_pool2d(t, (2 * r + 1, 1), stride=1, padding=(r, 0), count_include_pad=False)  # noqa: E731
            mean = change
            for _ in range(2):  # a box is a row box then a column box: 2(2r + 1) reads a pixel, not (2r + 1)^2
                mean = _in_strips(pool, rows, mean, 2)
                mean = _in_strips(pool, cols, mean, 3)
            change = change - mean
        return x + change

    @torch.no_grad()
    def refine(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`forward` for decoding, clamped to [0, 1], image by image (`refine_pieces`)."""
        return torch.cat(list(self.refine_pieces(x.split(1), dtype)))

    @torch.no_grad()
    def refine_pieces(self, pieces: Iterable[torch.Tensor], dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """`refine` of each (1, 3, h, w) piece, yielded in order; sizes may differ (a large
        image's tiles: pqmim/tiling.py `refine_tiled`). Each piece's noise is seeded by its own
        pixels. On the CPU taef2's passes run in fixed row bands on the fixed_pieces pool
        (`banded.run`: every band one single-threaded call, the mid blocks' GroupNorm one call on
        its whole input), in `dtype` (the codec's transforms setting: bfloat16 under autocast
        where the CPU has it natively, about 3x faster per pass on AMX; the head and the noise
        stay in float32). Bands fixed by each layer's height, whichever thread computes them:
        the same pixels with any thread count or batch, and a single-tile image uses every
        thread (before 0.12.3 a tile was one single-threaded call: 6 s of taef2 on one core for
        a 768x512 image here, whatever the thread count)."""
        if next(self.parameters()).device.type != "cpu":
            for p in pieces:
                yield self(p, self._noise(p).to(p.device)).clamp(0, 1)
            return
        autocast = torch.bfloat16 if dtype == torch.bfloat16 else None
        with fixed_pieces() as pool:
            # outputs channels-last, as a whole pass gives them: the head's convolutions and the
            # flatten's box sums add in another order in another layout (other pixels than 0.12.2's)
            taef2 = lambda net, v: banded.run(net, v, pool, autocast).float().contiguous(memory_format=torch.channels_last)  # noqa: E731
            for p in pieces:
                # channels-last with that layout's own strides, the RGB input too: a view that
                # merely passes for channels-last (image[None] of a channels-last batch) is
                # convolved as NCHW, other arithmetic and 2.7x slower (encoder, kodim01)
                z = taef2(self.encoder, p.clone(memory_format=torch.channels_last))
                change = taef2(self.decoder, self.drawn(z, self._noise(p))) - (taef2(self.decoder, z) if self.cfg.decodes == 2 else p)
                yield self.finish(p, change, pool).clamp(0, 1)

    def _noise(self, piece: torch.Tensor) -> torch.Tensor:
        """The (1, 32, h/8, w/8) noise for a (1, 3, h, w) piece, seeded by its pixels: standard
        normal, or with `sharpen` a its 3x3 local mean taken out, n - a * box(n), scaled back to
        unit variance (a draw one position wider on each side, so every position has its box).
        Less of the noise's low frequencies: taef2 draws finer grain from it, which held-out FID
        prefers (models/TRAINING.md, 0.11.0; noise with the residual's own covariance was worse)."""
        _, _, h, w = piece.shape
        a, m = self.cfg.sharpen, 1 if self.cfg.sharpen else 0
        gen = torch.Generator().manual_seed(seed_of(piece[0]))
        n = torch.randn((1, LATENT, h // self.f + 2 * m, w // self.f + 2 * m), generator=gen)
        if not a:
            return n
        centre = n[:, :, 1:-1, 1:-1]
        return (centre - a * F.avg_pool2d(n, 3, stride=1)) / ((1 - a / 9) ** 2 + 8 * (a / 9) ** 2) ** 0.5

    # -- weights
    def save(self, path: str | Path, heads: dict[str, dict[str, torch.Tensor]], serves: list[dict], storage: str = "int8") -> None:
        """Write taef2 (as `self` holds it) and one head state per model id: `heads` {id: state},
        `serves` [{name, model_id}] naming them."""
        if sorted(heads) != sorted(s["model_id"] for s in serves):
            raise ValueError("every model served needs exactly one head")
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}
        state.update({f"heads.{mid}.{k}": v for mid, h in heads.items() for k, v in h.items()})
        meta = {"format": FORMAT_TAG, "config": json.dumps(asdict(self.cfg)), "serves": json.dumps(serves)}
        save_tensors(path, state, meta, storage)

    @classmethod
    def load(cls, path: str | Path, model_id: str) -> "LatentTexture":
        """taef2 and the head fitted for `model_id` (hex); ModelFileError for a bad file, ValueError
        when it has no head for that model."""
        meta, tensors = read_tensors(path, FORMAT_TAG, "pqmim texture decoder")
        try:
            cfg = TextureConfig.from_dict(json.loads(meta["config"]))
            ids = [s["model_id"] for s in json.loads(meta["serves"])]
        except (KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: bad texture decoder metadata: {e}") from None
        if model_id not in ids:
            raise ValueError(f"{path}: no texture head for model id {model_id} (it has heads for: {', '.join(ids) or 'none'})")
        expected = expected_state(lambda: cls(cfg))
        shared = {k: v for k, v in expected.items() if not k.startswith("head.")}
        heads = {f"heads.{mid}.{k[len('head.') :]}": v for mid in ids for k, v in expected.items() if k.startswith("head.")}
        check_state(path, tensors, {**shared, **heads})
        texture = cls(cfg)
        mine = {"head." + k[len(f"heads.{model_id}.") :]: v for k, v in tensors.items() if k.startswith(f"heads.{model_id}.")}
        state = {**{k: tensors[k] for k in shared}, **mine}
        texture.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        texture.serves = ids
        return texture.eval()


STRIP = 64  # rows (or columns) of a piece of the flatten's box


def _in_strips(pool: Executor | None, fn: Callable, t: torch.Tensor, dim: int) -> torch.Tensor:
    """fn(t) for an fn that maps each slice of `t` along `dim` to itself (a box along the other
    axis), in strips of `STRIP` along `dim` on the pool; one call without one."""
    if pool is None:
        return fn(t)
    return torch.cat(list(pool.map(fn, t.split(STRIP, dim))), dim)


def seed_of(image: torch.Tensor) -> int:
    """A generator seed fixed by an image's (3, H, W) 8-bit pixels, hashed channel-major (the
    noise is part of the decoded image: another byte order, e.g. `image.to_uint8`'s HxWx3, would
    draw other noise and change every file's perceptual pixels)."""
    levels = torch.round(image.detach().float().cpu() * 255).to(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.sha256(levels).digest()[:8], "little")
