"""Train the perceptual decoder: a `Refiner` of shipped models' default decoder output.

    python -m pqmim.train.perceptual --out runs/perceptual --models pqmim-q1 pqmim-q2 pqmim-q3 \
        --plan '{"minutes": 40}' --threads 1 --stop-at 750 --export models

On a GPU (the round's perceptual jobs, pqmim/gpu_round/plan.py): `--device cuda` with an
`online` plan, whose batches are fresh crops of the photos through one of the models each
iteration (stored pairs would be seen hundreds of times), `ema` weights, and `snapshot_every`:
the refiner as it would ship, every so many iterations, for held-out selection by FID here
(`python -m bench perceptual-select`), since LPIPS and PSNR do not rank refiners by FID.

With `--texture FILE` (an `online` plan) what learns is not a Refiner but the taef2 decoder of a
latent-texture decoder file (pqmim/models/texture.py, `TextureTuning`): its encoder and each
model's head stay as the file has them, the draw is the file's (its noise, strength, power and
flatten), and the decoder that turns the drawn latents into pixels learns to draw them as
photos do. It starts as the file decodes (taef2 as distilled), so a snapshot early in a run is
close to the shipped decoder; what is written is a texture decoder file for the same models.

The shipped models stay frozen (encoder, quantizer, entropy model and default decoder), so
every existing file decodes either way (pqmim/models/perceptual.py). The data are pairs
(original crop, the default decoder's 8-bit reconstruction of it) cut from the training photos
for every model served, computed once and kept in the run folder (or, `online`, made afresh
for every batch); one refiner learns them all.

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
(loop.fit) then steps the refiner, with its schedule, checkpoints and resume. The discriminator
is a PatchGAN on pixels (`d_kind` "patch") or heads on LPIPS's frozen AlexNet features ("alex",
a projected GAN: `AlexDiscriminator`).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .. import zoo
from ..checkout import LPIPS_BACKBONE, TRAIN, VAL
from ..codec import transform_dtype
from ..data import describe_source, photos, val_crops
from ..distributed import Dist
from ..evaluate import LPIPSAlex, psnr_uint8
from ..fileio import atomic_write_json
from ..image import to_tensor, to_uint8
from ..models import ModelFileError, PQMIM
from ..models.perceptual import Refiner, RefinerConfig
from ..models.texture import TAEF2_SOURCE, LatentTexture
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
    crops_per_photo: int = 2  # stored pairs cut per training photo and model
    online: bool = False  # fresh pairs every batch, through one model in turn, on the training device
    ema: float = 0.0  # > 0: validate, snapshot and export the weights' moving average of this decay
    d_ch: int = 32  # the discriminator's width
    d_kind: str = "patch"  # "patch": PatchGAN on pixels; "alex": heads on LPIPS's frozen AlexNet features
    refiner: dict = field(default_factory=dict)  # RefinerConfig fields (none: its defaults, what ships)
    snapshot_every: int = 0  # > 0 (with an export folder): the refiner as shipped, every N iterations

    def __post_init__(self) -> None:
        if self.d_kind not in ("patch", "alex"):
            raise SystemExit(f"PerceptualPlan d_kind: 'patch' or 'alex', got {self.d_kind!r}")


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


ALEX_CHANNELS = (64, 192, 384)  # AlexNet's relu1-3 (strides 4, 8, 16), what AlexDiscriminator sees


class AlexDiscriminator(nn.Module):
    """Projected GAN (Sauer et al. 2021) on LPIPS's frozen AlexNet: for each of relu1-3, a small
    spectral-norm head on the (image, reconstruction) features -> logits (B, N), N the positions
    of all three maps. On pretrained features a discriminator learns in far fewer steps than
    one on pixels (their paper), which is what a short budget needs (on the CPU's it did not
    help either: models/TRAINING.md). `features` is LPIPS's own network, held outside this
    module's parameters so the discriminator's optimizer and requires_grad_ never reach it."""

    def __init__(self, features: Callable[[torch.Tensor], tuple], ch: int = 64) -> None:
        super().__init__()
        from lpips import normalize_tensor  # an optional dependency (bench extra), as LPIPSAlex imports it

        self.features = features  # [-1, 1] images -> AlexNet's relu1..relu5
        self.unit = normalize_tensor  # LPIPS's channel normalisation of each level
        sn = spectral_norm
        self.heads = nn.ModuleList(
            nn.Sequential(
                sn(nn.Conv2d(2 * c, ch, 3, 1, 1)),
                nn.LeakyReLU(0.2),
                sn(nn.Conv2d(ch, ch, 3, 1, 1)),
                nn.LeakyReLU(0.2),
                sn(nn.Conv2d(ch, 1, 1)),
            )
            for c in ALEX_CHANNELS
        )

    def forward(self, image: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        fi, fr = self.features(image * 2 - 1), self.features(recon * 2 - 1)
        return torch.cat([h(torch.cat([self.unit(a), self.unit(b)], 1)).flatten(1) for h, a, b in zip(self.heads, fi, fr)], 1)


class TextureTuning(nn.Module):
    """A latent-texture decoder file's taef2 decoder, learning, for the models the file has heads
    for: (B, 3, H, W) default-decoder images of `models[j]` -> the texture decoder's images,
    differentiable in the decoder only. One `LatentTexture` per model, all holding the same
    encoder and decoder modules (so the decoder is one set of weights, as the file stores it);
    taef2's encoder and the heads are frozen."""

    def __init__(self, path: str | Path, model_ids: list[str]) -> None:
        super().__init__()
        self.source = Path(path)
        self.textures = nn.ModuleList(LatentTexture.load(path, mid) for mid in model_ids)
        first = self.textures[0]
        for t in self.textures:
            t.encoder, t.decoder = first.encoder, first.decoder
            t.encoder.requires_grad_(False), t.head.requires_grad_(False)
        self.model_ids, self.cfg = model_ids, first.cfg

    def forward(self, rec: torch.Tensor, model: int = 0) -> torch.Tensor:
        t = self.textures[model]
        noise = torch.cat([t._noise(p) for p in rec.split(1)]).to(rec.device)  # each crop's, as a decode draws it
        return t(rec, noise)

    def save(self, path: str | Path, serves: list[dict], storage: str = "int8") -> None:
        """A texture decoder file: the learned decoder, the file's encoder and heads, for the
        models in `serves` it has a head for."""
        mine = [s for s in serves if s["model_id"] in self.model_ids]
        heads = {mid: t.head.state_dict() for mid, t in zip(self.model_ids, self.textures)}
        self.textures[0].save(path, {s["model_id"]: heads[s["model_id"]] for s in mine}, mine, storage)


