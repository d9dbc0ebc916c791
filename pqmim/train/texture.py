"""Fit the latent-texture perceptual decoder's heads (pqmim/models/texture.py) and ship it.

    python -m pqmim.train.texture --models pqmim-q1 pqmim-q2 --train ../shared/data/train --out runs/tex-q12 \
        --crops 1200 --steps 8000 --channels 128 --threads 1 --flatten 32 --sharpen 0.5 --export models   # 0.11.0
    python -m pqmim.train.texture --models pqmim-q1 pqmim-q2 --heads-from 0.11.0.safetensors --channels 128 \
        --flatten 32 --sharpen 0.5 --strength 0.9375 --power 2 --export models   # 0.12.0: 0.11.0's heads
    (0.12.1: the same from 0.12.0's file with --strength 0.8; 0.12.2: from 0.12.1's with --decodes 1)
    python -m pqmim.train.texture --models pqmim-q1 pqmim-q2 pqmim-q3 --heads-from models/pqmim-texture.safetensors \
        runs/tex-q3/gated/pqmim-texture.safetensors --channels 128 --flatten 32 --sharpen 0.5 --strength 0.8 --power 2 \
        --decodes 1 --export DIR   # one file from two: q1's and q2's heads and gates as 0.13.1 ships them, q3's gated

For each model: random 256x256 crops of the training photos go through the shipped model (its
encoder and default decoder, frozen: `perceptual.reconstruct`, the 8-bit image a file decodes
to) and through taef2's frozen encoder, giving z = enc(reconstruction) and the residual
r = enc(original) - z. A `TextureHead` on z learns the mean mu and log spread of r by the
Gaussian negative log-likelihood, log sigma + (r - mu)^2 / (2 sigma^2) (a heteroscedastic
regression: where the codes pin the texture down it predicts a small sigma, where they leave it
open a large one). Crops are taken once, seeded, and kept in the run folder; an eighth are held
out, and the log gives their NLL beside that of a fixed per-channel sigma, the baseline the
head must beat. Each model's head is fitted on its own (seeded alike), and kept in the run
folder too: runs for one model each, side by side, then the same command with all of them
(reading what they kept) writes the file that serves them all. `--heads-from` carries heads from
files instead, each tensor as stored; a head's gate (bench/texture_gate.py) only with the draw it
was fitted for, and then the file is gated, heads that came without one getting an open gate.

What ships is one file: taef2 (published in float16; int8 per output channel by default, to fit
the models/ budget) and one head per model, with its card.
Whether it helps is measured on held-out photos by FID (`python -m bench perceptual-select`
scoring; models/TRAINING.md), not by the NLL.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .. import zoo
from ..checkout import SHARED, TRAIN
from ..data import describe_source, list_images, load_rgb
from ..fileio import atomic_file, atomic_write_json
from ..image import to_tensor
from ..models import PQMIM
from ..models.perceptual import served_ids
from ..models.texture import TAEF2_SOURCE, LatentTexture, TextureConfig, TextureGate, TextureHead
from ..models.weights import STORAGES
from .perceptual import reconstruct
from .taef2 import load_taef2

CROP = 256


def residuals(model: PQMIM, enc: torch.nn.Module, photos: list[Path], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, r), each (N, 32, CROP/8, CROP/8): taef2 latents of the model's reconstructions of N
    random crops (photos drawn without replacement while there are enough of them, with
    replacement beyond; photos smaller than CROP skipped) and what they miss."""
    rng = np.random.default_rng(seed)
    zs, rs = [], []
    for i in rng.choice(len(photos), n, replace=n > len(photos)):
        rgb = load_rgb(photos[i])
        if min(rgb.shape[:2]) < CROP:
            continue
        y, x = rng.integers(0, rgb.shape[0] - CROP + 1), rng.integers(0, rgb.shape[1] - CROP + 1)
        crop = to_tensor(rgb[y : y + CROP, x : x + CROP])
        with torch.no_grad():
            z = enc(reconstruct(model, crop).float())
            zs.append(z), rs.append(enc(crop) - z)
    return torch.cat(zs), torch.cat(rs)


