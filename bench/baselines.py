"""CompressAI hyperprior codecs as same-budget baselines: trained by ``python -m bench.train_baselines``
(the training loop of pqmim.train), shipped like our models (safetensors + JSON card, in models/baselines/), and coded with
CompressAI's own ``compress()`` / ``decompress()`` so that every rate is a real bitstream.

Needs the ``bench`` extra (compressai). The bitstream is CompressAI's strings in a small frame:

    magic b"HPB1" | width u16 | height u16 | z height u16 | z width u16 |
    per string (y, then z): length u32 | bytes

(all little-endian). It is a benchmark format, not a file format we promise to keep.

Names: CompressAI's N (channels of the transforms) and M (channels of the latent) are called
`channels` and `latent_channels` here (`m` is pqmim's number of PQ sub-vectors); the model files'
metadata keeps CompressAI's "n" and "m".
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pqmim.checkout import ROOT
from pqmim.image import to_tensor, to_uint8
from pqmim.models.weights import ModelFileError, read_tensors, save_tensors

FORMAT_TAG = "pqmim-baseline-1"
MAGIC = b"HPB1"
PAD = 64  # the hyperprior models downsample by 64


def architectures() -> dict[str, type]:
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    return {"bmshj2018-hyperprior": ScaleHyperprior, "mbt2018-mean": MeanScaleHyperprior}


def build(arch: str, channels: int = 128, latent_channels: int = 192) -> nn.Module:
    """A fresh CompressAI model; N=128, M=192 are CompressAI's channels for its low-rate qualities."""
    archs = architectures()
    if arch not in archs:
        raise ValueError(f"unknown baseline architecture {arch!r} (known: {', '.join(archs)})")
    if not (1 <= channels <= 1024 and 1 <= latent_channels <= 1024):  # a model file must not ask for unbounded memory
        raise ValueError(f"channel counts N={channels}, M={latent_channels} out of range (1 to 1024)")
    return archs[arch](channels, latent_channels)


class Baseline:
    """A trained CompressAI model with byte-level compress/decompress of uint8 RGB images."""

    def __init__(self, net: nn.Module, arch: str, channels: int, latent_channels: int, name: str = "") -> None:
        self.net, self.arch, self.channels, self.latent_channels, self.name = net.eval(), arch, channels, latent_channels, name

    # -- weights
    def save(self, path: str | Path, storage: str = "int8") -> None:
        """Weights (int8 by default, see pqmim.models.weights) plus the entropy coders' integer
        tables, as safetensors."""
        self.net.update(force=True)
        save_tensors(
            path,
            self.net.state_dict(),
            {"format": FORMAT_TAG, "arch": self.arch, "n": str(self.channels), "m": str(self.latent_channels)},
            storage,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Baseline":
        """Load and validate a baseline model file (architecture from its metadata)."""
        path = Path(path)
        meta, tensors = read_tensors(path, FORMAT_TAG, "pqmim baseline model")
        try:
            net = build(meta["arch"], int(meta["n"]), int(meta["m"]))
        except (KeyError, ValueError) as e:
            raise ModelFileError(f"{path}: bad metadata: {e}") from None
        expected = net.state_dict()
        if set(tensors) != set(expected):
            raise ModelFileError(f"{path}: weights do not match {meta['arch']} (N={meta['n']}, M={meta['m']})")
        tables = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")  # sized by update(), not by the architecture
        for k, t in tensors.items():
            if not k.endswith(tables) and t.shape != expected[k].shape:
                raise ModelFileError(f"{path}: tensor {k} has shape {tuple(t.shape)}, expected {tuple(expected[k].shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ModelFileError(f"{path}: tensor {k} holds non-finite values")
        # CompressAI's load_state_dict resizes the entropy coders' tables to the stored ones
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        return cls(net, meta["arch"], int(meta["n"]), int(meta["m"]), name=path.stem)

    # -- coding
    @torch.no_grad()
    def compress(self, rgb: np.ndarray) -> bytes:
        h, w = rgb.shape[:2]
        x = to_tensor(np.asarray(rgb, dtype=np.uint8))
        ph, pw = -h % PAD, -w % PAD
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        out = self.net.compress(x)
        zh, zw = out["shape"]
        parts = [MAGIC, struct.pack("<4H", w, h, zh, zw)]
        for s in out["strings"]:
            parts += [struct.pack("<I", len(s[0])), s[0]]
        return b"".join(parts)

    @torch.no_grad()
    def decompress(self, data: bytes) -> np.ndarray:
        if data[:4] != MAGIC or len(data) < 12:
            raise ValueError("not a baseline bitstream")
        w, h, zh, zw = struct.unpack_from("<4H", data, 4)
        pos, strings = 12, []
        for _ in range(2):
            (n,) = struct.unpack_from("<I", data, pos)
            strings.append([data[pos + 4 : pos + 4 + n]])
            pos += 4 + n
        x = self.net.decompress(strings, (zh, zw))["x_hat"][0, :, :h, :w]
        return to_uint8(x)


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def shipped(folder: str | Path | None = None) -> list[Path]:
    """Baseline weights shipped in models/baselines/ (those with a card), ordered by their lambda."""
    folder = Path(folder) if folder else ROOT / "models" / "baselines"
    found = [p for p in sorted(folder.glob("*.safetensors")) if card_path(p).is_file()]
    return sorted(found, key=lambda p: json.loads(card_path(p).read_text()).get("lmbda", 0))
