"""taef2 as a candidate warm start for pqmim's transforms: what it costs against them.

    python -m pqmim.train.taef2 [--weights ../shared/weights] [--image kodim01.png] [--threads 1]

taef2 (github madebyollin/taesd, MIT: ../shared/weights/LICENSE.taesd) is a small pretrained
autoencoder, RGB in [0, 1] to 32 channels at 1/8 resolution and back, distilled from the FLUX.2
VAE on far more images than ours. Small in parameters (1.3M each way), not in work: its
64-channel convolutions run at full and half resolution, where pqmim's transforms keep few
channels. This command prints, for one image, the multiply-adds and seconds of each transform
of taef2 and of pqmim's default architecture, and taef2's unquantized PSNR: the figures behind
the yardstick's verdict on it (models/TRAINING.md).

Two things keep it out of the codec as it is: the multiply-adds, and the GroupNorm of its mid
blocks, whose statistics span the whole image, so its output would depend on the tiling
(pqmim's transforms run in fixed row bands and tiles: `pqmim.models.banded`, `pqmim.tiling`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..checkout import KODAK, SHARED
from ..config import ModelConfig
from ..data import load_rgb
from ..evaluate import psnr_uint8
from ..image import to_tensor, to_uint8
from ..models import PQMIM
from ..models.taef2 import taef2_decoder, taef2_encoder


def load_taef2(weights: str | Path) -> tuple[nn.Sequential, nn.Sequential]:
    """taef2's encoder and decoder from `weights` (the folder holding taef2_*.pth), float32."""
    enc, dec = taef2_encoder(), taef2_decoder()
    for net, name in ((enc, "encoder"), (dec, "decoder")):
        state = torch.load(Path(weights) / f"taef2_{name}.pth", map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
    return enc, dec


def multiply_adds(net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 2


def seconds(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        net(x)  # warm-up
        t = time.perf_counter()
        y = net(x)
    return y, time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m pqmim.train.taef2", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--weights", default=str(SHARED / "weights"))
    ap.add_argument("--image", default=str(KODAK / "kodim01.png"))
    ap.add_argument("--threads", type=int, default=1)
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    rgb = load_rgb(Path(ns.image))
    rgb = rgb[: rgb.shape[0] // 16 * 16, : rgb.shape[1] // 16 * 16]
    x = to_tensor(rgb)
    enc, dec = load_taef2(ns.weights)
    ours = PQMIM(ModelConfig())  # the default architecture (the cost does not depend on the weights)
    z, t_enc = seconds(enc, x)
    y, t_dec = seconds(dec, z)
    zo, t_oenc = seconds(ours.encoder, x - 0.5)
    _, t_odec = seconds(ours.decoder, zo)
    out = {
        "image": f"{Path(ns.image).name} {rgb.shape[1]}x{rgb.shape[0]}",
        "threads": ns.threads,
        "taef2": {
            "encode_gmac": multiply_adds(enc, x) / 1e9,
            "decode_gmac": multiply_adds(dec, z) / 1e9,
            "encode_s": t_enc,
            "decode_s": t_dec,
        },
        "pqmim": {
            "encode_gmac": multiply_adds(ours.encoder, x) / 1e9,
            "decode_gmac": multiply_adds(ours.decoder, zo) / 1e9,
            "encode_s": t_oenc,
            "decode_s": t_odec,
        },
        "taef2_psnr_unquantized": psnr_uint8(rgb, to_uint8(y.clamp(0, 1))),
    }
    for name in ("taef2", "pqmim"):
        r = out[name]
        print(
            f"{name}: encode {r['encode_gmac']:.1f} G multiply-adds, {r['encode_s']:.2f} s; decode {r['decode_gmac']:.1f} G, {r['decode_s']:.2f} s"
        )
    print(f"taef2 unquantized PSNR on {out['image']}: {out['taef2_psnr_unquantized']:.2f} dB ({ns.threads} thread(s))")
    return out


if __name__ == "__main__":
    main()
