"""The whole model: encoder, product quantizer, decoder and MIM entropy model, plus weight I/O.

Weights are stored as safetensors (never pickle) with the config in the file's metadata; the
model id written into every bitstream is a short hash of those weights. An *entropy variant*
file holds only an entropy model and names its base file (same folder) and the base's id: the
variant is the base's autoencoder and quantizer with another entropy model (for example a
block-causal one), so both code the same images into the same codes, and the base keeps
decoding its own files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..threads import fixed_pieces
from . import banded
from .autoencoder import Decoder, Encoder
from .quantizer import FiniteScalarQuantizer, ProductQuantizer
from .transformer import MIMTransformer
from .weights import ModelFileError, check_state, expected_state, read_tensors, save_tensors

FORMAT_TAG = "pqmim-model-1"
ENTROPY = "entropy."  # the entropy model's tensors: all that an entropy variant file holds
AUTOENCODER_FIELDS = ("widths", "res_blocks", "gdn", "m", "k", "sub_dim", "fsq")  # a variant shares these with its base


class PQMIM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = FiniteScalarQuantizer(cfg.m, cfg.fsq) if cfg.fsq else ProductQuantizer(cfg.m, cfg.k, cfg.sub_dim)
        self.decoder = Decoder(cfg)
        self.entropy = MIMTransformer(cfg)

    @torch.no_grad()
    def encode_codes(self, x01: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], H and W multiples of f -> codes (B, m, H/f, W/f). On
        the CPU, image by image in fixed row bands (`banded`): the same codes with any thread
        count or batch; `dtype` bfloat16 runs the transform `banded.lowered`."""
        if x01.device.type != "cpu":
            return self.quantizer.codes_for(self.encoder(x01 - 0.5))
        net = banded.net_in(self, self.encoder.net, dtype)
        with fixed_pieces() as pool:
            return torch.cat([self.quantizer.codes_for(banded.run(net, xi - 0.5, pool)) for xi in x01.split(1)])

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Codes (B, m, h, w) -> images (B, 3, h*f, w*f) in [0, 1]. On the CPU the synthesis runs
        in fixed row bands (`banded`): the same pixels with any thread count or batch."""
        return self.decode_latents(self.quantizer.latents_for(codes), dtype)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Latents (B, m*sub_dim, h, w) -> images (B, 3, h*f, w*f) in [0, 1]: the synthesis of
        `decode_codes`, also for latents that are not code words (codes filled in as expected
        code words: pqmim/entropy/coder.py)."""
        if z.device.type != "cpu":
            return (self.decoder(z) + 0.5).clamp(0, 1)
        net = banded.net_in(self, self.decoder.net, dtype)
        with fixed_pieces() as pool:
            return (banded.run(net, z, pool) + 0.5).clamp(0, 1)

    # -- weights
    def model_id(self) -> bytes:
        """4-byte id of the weights: the same weights give the same id on every machine."""
        h = hashlib.sha256()
        h.update(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()[:4]

    def save(self, path: str | Path, storage: str = "float32", base: str | Path | None = None) -> None:
        """Write the weights; storage is float32, float16 or int8 (see pqmim.models.weights).
        With `base` (another model file beside this one, with the same autoencoder and
        quantizer), only the entropy model is written: an *entropy variant* of that model,
        loaded with the base's other weights."""
        meta = {"format": FORMAT_TAG, "config": json.dumps(self.cfg.to_dict())}
        state = self.state_dict()
        if base is not None:
            base_path = Path(base)
            if base_path.parent.resolve() != Path(path).parent.resolve():
                raise ValueError("an entropy variant must be saved beside its base model file")
            shared = PQMIM.load(base_path)
            differs = self.autoencoder_mismatch(shared)
            if differs is not None:
                raise ValueError(f"{base_path}: tensor {differs} differs: not the base of this model")
            state = {k: v for k, v in state.items() if k.startswith(ENTROPY)}
            meta.update(base=base_path.stem, base_id=shared.model_id().hex())
        save_tensors(path, state, meta, storage)

    def autoencoder_mismatch(self, other: "PQMIM") -> str | None:
        """The first tensor outside the entropy model that differs from `other`'s (None: the
        same encoder, quantizer and decoder, so the same codes decode to the same pixels)."""
        mine, theirs = self.state_dict(), other.state_dict()
        for name in sorted({k for k in (*mine, *theirs) if not k.startswith(ENTROPY)}):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
                return name
        return None

    @classmethod
    def load(cls, path: str | Path, variant_ok: bool = True) -> "PQMIM":
        """Load and validate a safetensors model file (config from its metadata); an entropy
        variant takes its other weights from its base file, whose id must match."""
        meta, tensors = read_tensors(path, FORMAT_TAG, "pqmim model")
        if "config" not in meta:
            raise ModelFileError(f"{path} is not a pqmim model file")
        try:
            cfg = ModelConfig.from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: bad config: {e}") from None
        if "base" in meta:
            if not variant_ok:
                raise ModelFileError(f"{path} is an entropy variant itself: a variant's base must be a whole model")
            base_path = Path(path).with_name(f"{meta['base']}.safetensors")
            if any(not k.startswith(ENTROPY) for k in tensors):
                raise ModelFileError(f"{path}: an entropy variant may hold entropy model weights only")
            base = cls.load(base_path, variant_ok=False)
            if base.model_id().hex() != meta.get("base_id"):
                raise ModelFileError(f"{path}: its base {base_path.name} is not the model it was made from (id {meta.get('base_id')})")
            if any(getattr(base.cfg, f) != getattr(cfg, f) for f in AUTOENCODER_FIELDS):
                raise ModelFileError(f"{path}: config does not match its base's autoencoder")
            tensors = {**{k: v for k, v in base.state_dict().items() if not k.startswith(ENTROPY)}, **tensors}
        expected = expected_state(lambda: cls(cfg))
        check_state(path, tensors, expected)
        model = cls(cfg)
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        return model.eval()
