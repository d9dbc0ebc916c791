"""Train the perceptual decoder: a `Refiner` of shipped models' default decoder output.

    python -m pqmim.train.perceptual --out runs/perceptual --models pqmim-q1 pqmim-q2 pqmim-q3 \
        --plan '{"minutes": 40}' --threads 1 --stop-at 750 --export models

The shipped models stay frozen (encoder, quantizer, entropy model and default decoder), so
every existing file decodes either way (pqmim/models/perceptual.py). The data are pairs
(original crop, the default decoder's 8-bit reconstruction of it) cut from the training photos
for every model served, computed once and kept in the run folder; one refiner learns them all.

The loss, per crop (HiFiC, Mentzer et al. 2020, and MS-ILLM, Muckley et al. 2023):
    k_mse * MSE + k_low * MSE of 8x8 block means + k_lpips * LPIPS(Alex) [+ k_adv * GAN loss]
The block-mean term holds colour and shading to the original's, which the default decoder
already matches well (without it LPIPS and the GAN shift them, which Inception sees). LPIPS (and the discriminator) see the images cut at a
random offset below AlexNet's stride, so the refiner cannot win LPIPS with a fixed 4-pixel
lattice. The GAN term is off by default (k_adv = 0): on CPU budgets it cost FID and KID in every
trial (models/TRAINING.md). With it, the discriminator sees the image beside the reconstruction
it was refined from (a function of the codes: the conditioning HiFiC and MS-ILLM give theirs
through the latents); spectral norm on every layer, no GAN term before `gan_from`, and its step
is taken inside `loss`, on detached outputs, before the refiner's loss is formed; the shared loop
(loop.fit) then steps the refiner, with its schedule, checkpoints and resume.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .. import zoo
from ..checkout import LPIPS_BACKBONE, TRAIN, VAL
from ..codec import transform_dtype
from ..data import center_crop_arrays, describe_source, photos
from ..distributed import Dist
from ..evaluate import LPIPSAlex, psnr_uint8
from ..fileio import atomic_write_json
from ..image import to_tensor, to_uint8
from ..models import PQMIM
from ..models.perceptual import Refiner, RefinerConfig
from .loop import Stage, ckpt_iteration, fit, load_ckpt, log, plan_from_dict, progress, read_json

PAIR = 256  # side of the stored crops; training cuts `crop`-sized pieces out of them
# LPIPS and the discriminator see the images cut at a random offset below AlexNet's first stride:
# with their strided grids aligned to the refiner's own 4-pixel period, a refiner learns a fixed
# 4-pixel lattice that games the aliasing of AlexNet's stride-4 first layer (seen on flat areas).
ALEX_STRIDE = 4
LOW_POOL = 8  # the low-frequency term compares LOW_POOL x LOW_POOL block means


@dataclass(frozen=True)
class PerceptualPlan:
    iterations: int = 20000
    minutes: float = 0.0  # > 0: a wall-time budget; iterations is then only an upper bound
    batch: int = 8
    crop: int = 128
    lr: float = 2e-4
    d_lr: float = 2e-4
    gan_from: int = 500  # with k_adv > 0: MSE + LPIPS only before this iteration
    k_mse: float = 100.0  # MSE of [0, 1] pixels: 100 x 0.004 (24 dB) weighs about one LPIPS
    k_lpips: float = 1.0
    k_adv: float = 0.0  # the GAN term: off, it cost FID and KID in every CPU trial (models/TRAINING.md)
    k_low: float = 4000.0  # MSE of LOW_POOL-averaged images: keeps colour and shading (FID)
    crops_per_photo: int = 2  # pairs cut per training photo and model


class Discriminator(nn.Module):
    """PatchGAN on (image, reconstruction) pairs: (B, 6, H, W) -> logits (B, 1, H/8, W/8)."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        sn = spectral_norm
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.net = nn.Sequential(
            sn(nn.Conv2d(6, ch, 4, 2, 1)),
            act(),
            sn(nn.Conv2d(ch, 2 * ch, 4, 2, 1)),
            act(),
            sn(nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1)),
            act(),
            sn(nn.Conv2d(4 * ch, 4 * ch, 3, 1, 1)),
            act(),
            sn(nn.Conv2d(4 * ch, 1, 3, 1, 1)),
        )

    def forward(self, image: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, recon], 1) * 2 - 1)


