"""The whole model: encoder, product quantizer, decoder and MIM entropy model, plus weight I/O.

Weights are stored as safetensors (never pickle) with the config in the file's metadata; the
model id written into every bitstream is a short hash of those weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from .autoencoder import Decoder, Encoder
from .quantizer import ProductQuantizer
from .transformer import MIMTransformer
from .weights import ModelFileError, read_tensors, save_tensors

FORMAT_TAG = "pqmim-model-1"


class PQMIM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ProductQuantizer(cfg.m, cfg.k, cfg.sub_dim)
        self.decoder = Decoder(cfg)
        self.entropy = MIMTransformer(cfg)

    @torch.no_grad()
    def encode_codes(self, x01: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], H and W multiples of f -> codes (B, m, H/f, W/f)."""
        return self.quantizer.codes_for(self.encoder(x01 - 0.5))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, m, h, w) -> images (B, 3, h*f, w*f) in [0, 1]."""
        return (self.decoder(self.quantizer.latents_for(codes)) + 0.5).clamp(0, 1)

    # -- weights
    def model_id(self) -> bytes:
        """4-byte id of the weights: the same weights give the same id on every machine."""
        h = hashlib.sha256()
        h.update(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()[:4]

    def save(self, path: str | Path, storage: str = "float32") -> None:
        """Write the weights; storage is float32, float16 or int8 (see pqmim.models.weights)."""
        save_tensors(path, self.state_dict(), {"format": FORMAT_TAG, "config": json.dumps(self.cfg.to_dict())}, storage)

    @classmethod
    def load(cls, path: str | Path) -> "PQMIM":
        """Load and validate a safetensors model file (config from its metadata)."""
        meta, tensors = read_tensors(path, FORMAT_TAG, "pqmim model")
        if "config" not in meta:
            raise ModelFileError(f"{path} is not a pqmim model file")
        try:
            cfg = ModelConfig.from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: bad config: {e}") from None
        with torch.device("meta"):  # shapes first, without allocating anything
            expected = cls(cfg).state_dict()
        if set(tensors) != set(expected):
            missing = sorted(set(expected) - set(tensors))[:3]
            extra = sorted(set(tensors) - set(expected))[:3]
            raise ModelFileError(f"{path}: weights do not match the config (missing {missing}, unexpected {extra})")
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                raise ModelFileError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ModelFileError(f"{path}: tensor {name} holds non-finite values")
        model = cls(cfg)
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        return model.eval()

