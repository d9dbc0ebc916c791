"""The round's plan: its jobs (every rung of the ladder and the same-budget baselines) with
their time budgets, and the limits of the trip (what comes back, what models/ may hold)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..checkout import ROOT


TRIP = ROOT / ".round"  # ignored by git, carried to the device: pack.tar and whl/ (and lpips.pth for perceptual jobs)
LPIPS_TRIP = TRIP / "lpips.pth"  # the LPIPS backbone in float16 (prepare --perceptual): half the size
WORK = Path("/tmp/pqmim-round")  # the device's local disk: jobs, checkpoints, exports
PART_BYTES = 15 << 20  # what the device gives back per command: 8 files of at most 16 MiB, 64 MiB in all,
CALL_BYTES = 60 << 20  # so 4 parts of 15 MiB and the manifest per collect call
WHEELS = ("compressai==1.2.8", "constriction==0.5.0", "pytorch-msssim==1.0.0")  # not on the device
MODELS_BUDGET = 64 * 10**6  # models/ in all, ladder and baselines (bytes)
STAGE2_SHARE = 0.2  # of a pqmim job's minutes: the entropy model converges fast, the autoencoder does not
OVERHEAD_MIN = 1.5  # per job: start, decoding the pack (twice), stage 2's code maps, export


# ----------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One training process: a rung of the ladder (`pqmim.train` arguments), a baseline
    (`bench.train_baselines` arguments) or a perceptual decoder (`pqmim.train.perceptual`)."""

    name: str
    args: list[str]
    kind: str = "pqmim"  # or "baseline", "perceptual"


MODULES = {"pqmim": "pqmim.train", "baseline": "bench.train_baselines", "perceptual": "pqmim.train.perceptual"}
PERCEPTUAL_SERVES = ["pqmim-q1", "pqmim-q2", "pqmim-q3"]  # whose weights a perceptual job needs carried
TEXTURE_SERVES = ["pqmim-q1", "pqmim-q2"]  # the shipped texture decoder's models (its file carried too)
TEXTURE_FILE = "models/pqmim-texture.safetensors"  # relative: the device runs in the checkout's root


@dataclass
class RoundPlan:
    minutes: float
    jobs: list[Job] = field(default_factory=list)
    device: str = "cuda"


def shipped_config(name: str) -> dict:
    """The architecture of a shipped rung, from its card (cards travel; weights may not)."""
    return json.loads((ROOT / "models" / f"{name}.json").read_text())["config"]


def perceptual_jobs(train: float, pack: str, device: str) -> list[Job]:
    """Trials of the perceptual decoder for the shipped q1-q3 (frozen: their weights travel), in
    parallel on the one GPU: the CPU's loss (no GAN), the same with the conditional GAN, the GAN
    with a wider refiner, and the GAN with the projected discriminator on LPIPS's AlexNet (which
    learns in fewer steps, and a round's minutes are few). Each writes snapshots of its averaged
    weights, chosen among here by held-out FID (`python -m bench perceptual-select`). The GAN
    starts after 1000 iterations of MSE + LPIPS, at HiFiC's weight.

    And one trial of the texture decoder that serves q1 and q2 (`--texture`): its taef2 decoder
    learns to draw the head's noisy latents as photos, with LPIPS, block means and the projected
    GAN from the start (it starts as a realistic decoder, not as the identity), no pixel MSE
    (which would teach it to ignore the noise), and a fine-tuning step size."""
    base = {
        "minutes": round(train, 2),
        "iterations": 10**7,
        "online": True,
        "batch": 16,
        "crop": 256,
        "lr": 1e-4,
        "d_lr": 1e-4,
        "gan_from": 1000,
        "k_adv": 0.15,
        "ema": 0.999,
        "d_ch": 64,
        "snapshot_every": 2000,
    }
    trials = {
        "pqmim-perceptual-lpips": {**base, "k_adv": 0.0},
        "pqmim-perceptual-gan": base,
        "pqmim-perceptual-wide": {**base, "refiner": {"width": 48, "channels": 128, "blocks": 4}},
        "pqmim-perceptual-alex": {**base, "d_kind": "alex"},
    }
    common = ["--train", pack, "--val", pack, "--lpips-backbone", str(LPIPS_TRIP), "--device", device, "--threads", "2"]
    jobs = [Job(name, ["--plan", json.dumps(plan), "--models", *PERCEPTUAL_SERVES, *common], "perceptual") for name, plan in trials.items()]
    # lr a tenth of the refiners': on the CPU (batch 4, 128 px) held-out FID at q1 got worse within
    # 150-300 iterations at 3e-5, with or without LPIPS (models/TRAINING.md); snapshots pick the moment
    texture = {**base, "lr": 1e-5, "k_mse": 0.0, "gan_from": 0, "d_kind": "alex"}
    args = ["--plan", json.dumps(texture), "--models", *TEXTURE_SERVES, "--texture", TEXTURE_FILE, *common]
    return jobs + [Job("pqmim-perceptual-texture", args, "perceptual")]