def make_pairs(models: list[PQMIM], images: list[np.ndarray], per_photo: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions), each (N, PAIR, PAIR, 3) uint8: `per_photo` random crops of
    every photo at least PAIR on a side, for each model, through its encoder and default decoder
    (in the transforms' precision a Codec uses on this machine)."""
    dtype = transform_dtype("auto", torch.device("cpu"))
    rng = np.random.default_rng(seed)
    originals, recons = [], []
    for model in models:
        for im in images:
            h, w = im.shape[:2]
            if min(h, w) < PAIR:
                continue
            for _ in range(per_photo):
                y, x = rng.integers(h - PAIR + 1), rng.integers(w - PAIR + 1)
                originals.append(np.ascontiguousarray(im[y : y + PAIR, x : x + PAIR]))
        crops = originals[len(recons) :]
        for i in range(0, len(crops), 32):
            x = to_tensor(np.stack(crops[i : i + 32]))
            recons += list(to_uint8(model.decode_codes(model.encode_codes(x, dtype), dtype)))
    return np.stack(originals), np.stack(recons)


class PerceptualStage(Stage):
    name, unit = "perceptual", "crops"

    def __init__(
        self, refiner: Refiner, plan: PerceptualPlan, out: Path, models: list[PQMIM], lpips_backbone: Path, train: str, val: str, seed: int
    ):
        self.refiner, self.plan, self.out, self.models = refiner, plan, out, models
        self.train_dir, self.val_dir, self.seed = train, val, seed
        self.disc = Discriminator()
        self.lpips = LPIPSAlex(lpips_backbone).net.requires_grad_(False)
        self.params = list(refiner.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=plan.lr)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=plan.d_lr, betas=(0.5, 0.999))
        self.state = {"refiner": refiner, "disc": self.disc, "opt": self.optimizer, "d_opt": self.d_opt}

    def _pairs(self, name: str, images) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored pairs of the run folder, made on first use (minutes: every crop through
        every model)."""
        path = self.out / f"{name}.npz"
        if not path.exists():
            t = time.time()
            orig, rec = make_pairs(self.models, images(), self.plan.crops_per_photo if name == "pairs" else 1, self.seed)
            with open(path.with_suffix(".tmp"), "wb") as f:
                np.savez(f, orig=orig, rec=rec)
            path.with_suffix(".tmp").rename(path)
            log(self.out, f"perceptual: {len(orig)} {name} through {len(self.models)} models in {time.time() - t:.0f}s")
        d = np.load(path)
        return torch.from_numpy(d["orig"]).permute(0, 3, 1, 2), torch.from_numpy(d["rec"]).permute(0, 3, 1, 2)

    def begin(self, iteration: int) -> None:
        self.orig, self.rec = self._pairs("pairs", lambda: photos(self.train_dir, "train", 1024))
        vo, vr = self._pairs("val_pairs", lambda: center_crop_arrays(self.val_dir, PAIR, 16))
        self.val = (vo.float() / 255, vr.float() / 255)

    def train(self, mode: bool) -> None:
        self.refiner.train(mode)
        self.disc.train(mode)

    def _batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = self.plan.batch, self.plan.crop
        idx = rng.integers(len(self.orig), size=n)
        ys, xs, flips = rng.integers(PAIR - c + 1, size=n), rng.integers(PAIR - c + 1, size=n), rng.random(n) < 0.5
        out = []
        for src in (self.orig, self.rec):
            crops = [src[i, :, y : y + c, x : x + c] for i, y, x in zip(idx, ys, xs)]
            out.append(torch.stack([p.flip(-1) if f else p for p, f in zip(crops, flips)]).float() / 255)
        return out[0], out[1]

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        p = self.plan
        x, rec = self._batch(rng)
        y = self.refiner(rec)
        dy, dx = rng.integers(ALEX_STRIDE, size=2)
        cut = lambda z: z[:, :, dy : dy + p.crop - ALEX_STRIDE, dx : dx + p.crop - ALEX_STRIDE]  # noqa: E731
        gan = p.k_adv > 0 and iteration >= p.gan_from
        figures = {}
        if gan:  # the discriminator's step, on a detached output
            d_loss = F.softplus(-self.disc(cut(x), cut(rec))).mean() + F.softplus(self.disc(cut(y).detach(), cut(rec))).mean()
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            figures["d_loss"] = d_loss.item()
        mse = F.mse_loss(y, x)
        low = F.mse_loss(F.avg_pool2d(y, LOW_POOL), F.avg_pool2d(x, LOW_POOL))
        lp = self.lpips(cut(y) * 2 - 1, cut(x) * 2 - 1).mean()
        loss = p.k_mse * mse + p.k_low * low + p.k_lpips * lp
        if gan:
            self.disc.requires_grad_(False)  # the refiner's GAN gradient goes through, not into, the discriminator
            g_adv = F.softplus(-self.disc(cut(y), cut(rec))).mean()
            self.disc.requires_grad_(True)
            loss = loss + p.k_adv * g_adv
            figures["g_adv"] = g_adv.item()
        return loss, {"mse": mse.item(), "low": low.item(), "lpips": lp.item(), **figures}

    @torch.no_grad()
    def validate(self) -> tuple[str, dict]:
        """PSNR and LPIPS of the default and the perceptual decoder on the val crops, per model."""
        orig, rec = self.val
        k = len(orig) // len(self.models)
        figures = {}
        for j, model in enumerate(self.models):
            o, r = orig[j * k : (j + 1) * k], rec[j * k : (j + 1) * k]
            y = self.refiner(r).clamp(0, 1)
            figures[f"m{j}_psnr"] = psnr_uint8(to_uint8(o), to_uint8(y))
            figures[f"m{j}_psnr_mse"] = psnr_uint8(to_uint8(o), to_uint8(r))
            figures[f"m{j}_lpips"] = self.lpips(y * 2 - 1, o * 2 - 1).mean().item()
            figures[f"m{j}_lpips_mse"] = self.lpips(r * 2 - 1, o * 2 - 1).mean().item()
        line = "; ".join(
            f"m{j} PSNR {figures[f'm{j}_psnr']:.2f} (MSE decoder {figures[f'm{j}_psnr_mse']:.2f}) LPIPS {figures[f'm{j}_lpips']:.4f} ({figures[f'm{j}_lpips_mse']:.4f})"
            for j in range(len(self.models))
        )
        return line, figures


def describe_loss(plan: dict, iterations: int) -> str:
    """The loss terms a refiner was trained with, for its card."""
    terms = ["MSE", "LPIPS"] + [f"MSE of {LOW_POOL}x{LOW_POOL} block means"] * (plan.get("k_low", 0) > 0)
    return " + ".join(terms + ["conditional GAN"] * (plan["k_adv"] > 0 and plan["gan_from"] < iterations))


def export(refiner: Refiner, names: list[str], models: list[PQMIM], out: Path, dest: Path, name: str, storage: str, data: dict) -> Path:
    """The refiner as shipped (safetensors + card), serving each trained-on model and every
    shipped model with the same autoencoder (an entropy variant's base, say)."""
    serves = [{"name": n, "model_id": m.model_id().hex()} for n, m in zip(names, models)]
    for card in zoo.list_models():
        if card["name"] not in names:
            other = PQMIM.load(zoo.model_path(card["name"]))
            if any(other.autoencoder_mismatch(m) is None for m in models):
                serves.append({"name": card["name"], "model_id": other.model_id().hex()})
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.safetensors"
    refiner.cpu().eval().save(path, serves, storage)
    Refiner.load(path)  # what ships reads back
    plan = read_json(out / "perceptual_plan.json")
    trained = progress(load_ckpt(out / "perceptual.pt"))
    card = {
        "kind": zoo.PERCEPTUAL,
        "description": f"refines the default decoder's image for realism ({describe_loss(plan, trained['iterations_done'])}); same files",
        "config": asdict(refiner.cfg),
        "serves": serves,
        "storage": storage,
        "plan": plan,
        "training": {
            **trained,
            "device": f"CPU {platform.machine()} x{torch.get_num_threads()}",
            "torch": torch.__version__,
        },
        "data": data,
    }
    atomic_write_json(dest / f"{name}.json", card, indent=2)
    log(out, f"export: wrote {path} and its card")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pqmim.train.perceptual", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="run folder (resumes from its checkpoint)")
    ap.add_argument("--models", nargs="+", default=["pqmim-q1", "pqmim-q2", "pqmim-q3"], help="shipped models the refiner serves")
    ap.add_argument("--train", default=str(TRAIN))
    ap.add_argument("--val", default=str(VAL))
    ap.add_argument("--lpips-backbone", default=str(LPIPS_BACKBONE))
    ap.add_argument("--plan", default="{}", help="JSON fields of PerceptualPlan (recorded: a resumed run keeps its own)")
    ap.add_argument("--stop-at", type=int, default=0, help="stop at this iteration (resume later)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", default="", help="folder to write the refiner and its card into once the plan is done (or at --stop-at)")
    ap.add_argument("--name", default="pqmim-perceptual")
    ap.add_argument("--storage", default="int8")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plan_path = args.out / "perceptual_plan.json"
    fields = read_json(plan_path) or {**asdict(PerceptualPlan()), **json.loads(args.plan)}
    plan = plan_from_dict(PerceptualPlan, fields)
    if json.loads(args.plan) and any(fields.get(k) != v for k, v in json.loads(args.plan).items()):
        raise SystemExit(f"{args.out} was started with another plan: use a new --out")
    atomic_write_json(plan_path, asdict(plan))
    models = [PQMIM.load(zoo.model_path(n)) for n in args.models]
    refiner = Refiner(RefinerConfig())
    stage = PerceptualStage(refiner, plan, args.out, models, Path(args.lpips_backbone), args.train, args.val, args.seed)
    ctx = Dist()
    done = fit(stage, args.out, ctx, torch.device("cpu"), seed=args.seed, stop_at=args.stop_at, ckpt_every=250, log_every=25)
    stopped = bool(args.stop_at) and ckpt_iteration(load_ckpt(args.out / "perceptual.pt")) == args.stop_at
    if args.export and (done or stopped):  # the end of the plan, or the iteration chosen with --stop-at
        export(
            refiner,
            args.models,
            models,
            args.out,
            Path(args.export),
            args.name,
            args.storage,
            {**describe_source(args.train), "val": args.val},
        )


if __name__ == "__main__":
    main()