def reconstruct(model: PQMIM, x: torch.Tensor) -> torch.Tensor:
    """The default decoder's 8-bit image of crops (B, 3, H, W) in [0, 1], as a float tensor on
    the model's device: what the refiner gets when a file is decoded (through the transforms'
    precision a Codec uses on that device; never under autocast)."""
    device = next(model.parameters()).device
    dtype = transform_dtype("auto", device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        y = model.decode_codes(model.encode_codes(x.to(device), dtype), dtype)
    return (y.float().clamp(0, 1) * 255).round() / 255  # as pqmim.image.to_uint8 rounds


def make_pairs(models: list[PQMIM], images: list[np.ndarray], per_photo: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions), each (N, PAIR, PAIR, 3) uint8: `per_photo` random crops of
    every photo at least PAIR on a side, for each model, through its encoder and default decoder
    (`reconstruct`)."""
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
            recons += list(to_uint8(reconstruct(model, x)))
    return np.stack(originals), np.stack(recons)


class PerceptualStage(Stage):
    name, unit = "perceptual", "crops"

    def __init__(
        self,
        refiner: Refiner | TextureTuning,
        plan: PerceptualPlan,
        out: Path,
        models: list[PQMIM],
        lpips_backbone: Path,
        train: str,
        val: str,
        seed: int,
        device: torch.device = torch.device("cpu"),
        snapshots: Callable[[int, Refiner], None] | None = None,
    ):
        self.refiner, self.plan, self.out, self.models = refiner.to(device), plan, out, models
        self.train_dir, self.val_dir, self.seed, self.device, self.snapshots = train, val, seed, device, snapshots
        self.lpips = LPIPSAlex(lpips_backbone, str(device)).net.requires_grad_(False)
        alex = lambda x: self.lpips.net(self.lpips.scaling_layer(x))  # noqa: E731
        self.disc = (Discriminator(plan.d_ch) if plan.d_kind == "patch" else AlexDiscriminator(alex, plan.d_ch)).to(device)
        self.params = [w for w in refiner.parameters() if w.requires_grad]  # a TextureTuning's decoder only
        self.optimizer = torch.optim.Adam(self.params, lr=plan.lr)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=plan.d_lr, betas=(0.5, 0.999))
        self.state = {"refiner": refiner, "disc": self.disc, "opt": self.optimizer, "d_opt": self.d_opt}
        self.ema = None
        if plan.ema > 0:  # GAN training is noisy from step to step: what ships is the average
            self.ema = copy.deepcopy(refiner).requires_grad_(False)
            self.state["ema"] = self.ema

    def shipped(self) -> Refiner | TextureTuning:
        """The weights that are validated, snapshot and exported: the average, or the refiner."""
        return self.ema if self.ema is not None else self.refiner

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
        if self.plan.online:
            self.photos = [im for im in photos(self.train_dir, "train", 1024) if min(im.shape[:2]) >= self.plan.crop]
            if not self.photos:
                raise SystemExit(f"no training photo of at least {self.plan.crop} px a side in {self.train_dir}")
        else:
            self.orig, self.rec = self._pairs("pairs", lambda: photos(self.train_dir, "train", 1024))
        vo, vr = self._pairs("val_pairs", lambda: val_crops(self.val_dir, PAIR, 16))
        self.val = (vo.float().to(self.device) / 255, vr.float().to(self.device) / 255)

    def train(self, mode: bool) -> None:
        self.refiner.train(mode)
        self.disc.train(mode)

    def _online_batch(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Fresh crops of the photos, flipped at random, and their reconstruction by one of the
        models (in turn, its index returned): as many distinct pairs as iterations allow."""
        n, c = self.plan.batch, self.plan.crop
        crops = []
        for i in rng.integers(len(self.photos), size=n):
            im = self.photos[i]
            y, x = rng.integers(im.shape[0] - c + 1), rng.integers(im.shape[1] - c + 1)
            crop = im[y : y + c, x : x + c]
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        x, j = to_tensor(np.stack(crops)).to(self.device), iteration % len(self.models)
        return x, reconstruct(self.models[j], x), j

    def _batch(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        if self.plan.online:
            return self._online_batch(iteration, rng)
        n, c = self.plan.batch, self.plan.crop
        idx = rng.integers(len(self.orig), size=n)
        ys, xs, flips = rng.integers(PAIR - c + 1, size=n), rng.integers(PAIR - c + 1, size=n), rng.random(n) < 0.5
        out = []
        for src in (self.orig, self.rec):
            crops = [src[i, :, y : y + c, x : x + c] for i, y, x in zip(idx, ys, xs)]
            out.append(torch.stack([p.flip(-1) if f else p for p, f in zip(crops, flips)]).to(self.device).float() / 255)
        return out[0], out[1], None  # the models' pairs mixed (a Refiner serves them all alike)

    @staticmethod
    def _apply(net: Refiner | TextureTuning, rec: torch.Tensor, model: int | None) -> torch.Tensor:
        """The perceptual decoder's image of `rec`, the default decoder's image of models[model]."""
        return net(rec, model) if isinstance(net, TextureTuning) else net(rec)

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        p = self.plan
        if self.ema is not None:  # the last step's weights into the average (its early iterations weigh less)
            decay = min(p.ema, (1 + iteration) / (10 + iteration))
            with torch.no_grad():
                for e, w in zip(self.ema.parameters(), self.refiner.parameters()):
                    if w.requires_grad:  # a TextureTuning's frozen encoder and heads: nothing to average
                        e.lerp_(w, 1 - decay)
        if self.snapshots and p.snapshot_every and iteration and iteration % p.snapshot_every == 0:
            self.snapshots(iteration, self.shipped())
        x, rec, j = self._batch(iteration, rng)
        y = self._apply(self.refiner, rec, j)
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
            y = self._apply(self.shipped(), r, j).clamp(0, 1)
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
    terms = (
        ["MSE"] * (plan.get("k_mse", 100.0) > 0)
        + ["LPIPS"] * (plan.get("k_lpips", 1.0) > 0)
        + [f"MSE of {LOW_POOL}x{LOW_POOL} block means"] * (plan.get("k_low", 0) > 0)
    )
    gan = "conditional GAN" + " on AlexNet features" * (plan.get("d_kind") == "alex")
    return " + ".join(terms + [gan] * (plan["k_adv"] > 0 and plan["gan_from"] < iterations))


def description(plan: dict, iterations: int, texture: bool = False) -> str:
    """A perceptual decoder card's description: a refiner's, or (`texture`) a tuned texture decoder's."""
    if texture:
        return f"adds texture in taef2's latent space to the default decoder's image, its taef2 decoder trained on ({describe_loss(plan, iterations)}); same files"
    return f"refines the default decoder's image for realism ({describe_loss(plan, iterations)}); same files"


def serving(names: list[str], models: list[PQMIM]) -> list[dict]:
    """What a refiner of these models' output serves: each of them, and every shipped model with
    the same autoencoder (an entropy variant's base, say) whose weights are here (on a lent GPU
    only the carried ones are)."""
    serves = [{"name": n, "model_id": m.model_id().hex()} for n, m in zip(names, models)]
    for card in zoo.list_models():
        if card["name"] not in names:
            try:
                other = PQMIM.load(zoo.model_path(card["name"]))
            except (FileNotFoundError, ModelFileError):
                continue
            if any(other.autoencoder_mismatch(m) is None for m in models):
                serves.append({"name": card["name"], "model_id": other.model_id().hex()})
    return serves


def snapshot_path(dest: Path, name: str, iteration: int) -> Path:
    """Where a run's snapshot of `iteration` is written (beside its export; not a shipped name)."""
    return dest / f"{name}.it{iteration:06d}.safetensors"


def export(
    refiner: Refiner | TextureTuning, serves: list[dict], out: Path, dest: Path, name: str, storage: str, data: dict, device: str
) -> Path:
    """The refiner (or tuned texture decoder) as shipped (safetensors + card) and what it serves
    (`serving`; a texture decoder: those of them its file has heads for)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.safetensors"
    copy.deepcopy(refiner).cpu().eval().save(path, serves, storage)
    plan = read_json(out / "perceptual_plan.json")
    trained = progress(load_ckpt(out / "perceptual.pt"))
    texture = isinstance(refiner, TextureTuning)
    if texture:
        serves = [s for s in serves if s["model_id"] in refiner.model_ids]
        for s in serves:
            LatentTexture.load(path, s["model_id"])  # what ships reads back
        source = refiner.source.with_suffix(".json")
        kind = {
            "class": "latent-texture",
            "taef2": f"{TAEF2_SOURCE}, its decoder trained on from {refiner.source.name}",
            "tuned_from": refiner.source.name,
            "fit": json.loads(source.read_text()).get("fit") if source.is_file() else None,  # the heads' (as they came)
        }
    else:
        Refiner.load(path)  # what ships reads back
        kind = {}
    card = {
        "kind": zoo.PERCEPTUAL,
        "description": description(plan, trained["iterations_done"], texture),
        **kind,
        "config": asdict(refiner.cfg),
        "serves": serves,
        "storage": storage,
        "plan": plan,
        "training": {
            **trained,
            "device": device,
            "torch": torch.__version__,
        },
        "data": data,
    }
    atomic_write_json(dest / f"{name}.json", card, indent=2)
    log(out, f"export: wrote {path} and its card")
    return path


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument(
        "--export-dir",
        "--export",
        dest="export",
        default="",
        help="folder to write the refiner and its card into once the plan is done (or at --stop-at), and its snapshots",
    )
    ap.add_argument("--stages", default="train,export", help="train,export; export alone: from the run's last checkpoint")
    ap.add_argument("--name", default="pqmim-perceptual")
    ap.add_argument("--storage", default="int8")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--texture", type=Path, help="a latent-texture decoder file: train its taef2 decoder (for --models it has heads for), not a refiner"
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    stages = set(args.stages.split(","))
    if not stages or stages - {"train", "export"}:
        raise SystemExit(f"--stages: train and/or export, got {args.stages!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plan_path = args.out / "perceptual_plan.json"
    fields = read_json(plan_path) or {**asdict(PerceptualPlan()), **json.loads(args.plan)}
    plan = plan_from_dict(PerceptualPlan, fields)
    if args.texture and not plan.online:  # stored pairs mix the models; a texture head serves one
        raise SystemExit("--texture needs an online plan (each batch through one model, whose head draws)")
    if json.loads(args.plan) and any(fields.get(k) != v for k, v in json.loads(args.plan).items()):
        raise SystemExit(f"{args.out} was started with another plan: use a new --out")
    atomic_write_json(plan_path, asdict(plan))
    device = torch.device(args.device)
    models = [PQMIM.load(zoo.model_path(n)).to(device).eval() for n in args.models]
    serves = serving(args.models, models)
    dest = Path(args.export) if args.export else None

    def snapshot(iteration: int, refiner: Refiner | TextureTuning) -> None:
        copy.deepcopy(refiner).cpu().eval().save(snapshot_path(dest, args.name, iteration), serves, args.storage)

    if args.texture:
        try:
            refiner = TextureTuning(args.texture, [m.model_id().hex() for m in models])
        except ValueError as e:  # no head for one of the models
            raise SystemExit(str(e)) from None
    else:
        refiner = Refiner(RefinerConfig.from_dict(plan.refiner))
    stage = PerceptualStage(
        refiner, plan, args.out, models, Path(args.lpips_backbone), args.train, args.val, args.seed, device, snapshot if dest else None
    )
    if dest and plan.snapshot_every:
        dest.mkdir(parents=True, exist_ok=True)
    done = False
    if "train" in stages:
        done = fit(stage, args.out, Dist(), device, seed=args.seed, stop_at=args.stop_at, ckpt_every=250, ckpt_minutes=3, log_every=25)
    ck = load_ckpt(args.out / "perceptual.pt")
    stopped = bool(args.stop_at) and ck is not None and ckpt_iteration(ck) == args.stop_at
    if "export" in stages and dest and (done or stopped or "train" not in stages):  # the plan's end, --stop-at, or asked
        if ck is None:
            raise SystemExit(f"{args.out}: no checkpoint to export from")
        for key, target in stage.state.items():  # the checkpoint's (an export alone starts from fresh weights)
            target.load_state_dict(ck[key])
        where = f"CPU {platform.machine()} x{torch.get_num_threads()}" if device.type == "cpu" else torch.cuda.get_device_name(device)
        export(stage.shipped(), serves, args.out, dest, args.name, args.storage, {**describe_source(args.train), "val": args.val}, where)


if __name__ == "__main__":
    main()