def default_plan(
    minutes: float, pack: str, only: list[str] | None = None, init: dict[str, str] | None = None, device: str = "cuda"
) -> RoundPlan:
    """Every rung (its shipped architecture, from scratch unless `init` names a start) and the
    baselines at two rate points each, all with the same wall-time budget. GPU recipe: 256 px
    crops, batch 32 (stage 1 and baselines) and 128 windows (stage 2). The perceptual jobs
    (`perceptual_jobs`) run only when `only` names them: they serve the shipped q1-q3, so they
    do not go with a retraining of those."""
    train = minutes - OVERHEAD_MIN
    if train <= 0:
        raise ValueError(f"{minutes} minutes leave no training time")
    jobs = []
    common = [
        "--train",
        pack,
        "--val",
        pack,
        "--kodak",
        "",
        "--ckpt-minutes",
        "3",
        "--log-every",
        "50",
        "--device",
        device,
        "--threads",
        "2",
    ]
    for q in range(1, 6):
        name = f"pqmim-q{q}"
        s1 = {
            "minutes": round(train * (1 - STAGE2_SHARE), 2),
            "iterations": 10**7,
            "warmup_ae_iterations": 50,  # k-means while the learning rate warms up: the yardstick (TRAINING.md)
            "small_crop_until": 0,
            "crop": 256,
            "batch": 32,
            "lr": 5e-4,
        }
        s2 = {"minutes": round(train * STAGE2_SHARE, 2), "iterations": 10**7, "batch": 128, "lr": 1e-3}
        if init and name in init:  # trained on from a model: its codebooks are set, and a smaller step keeps what it learned
            s1.update(warmup_ae_iterations=0, lr=3e-4)
        args = [
            "--config",
            json.dumps(shipped_config(name)),
            "--stage1-plan",
            json.dumps(s1),
            "--stage2-plan",
            json.dumps(s2),
            "--description",
            f"MSE-optimised, trained on a lent GPU for {minutes:g} minutes (pqmim.gpu_round)",
        ]
        if init and name in init:
            args += ["--init-from", init[name]]
        jobs.append(Job(name, args + common))
    for arch in ("bmshj2018-hyperprior", "mbt2018-mean"):
        for lmbda in (0.0018, 0.0130):
            name = f"{arch}-lambda{lmbda}"
            plan = {"minutes": round(train, 2), "iterations": 10**7, "crop": 256, "batch": 32, "lr": 5e-4}
            jobs.append(
                Job(
                    name,
                    [
                        "--arch",
                        arch,
                        "--lmbda",
                        str(lmbda),
                        "--plan",
                        json.dumps(plan),
                        "--stages",
                        "train,export",
                        "--description",
                        f"CompressAI {arch}, same data and wall time as the ladder's round",
                    ]
                    + common,
                    "baseline",
                )
            )
    if not only:
        return RoundPlan(minutes, jobs, device)
    jobs += perceptual_jobs(train, pack, device)
    unknown = set(only) - {j.name for j in jobs}
    if unknown:
        raise ValueError(f"no job named {sorted(unknown)} (jobs: {', '.join(j.name for j in jobs)})")
    return RoundPlan(minutes, [j for j in jobs if j.name in only], device)


def tiny_plan(pack: str) -> RoundPlan:
    """The dry run's plan, on the CPU: a tiny pqmim model whose stage 1 has a time budget (6 s),
    and a tiny baseline with a budget too long to finish (10 minutes), which collect must stop
    and export from its last checkpoint, as it would a job that overruns a lent machine."""
    tiny = {
        "widths": [8, 8, 16, 16],
        "res_blocks": 1,
        "m": 3,
        "k": 32,
        "sub_dim": 2,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "window": 8,
        "steps": 6,
    }
    common = ["--train", pack, "--val", pack, "--kodak", "", "--ckpt-every", "4", "--log-every", "2", "--device", "cpu", "--threads", "1"]
    s1 = {"minutes": 0.1, "iterations": 10**6, "warmup_ae_iterations": 2, "small_crop_until": 0, "crop": 64, "batch": 2}
    return RoundPlan(
        0.5,
        [
            Job(
                "tiny-pqmim",
                ["--config", json.dumps(tiny), "--stage1-plan", json.dumps(s1), "--stage2-plan", json.dumps({"iterations": 6, "batch": 4})]
                + common,
            ),
            Job(
                "tiny-hyperprior",
                [
                    "--arch",
                    "bmshj2018-hyperprior",
                    "--channels",
                    "8",
                    "--latent-channels",
                    "8",
                    "--plan",
                    json.dumps({"minutes": 10, "iterations": 10**6, "crop": 64, "batch": 2}),
                    "--stages",
                    "train,export",
                ]
                + common,
                "baseline",
            ),
        ],
        "cpu",
    )