def nll(mu: torch.Tensor, log_sigma: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood per element, less the constant."""
    return (log_sigma + 0.5 * ((r - mu) * torch.exp(-log_sigma)) ** 2).mean()


def fit_head(z: torch.Tensor, r: torch.Tensor, cfg: TextureConfig, steps: int, seed: int) -> tuple[TextureHead, dict]:
    """A head fitted on 7/8 of (z, r); its held-out NLL next to a per-channel sigma's."""
    torch.manual_seed(seed)
    held = len(z) // 8
    zt, rt, zv, rv = z[held:], r[held:], z[:held], r[:held]
    head = TextureHead(cfg.channels)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    for i in range(steps):
        idx = torch.randint(0, len(zt), (16,))
        loss = nll(*head(zt[idx]), rt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 500 == 0 or i == steps - 1:
            print(f"  step {i}: train NLL {loss.item():.3f}", flush=True)
    head.eval()
    with torch.no_grad():
        mu, log_sigma = head(zv)
        channel_sigma = rt.std((0, 2, 3)).log().view(1, -1, 1, 1).expand_as(rv)
        report = {
            "held_out_crops": held,
            "held_out_nll": nll(mu, log_sigma, rv).item(),
            "per_channel_sigma_nll": nll(torch.zeros_like(rv), channel_sigma, rv).item(),
            "variance_explained_by_mu": 1 - ((rv - mu) ** 2).mean().item() / (rv**2).mean().item(),
        }
    return head, report


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(
        prog="python -m pqmim.train.texture", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=["pqmim-q1"], help="shipped models to fit a head for")
    ap.add_argument("--out", type=Path, default=Path("runs/texture"))
    ap.add_argument("--train", type=Path, default=TRAIN)
    ap.add_argument("--taef2", type=Path, default=SHARED / "weights", help="folder with taef2_encoder.pth and taef2_decoder.pth")
    ap.add_argument("--crops", type=int, default=360)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--channels", type=int, default=TextureConfig.channels, help="the head's hidden channels")
    ap.add_argument("--strength", type=float, default=TextureConfig.strength)
    ap.add_argument("--flatten", type=int, default=TextureConfig.flatten, help="radius of the change's local mean removed (0: kept)")
    ap.add_argument("--sharpen", type=float, default=TextureConfig.sharpen, help="of the noise's 3x3 local mean taken out (0: white)")
    ap.add_argument("--power", type=float, default=TextureConfig.power, help="the draw's spread is strength * sigma^power")
    ap.add_argument("--decodes", type=int, default=TextureConfig.decodes, help="taef2 decodings a tile: 2 or 1 (pqmim/models/texture.py)")
    ap.add_argument("--mean", type=float, default=TextureConfig.mean, help="of the predicted mean added (0: noise only)")
    ap.add_argument(
        "--heads-from",
        type=Path,
        nargs="+",
        help="texture decoder files: each model's head as the first file serving it stores it, not fitted (another draw for "
        "them, or one file from several); a gate is kept where its file's draw is this one",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--storage", default="int8", choices=STORAGES, help="weights as shipped (int8: the models/ budget)")
    ap.add_argument("--export", type=Path, help="write pqmim-texture.safetensors and its card here (e.g. models)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TextureConfig(args.channels, args.strength, args.flatten, args.sharpen, args.power, args.decodes, args.mean)
    args.out.mkdir(parents=True, exist_ok=True)
    enc, dec = load_taef2(args.taef2)
    enc.eval().requires_grad_(False)
    photos = list_images(args.train)
    sources = [(path, _card(path)) for path in args.heads_from or []]
    ids = {name: PQMIM.load(zoo.model_path(name)).model_id().hex() for name in args.models}
    for path, _ in sources:  # a file given and never read is a mistake in the command
        if not set(served_ids(path) or []) & set(ids.values()):
            raise SystemExit(f"{path}: no texture head for any of {', '.join(args.models)}")
    heads, serves, reports, read, plans, gates = {}, [], {}, [], {}, {}
    t0 = time.time()
    for name in args.models:
        mid = ids[name]
        fitted = args.out / f"head-{mid}-{args.crops}-{args.seed}-{args.steps}-{args.channels}-x{args.threads}.pt"
        source = next(((path, card) for path, card in sources if mid in (served_ids(path) or [])), None)
        if source:  # the head as that file stores it; its card (beside it) has its fit, plan and gate
            path, card = source
            texture = LatentTexture.load(path, mid)
            heads[mid] = texture.head.state_dict()
            if texture.head.gate is not None:
                if replace(texture.cfg, gate=False) == cfg:  # fitted for this very draw: kept
                    gates[name] = _gate_report(card, name)
                else:
                    print(f"note: {path} gates {name}'s head for another draw: dropped (fit one again: python -m bench texture-gate)")
                    heads[mid] = {k: v for k, v in heads[mid].items() if not k.startswith("gate.")}
            reports[name] = card.get("fit", {}).get(name)
            plans[name] = {**card.get("plan", {}), "carried_from": str(path)}
            read.append(name)
        elif fitted.is_file():  # fitted before, at this thread count (float sums differ between counts)
            heads[mid], reports[name] = torch.load(fitted)
            read.append(name)
        else:
            cache = args.out / f"residuals-{mid}-{args.crops}-{args.seed}.pt"
            if cache.is_file():
                z, r = torch.load(cache)
            else:
                z, r = residuals(PQMIM.load(zoo.model_path(name)).eval(), enc, photos, args.crops, args.seed)
                with atomic_file(cache) as fh:  # a run stopped mid-write leaves no half cache
                    torch.save((z, r), fh)
            print(f"{name}: {len(z)} crops of residuals", flush=True)
            head, reports[name] = fit_head(z, r, cfg, args.steps, args.seed)
            heads[mid] = head.state_dict()
            with atomic_file(fitted) as fh:
                torch.save((heads[mid], reports[name]), fh)
        plans.setdefault(name, {"crops": args.crops, "crop": CROP, "steps": args.steps, "batch": 16, "lr": 1e-3, "seed": args.seed})
        print(f"{name}: {json.dumps(reports[name])}", flush=True)
        serves.append({"name": name, "model_id": mid})
    if gates:  # a gated file: the heads that came without a gate get an open one (their draw bit for bit)
        cfg = replace(cfg, gate=True)
        heads = {mid: {**TextureGate.open_state(), **h} for mid, h in heads.items()}
    if args.export is None:
        return None
    texture = LatentTexture(cfg)
    texture.encoder.load_state_dict(enc.state_dict())
    texture.decoder.load_state_dict(dec.state_dict())
    args.export.mkdir(parents=True, exist_ok=True)
    path = args.export / "pqmim-texture.safetensors"
    texture.save(path, heads, serves, args.storage)
    for s in serves:
        LatentTexture.load(path, s["model_id"])  # what ships reads back
    card = {
        "kind": zoo.PERCEPTUAL,
        "description": "adds texture in taef2's latent space (a predicted mean and seeded noise) to the default decoder's image; same files",
        "class": "latent-texture",
        "config": asdict(cfg),
        "serves": serves,
        "storage": args.storage,
        "taef2": TAEF2_SOURCE,
        "plan": plans,  # per model: a carried head's is its file's
        "fit": reports,
        "training": {
            "wall_s": round(time.time() - t0),  # this run's: not the fits of heads it read from the run folder
            "heads_fitted_before": read,
            "device": f"CPU {platform.machine()} x{args.threads}",
            "torch": torch.__version__,
        },
        "data": describe_source(args.train),
        **({"gate": gates} if gates else {}),
    }
    atomic_write_json(path.with_suffix(".json"), card)
    print(f"wrote {path} and its card", flush=True)
    return path


def _card(path: Path) -> dict:
    """A texture decoder file's card (beside it; {} where it has none)."""
    card = path.with_suffix(".json")
    return json.loads(card.read_text()) if card.is_file() else {}


def _gate_report(card: dict, name: str) -> dict | None:
    """How a model's gate in a card's file was fitted (bench/texture_gate.py): per model in the
    cards written now; 0.13.0-0.13.1's hold one fit's settings beside every model's report."""
    gate = card.get("gate", {})
    if "fitted" in gate:
        shared = {k: v for k, v in gate.items() if k != "fitted"}
        return {**shared, "fitted": gate["fitted"][name]} if name in gate["fitted"] else None
    return gate.get(name)


if __name__ == "__main__":
    main()
