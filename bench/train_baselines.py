"""Train a CompressAI baseline (bench/baselines.py) with pqmim's training loop, data stream and
crop plan, so that the bench compares codecs trained on the same data with the same budget.

    python -m bench.train_baselines --arch bmshj2018-hyperprior --lmbda 0.0018 --out runs/hp-0.0018 \\
        --name bmshj2018-hyperprior-lambda0.0018 --export-dir models/baselines

One stage (the entropy model trains jointly with the transforms), resumable like `pqmim train`
(the run folder keeps its architecture and plan: see pqmim.train.run), under torchrun too. The
factorized prior's quantiles take CompressAI's aux loss; it is added to the rate-distortion loss
in the same backward pass (the two touch disjoint parameters), so that DDP reduces every gradient
before any optimiser steps and the ranks cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pqmim.data import CropSource, center_crops, photos
from pqmim.distributed import Dist, index_stream, teardown
from pqmim.evaluate import psnr_uint8
from pqmim.fileio import atomic_write_json
from pqmim.image import to_uint8
from pqmim.train.export import provenance, write_card
from pqmim.train.loop import Stage, StageEnv, fit, load_ckpt, log, per_rank, plan_from_dict, read_json
from pqmim.train.run import RunConfig, common_arguments, device_name, export_name, json_option, settled, start


@dataclass(frozen=True)
class BaselinePlan:
    iterations: int = 5000
    crop: int = 128  # the hyperprior needs sides divisible by 64
    batch: int = 16
    lr: float = 1e-3
    minutes: float = 0.0  # > 0: a wall-time budget; iterations is then only an upper bound


@dataclass(frozen=True)
class Architecture:
    arch: str = "bmshj2018-hyperprior"
    channels: int = 128  # CompressAI's N
    latent_channels: int = 192  # CompressAI's M
    lmbda: float = 0.0018  # loss: lambda * 255^2 * MSE + bpp


@dataclass(frozen=True, kw_only=True)
class BaselineRun(RunConfig):
    architecture: dict | None = None  # Architecture fields given on the command line
    plan: dict | None = None


class RateDistortionLoss(nn.Module):
    """CompressAI's training loss, lambda * 255^2 * MSE + bpp, plus the aux loss of the
    quantiles, as one module for DDP."""

    def __init__(self, net: nn.Module, lmbda: float) -> None:
        super().__init__()
        self.net, self.lmbda = net, lmbda

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2) * pixels)
        mse = F.mse_loss(out["x_hat"].float(), x)
        with torch.autocast(x.device.type, enabled=False):
            aux = self.net.aux_loss()
        return self.lmbda * 255**2 * mse + bpp + aux, mse, bpp, aux


class BaselineStage(Stage):
    name, unit = "baseline", "crops"

    def __init__(self, net: nn.Module, plan: BaselinePlan, lmbda: float, env: StageEnv) -> None:
        self.net_, self.plan, self.lmbda, self.env = net, plan, lmbda, env
        self.ctx, self.device = env.ctx, env.device
        self.params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        self.aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        self.optimizer, self.aux_optimizer = torch.optim.Adam(self.params, lr=plan.lr), torch.optim.Adam(self.aux_params, lr=1e-3)
        self.state = {"model": net, "opt": self.optimizer, "aux_opt": self.aux_optimizer}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.aux_optimizer]

    def begin(self, iteration: int) -> None:
        w = self.env
        self.loss_fn = w.wrap(RateDistortionLoss(self.net_, self.lmbda))
        self.data = CropSource(photos(w.train, "train", w.max_side), self.device)
        self.stream = index_stream(len(self.data), self.ctx, w.seed, start=iteration * per_rank(self.plan.batch, self.ctx))
        self.val = center_crops(w.val, 256, 16).to(self.device) if self.ctx.main else None

    def train(self, mode: bool) -> None:
        self.net_.train(mode)

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        x = self.data.crops([next(self.stream) for _ in range(per_rank(self.plan.batch, self.ctx))], self.plan.crop, rng)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        loss, mse, bpp, aux = self.loss_fn(x)
        return loss, {"psnr": 10 * math.log10(1 / max(mse.item(), 1e-10)), "bpp": bpp.item(), "aux": aux.item()}

    def validate(self) -> tuple[str, dict]:
        o = self.net_(self.val)
        bpp = sum(torch.log(lk).sum() for lk in o["likelihoods"].values()).item() / (-math.log(2) * self.val.shape[0] * 256 * 256)
        psnr = psnr_uint8(to_uint8(self.val), to_uint8(o["x_hat"]))
        return f"psnr {psnr:.2f} dB, {bpp:.4f} bpp (estimated by the likelihoods, {len(self.val)} val crops 256x256)", {
            "psnr": psnr,
            "bpp": bpp,
        }


def settle_quantiles(net: nn.Module) -> float:
    """Finish fitting the quantiles that bound the hyper-latents' coding range. CompressAI's aux
    loss does not depend on the data, so a short run of large then small iterations finishes it
    here, cheaply (during training it moves too slowly to converge in a short budget)."""
    params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    for iterations, lr in ((2000, 0.2), (1000, 0.01)):
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iterations):
            aux = net.aux_loss()
            opt.zero_grad(set_to_none=True)
            aux.backward()
            opt.step()
    return float(net.aux_loss().detach())


def export_baseline(net: nn.Module, a: Architecture, run: BaselineRun, device_label: str) -> Path:
    """Write a baseline (safetensors + card in --export-dir) and measure it on Kodak with its real bitstreams."""
    from pqmim.evaluate import evaluate_folder

    from .baselines import Baseline

    dest = Path(run.export_dir)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{run.name}.safetensors"
    aux = settle_quantiles(net.cpu())
    log(run.out, f"export: aux loss {aux:.3f} after settling the factorized prior's quantiles")
    Baseline(net.eval(), a.arch, a.channels, a.latent_channels).save(weights, storage=run.storage)
    model = Baseline.load(weights)  # measure what ships: stored weights and tables
    origin = provenance(run, {"baseline": "baseline_plan.json"})
    card = {
        "name": run.name,
        "description": run.description,
        **dataclasses.asdict(a),
        "storage": run.storage,
        **origin,
        "training": {**origin["training"]["baseline"], "device": device_label, "torch": torch.__version__},
    }
    if run.kodak:
        res = evaluate_folder(model, run.kodak)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim")}
        log(
            run.out,
            f"export: Kodak bpp {res['bpp']:.4f} psnr {res['psnr']:.2f} dB ms-ssim {res['ms_ssim'] or float('nan'):.4f} over {res['images']} images",
        )
    write_card(dest, run.name, card, run.out)
    return weights


def main(argv: list[str] | None = None) -> nn.Module:
    """Train (and export) a baseline; returns the network as trained so far."""
    from .baselines import architectures

    ap = argparse.ArgumentParser(
        prog="python -m bench.train_baselines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_arguments(ap)
    ap.add_argument("--arch", help=f"CompressAI architecture: {', '.join(architectures())} (default {Architecture.arch})")
    ap.add_argument("--lmbda", type=float, help=f"rate-distortion trade-off, loss lambda*255^2*MSE + bpp (default {Architecture.lmbda})")
    ap.add_argument("--channels", type=int, help=f"CompressAI's N: channels of the transforms (default {Architecture.channels})")
    ap.add_argument("--latent-channels", type=int, help=f"CompressAI's M: channels of the latent (default {Architecture.latent_channels})")
    ap.add_argument("--plan", default="{}", help="BaselinePlan fields as JSON (iterations, crop, batch, lr, minutes); batches are global")
    ap.add_argument("--stages", default="train,export", help="which of train, export to run")
    ns = ap.parse_args(argv)
    chosen = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Architecture) if getattr(ns, f.name) is not None}
    run = BaselineRun.from_args(ns, name=export_name(ns), architecture=chosen or None, plan=json_option(ns.plan, "--plan"))
    ctx, device = start(run, [run.plan])
    try:
        return train(run, set(ns.stages.split(",")), ctx, device)
    finally:
        teardown(ctx)


def train(run: BaselineRun, stages: set[str], ctx: Dist, device: torch.device) -> nn.Module:
    from .baselines import Baseline, build

    out = run.out
    a = settled(out / "config.json", run.architecture, lambda d: Architecture(**d), dataclasses.asdict, ctx, "--arch/--lmbda/--channels")
    net = build(a.arch, a.channels, a.latent_channels)
    if run.init_from and not (out / "baseline.pt").exists():
        source = Baseline.load(run.init_from)
        if (source.arch, source.channels, source.latent_channels) != (a.arch, a.channels, a.latent_channels):
            raise SystemExit(
                f"--init-from {run.init_from} is a {source.arch} N={source.channels} M={source.latent_channels}, not this architecture"
            )
        net.load_state_dict(source.net.state_dict())
        log(out, f"warm start from {run.init_from}: all weights", ctx)
        if ctx.main:  # the source's own training is part of this model's budget: keep it in the card
            source_card = read_json(Path(run.init_from).with_suffix(".json"))
            atomic_write_json(out / "warm_start.json", {"model": Path(run.init_from).stem, "training": source_card.get("training")})
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    device_label = device_name(ctx, device)
    log(out, f"start: {a.arch} N={a.channels} M={a.latent_channels} lambda={a.lmbda} on {device_label}", ctx)
    if "train" in stages:
        plan = settled(out / "baseline_plan.json", run.plan, lambda d: plan_from_dict(BaselinePlan, d), dataclasses.asdict, ctx, "--plan")
        if not fit(BaselineStage(net, plan, a.lmbda, run.stage_env(ctx, device)), out, ctx, device, **run.fit_options()):
            return net
    if "export" in stages and ctx.main:
        if (ck := load_ckpt(out / "baseline.pt")) is None:
            raise SystemExit("export needs a baseline checkpoint in --out")
        net.load_state_dict(ck["model"], strict=False)
        export_baseline(net, a, run, device_label)
    return net


if __name__ == "__main__":
    main()
