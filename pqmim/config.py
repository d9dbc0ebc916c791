"""Model configuration: everything that defines a pqmim model's architecture and coding schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VQ-VAE, the product quantizer and the MIM entropy model.

    The rate is set by the quantizer: a latent position carries at most ``m * log2(k)`` bits,
    i.e. ``m * log2(k) / f**2`` bits per pixel before entropy coding.
    """

    # autoencoder
    widths: tuple[int, ...] = (48, 96, 160, 256)  # one stride-2 stage each: f = 2 ** len(widths)
    res_blocks: int = 2  # residual blocks at the latent resolution (encoder and decoder)
    # GDN after each stride-2 convolution of the encoder, IGDN after each upsampling of the
    # decoder, instead of GELU (Balle et al.; compressai's layers): a yardstick trial (TRAINING.md)
    gdn: bool = False
    # product quantizer
    m: int = 8  # sub-vectors per latent vector
    k: int = 256  # code words per sub-codebook
    sub_dim: int = 8  # dimension of one sub-vector; latent dimension = m * sub_dim
    # finite scalar quantization (Mentzer et al. 2023) instead of learned code words: each
    # sub-vector's channels are bounded and rounded to these numbers of levels, a fixed grid of
    # k = prod(fsq) code words (sub_dim = len(fsq)); empty: learned codebooks
    fsq: tuple[int, ...] = ()
    # MIM entropy model (a bidirectional transformer over windows of the latent grid)
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    window: int = 16  # the transformer sees windows of at most window x window positions
    # coding schedule
    steps: int = 8  # S: positions are revealed in S groups
    alpha: float = 2.2  # cumulative share revealed after step s is (s/S) ** alpha
    # block-causal ("two-stream") attention: a revealed code attends only to codes revealed at
    # the same or earlier steps, so its activations never change once computed and the coder
    # caches them (M2T, Mentzer et al. 2023): about 4x less work per image than full attention
    causal: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "fsq", tuple(self.fsq))
        ints = [
            *self.widths,
            self.res_blocks,
            self.m,
            self.k,
            self.sub_dim,
            self.d_model,
            self.n_layers,
            self.n_heads,
            self.window,
            self.steps,
            *self.fsq,
        ]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ValueError("invalid model config: sizes must be integers")
        if not isinstance(self.causal, bool) or not isinstance(self.gdn, bool):
            raise ValueError("invalid model config: causal and gdn must be true or false")
        # upper bounds keep a hostile model file from asking for terabytes before its weights are read
        checks = {
            "widths must hold 1 to 6 stages of 1 to 4096 channels": 1 <= len(self.widths) <= 6 and all(1 <= w <= 4096 for w in self.widths),
            "res_blocks must be 0 to 32": 0 <= self.res_blocks <= 32,
            "m must be 1 to 256, sub_dim 1 to 1024": 1 <= self.m <= 256 and 1 <= self.sub_dim <= 1024,
            "d_model must be 1 to 8192, n_layers 1 to 64, n_heads >= 1": 1 <= self.d_model <= 8192
            and 1 <= self.n_layers <= 64
            and self.n_heads >= 1,
            "k must be >= 2 and <= 65536": 2 <= self.k <= 65536,
            "d_model must be divisible by n_heads": self.d_model % self.n_heads == 0,
            "window must be 1 to 64": 1 <= self.window <= 64,
            "steps must be 1 to 64": 1 <= self.steps <= 64,
            "fsq must list sub_dim level counts of 2 to 256 whose product is k": not self.fsq
            or (len(self.fsq) == self.sub_dim and all(2 <= v <= 256 for v in self.fsq) and math.prod(self.fsq) == self.k),
            "alpha must be a number > 0": isinstance(self.alpha, (int, float)) and 0 < self.alpha < 100,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid model config: {message}")

    @property
    def f(self) -> int:
        """Downsampling factor between pixels and latent positions."""
        return 2 ** len(self.widths)

    @property
    def latent_dim(self) -> int:
        return self.m * self.sub_dim

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        d["fsq"] = list(self.fsq)
        for flag in ("causal", "gdn", "fsq"):  # absent in models made before the field existed: their ids must not change
            if not d[flag]:
                del d[flag]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return from_fields(cls, d, "model config")


__all__ = ["ModelConfig"]


def from_fields(cls, d: dict[str, Any], what: str):
    """The dataclass `cls` built from a config dict (a model file's metadata, a card), refusing
    fields it does not have: ValueError "invalid <what>: unknown fields [...]"."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"invalid {what}: unknown fields {sorted(unknown)}")
    return cls(**d)
