"""Fit the latent-texture decoder's gate: how much of the predicted mean each tile gets.

    python -m bench texture-gate models/pqmim-texture.safetensors --models pqmim-q1 \\
        --photos ../shared/data/train_more --out runs/gate --export models --threads 2

The texture decoder's predicted mean (pqmim/models/texture.py) is what makes its FID on the val
scenes and what costs it on photos of people and objects (models/TRAINING.md). Per photo, how
far a decoder moves FID is tracked by how far it moves the photo's Inception features from the
original's: on 48 held-out val and 96 OSIE photos the change in that paired distance correlates
0.92-0.93 with the photo's leave-one-out share of the FID change. So, for each training photo
(whole, through the real codec and the decoder as `pqmim decode --perceptual` runs it):

    y = d(mean 1) - d(mean 0),   d = mean over the photo's patches of |f(decoded) - f(original)|

(f: Inception pool3, HiFiC's 256-pixel patches), and the gate is a ridge regression of y on the
tile statistics `TextureGate.statistics` of the default decoder's image (standardised, `--ridge`
the penalty), turned into clamp(1/2 - y_hat / (2 `--width`), 0, 1): the whole mean where it is
predicted to help by more than `--width`, none where it is predicted to cost more than that.

The measurements are kept in `--out` (one file per model and photo list), so a refit costs
seconds. Models not in `--models` keep an ungated head (weight 0, bias 1: the draw bit for bit
as before). The photos are training photos: held-out FID (`python -m bench perceptual-select`,
on the val photos and on another set with `--val`) judges the result, not this fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from pqmim import Codec, tiling
from pqmim.checkout import FID_WEIGHTS
from pqmim.data import list_images
from pqmim.fileio import atomic_write_json
from pqmim.image import load_image, to_tensor
from pqmim.models.texture import LatentTexture, TextureGate
from pqmim.models.weights import file_metadata

from .fid import inception_features, patches


def measure(codec: Codec, texture: LatentTexture, photos: list[Path], weights: Path) -> dict[str, np.ndarray]:
    """Per photo with at least one patch: the gate's statistics of the default decoder's image
    (float32, whole image) and the paired Inception distances of the default decoder and of the
    texture decoder with the whole mean (`texture`, ungated) and with none."""
    decoders = [texture, _with(texture, mean=0.0)]
    stats, names, sets = [], [], [[], [], [], []]  # patches: originals, default, mean 1, mean 0
    t = time.time()
    for i, path in enumerate(photos):
        rgb = load_image(path)
        if not patches(rgb):
            continue
        base = np.asarray(codec.decompress(codec.compress(rgb)))
        stats.append(statistics(texture, base))
        for patch_set, im in zip(
            sets, [rgb, base, *(tiling.refine_tiled(d, base, codec.tile_pixels, codec.transform_dtype) for d in decoders)]
        ):
            patch_set.append(patches(np.asarray(im)))
        names.append(path.name)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(photos)} photos ({time.time() - t:.0f} s)", flush=True)
    starts = np.cumsum([0, *(len(p) for p in sets[0])])
    reference, *others = (inception_features([p for ps in patch_set for p in ps], weights) for patch_set in sets)
    dist = [[float((f[a:b] - reference[a:b]).norm(dim=1).mean()) for f in others] for a, b in zip(starts[:-1], starts[1:])]
    return {"names": np.array(names), "stats": np.array(stats), "dist": np.array(dist)}  # dist: default, mean 1, mean 0


def latents(texture: LatentTexture, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, mu, log_sigma) of an HxWx3 uint8 image as a whole (cropped to multiples of 8), float32:
    what the gate is fitted on (decoding reads them per tile)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    with torch.no_grad():
        # NCHW: the layout the shipped gates were fitted on (channels-last moves z by ~1e-5)
        z = texture.encoder(to_tensor(rgb[:h, :w]).contiguous())
        return (z, *texture.head(z))


def statistics(texture: LatentTexture, rgb: np.ndarray) -> np.ndarray:
    """`TextureGate.statistics` of an HxWx3 uint8 image (`latents`), float32."""
    return TextureGate.statistics(*latents(texture, rgb))[0].numpy()


def _with(texture: LatentTexture, **fields) -> LatentTexture:
    """A copy of an ungated texture decoder with config fields changed."""
    out = LatentTexture(dataclasses.replace(texture.cfg, **fields))
    out.load_state_dict(texture.state_dict())
    return out.eval()


def fit(stats: np.ndarray, y: np.ndarray, ridge: float, width: float) -> tuple[np.ndarray, float, dict]:
    """(weight, bias) of the gate, and a 5-fold cross-validated report of the regression."""
    mean, sd = stats.mean(0), stats.std(0) + 1e-6

    def solve(s: np.ndarray, t: np.ndarray) -> np.ndarray:
        a = np.c_[(s - mean) / sd, np.ones(len(s))]
        penalty = ridge * np.eye(a.shape[1])
        penalty[-1, -1] = 0  # the intercept is not shrunk
        return np.linalg.solve(a.T @ a + penalty, a.T @ t)

    predict = lambda w, s: np.c_[(s - mean) / sd, np.ones(len(s))] @ w  # noqa: E731
    fold = np.random.default_rng(0).integers(5, size=len(y))
    cv = np.zeros_like(y)
    for k in range(5):
        cv[fold == k] = predict(solve(stats[fold != k], y[fold != k]), stats[fold == k])
    w = solve(stats, y)
    # gate = 1/2 - y_hat / (2 width), y_hat = (s - mean) / sd . w[:-1] + w[-1]
    weight = -w[:-1] / sd / (2 * width)
    bias = 0.5 - (w[-1] - (mean / sd) @ w[:-1]) / (2 * width)
    report = {
        "photos": len(y),
        "mean_helps": float((y < 0).mean()),
        "cv_correlation": float(np.corrcoef(cv, y)[0, 1]),
        "cv_sign_agreement": float(((cv < 0) == (y < 0)).mean()),
    }
    return weight, float(bias), report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench texture-gate", description=__doc__.split("\n\n")[0])
    ap.add_argument("texture", help="an ungated texture decoder file (models/pqmim-texture.safetensors)")
    ap.add_argument("--models", nargs="+", default=["pqmim-q1"])
    ap.add_argument("--photos", nargs="+", required=True, help="folders of training photos")
    ap.add_argument("--out", required=True, help="run folder: the measurements, kept")
    ap.add_argument("--export", default="", help="folder to write the gated file (and its card) into")
    ap.add_argument("--ridge", type=float, default=100.0)
    ap.add_argument("--width", type=float, default=0.1, help="predicted distance change (Inception units) over which the gate goes 1 -> 0")
    ap.add_argument("--fid-weights", default=str(FID_WEIGHTS))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.texture)
    serves = json.loads(file_metadata(source)["serves"])
    photos = [p for folder in args.photos for p in list_images(Path(folder))]
    key = hashlib.sha256("\n".join(str(p.resolve()) for p in photos).encode()).hexdigest()[:12]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gates, reports, texture = {}, {}, None
    for name in args.models:
        codec = Codec.from_pretrained(name)
        mid = codec.model.model_id().hex()
        texture = LatentTexture.load(source, mid)
        if texture.cfg.gate:
            raise SystemExit(f"{source}: already gated; give the ungated file")
        kept = out / f"measured-{mid}-{key}.npz"
        if not kept.exists():
            print(f"{name}: measuring {len(photos)} photos", flush=True)
            np.savez(kept, **measure(codec, texture, photos, Path(args.fid_weights)))
        m = np.load(kept)
        weight, bias, reports[name] = fit(m["stats"], m["dist"][:, 1] - m["dist"][:, 2], args.ridge, args.width)
        gates[mid] = {"gate.weight": torch.from_numpy(weight).float(), "gate.bias": torch.tensor([bias], dtype=torch.float32)}
        print(f"{name}: {reports[name]}", flush=True)
    if args.export:
        gated = LatentTexture(dataclasses.replace(texture.cfg, gate=True))
        heads = {}
        for s in serves:
            head = LatentTexture.load(source, s["model_id"]).head.state_dict()
            head.update(gates.get(s["model_id"], TextureGate.open_state()))
            heads[s["model_id"]] = head
        gated.encoder, gated.decoder = texture.encoder, texture.decoder  # taef2, shared by every head
        dest = Path(args.export) / source.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        gated.save(dest, heads, serves)
        card_path = source.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        card["config"] = dataclasses.asdict(gated.cfg)
        fitted = {"photos": args.photos, "ridge": args.ridge, "width": args.width, "date": time.strftime("%Y-%m-%d")}
        card["gate"] = {name: {**fitted, "fitted": report} for name, report in reports.items()}  # per model: train.texture carries them
        atomic_write_json(dest.with_suffix(".json"), card, indent=2)
        print(f"wrote {dest}")
    return 0
