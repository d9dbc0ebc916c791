"""Model configuration: everything that defines a pqmim model's architecture and coding schedule."""

from __future__ import annotations

import dataclasses
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
    # product quantizer
    m: int = 8  # sub-vectors per latent vector
    k: int = 256  # code words per sub-codebook
    sub_dim: int = 8  # dimension of one sub-vector; latent dimension = m * sub_dim
    # MIM entropy model (a bidirectional transformer over windows of the latent grid)
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    window: int = 16  # the transformer sees windows of at most window x window positions
    # coding schedule
    steps: int = 8  # S: positions are revealed in S groups
    alpha: float = 2.2  # cumulative share revealed after step s is (s/S) ** alpha

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        checks = {
            "widths must hold 1 to 6 stages": 1 <= len(self.widths) <= 6,
            "m, k, sub_dim must be >= 1": min(self.m, self.k, self.sub_dim) >= 1,
            "k must be >= 2 and <= 65536": 2 <= self.k <= 65536,
            "d_model must be divisible by n_heads": self.d_model % self.n_heads == 0,
            "window must be >= 1": self.window >= 1,
            "steps must be >= 1": self.steps >= 1,
            "alpha must be > 0": self.alpha > 0,
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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"invalid model config: unknown fields {sorted(unknown)}")
        return cls(**d)


__all__ = ["ModelConfig"]
