"""`pqmim train`: the command line as one typed run configuration, the run folder's record with
its one resume rule, and the run itself (stage 1, stage 2, export).

The resume rule, for every setting a run records (the model config and each stage's plan, and
the baselines' architecture in bench): the run folder keeps what the run started with. Rerunning
resumes with it; a command line that asks for something else is refused (use a new --out) rather
than silently ignored or half merged. Settings not recorded (paths, logging, threads, --stop-at)
may change between sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import zoo
from ..checkout import KODAK, TRAIN, VAL
from ..config import ModelConfig
from ..distributed import Dist, setup, teardown
from ..fileio import atomic_write_json
from ..models import PQMIM, warm_start
from ..models.weights import STORAGES
from .export import export
from .loop import StageEnv, fit, load_ckpt, log, plan_from_dict, read_json, save_ckpt
from .stage1 import Stage1, Stage1Plan
from .stage2 import Stage2, Stage2Plan


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every training run takes (pqmim models here, the baselines in bench)."""

    out: Path
    train: str
    val: str
    kodak: str
    init_from: str = ""
    stop_at: int = 0
    name: str
    description: str = ""
    export_dir: str = "models"
    storage: str = "int8"
    max_side: int = 1024
    ckpt_every: int = 250
    ckpt_minutes: float = 0.0
    log_every: int = 50
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    compile: bool = False

    @classmethod
    def from_args(cls, ns: argparse.Namespace, **parsed):
        """The run configuration of parsed arguments; `parsed` gives fields that need more than
        the argument's value (JSON plans, configs)."""
        values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.name not in parsed}
        return cls(**{**values, **parsed, "out": Path(ns.out)})

    def fit_options(self) -> dict:
        """The keywords of loop.fit this run sets."""
        return {k: getattr(self, k) for k in ("seed", "stop_at", "ckpt_every", "ckpt_minutes", "log_every")}

    def stage_env(self, ctx: Dist, device: torch.device) -> StageEnv:
        """What this run's stages run in; their loss modules get DDP (under torchrun) and
        torch.compile (--compile)."""
        wrap = lambda net: torch.compile(ctx.wrap(net, device)) if self.compile else ctx.wrap(net, device)  # noqa: E731
        return StageEnv(self.train, self.val, self.max_side, self.seed, self.out, ctx, device, wrap)


@dataclass(frozen=True, kw_only=True)
class PQMIMRun(RunConfig):
    """A pqmim model's run: its config and plans (None: not given on the command line)."""

    config: dict | None = None
    stage1_plan: dict | None = None
    stage2_plan: dict | None = None
    stages: frozenset[str] = frozenset({"1", "2", "export"})
    base: str = ""


def common_arguments(ap: argparse.ArgumentParser) -> None:
    """The command-line options of every training run (RunConfig's fields)."""
    ap.add_argument("--out", required=True, help="run folder: checkpoints, train.log, metrics.jsonl (resumed if present)")
    ap.add_argument("--train", default=str(TRAIN), help="training photos: a folder or a data pack (pqmim.pack)")
    ap.add_argument("--val", default=str(VAL), help="validation photos: a folder or a data pack")
    ap.add_argument("--kodak", default=str(KODAK), help="measured at export; '' to skip")
    ap.add_argument("--init-from", default="", help="warm start from a trained .safetensors model: every layer that fits is copied")
    ap.add_argument(
        "--stop-at", type=int, default=0, help="checkpoint and stop when the running stage reaches this iteration (rerun to go on)"
    )
    ap.add_argument("--name", default="", help="the exported model's name (default: the --out folder's name)")
    ap.add_argument("--description", default="")
    ap.add_argument("--export-dir", default="models")
    ap.add_argument(
        "--storage",
        default="int8",
        choices=STORAGES,
        help="exported weights: int8 per channel (default, exact everywhere), float16 or float32",
    )
    ap.add_argument("--max-side", type=int, default=1024, help="downscale larger training images to this side")
    ap.add_argument("--ckpt-every", type=int, default=250, help="validate and checkpoint every this many iterations")
    ap.add_argument("--ckpt-minutes", type=float, default=0, help="also checkpoint (and validate) every this many minutes")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (slow to start; pays off on long GPU runs)")


def export_name(ns: argparse.Namespace) -> str:
    """--name, or the run folder's name; never one the zoo reads as another model's alias (a
    model exported as "default" would be shadowed by the shipped default)."""
    name = ns.name or Path(ns.out).resolve().name
    if zoo.resolve(name) != name:
        raise SystemExit(f"--name {name!r} is an alias of {zoo.resolve(name)!r} in the model zoo: pick another name")
    return name


def json_option(text: str, option: str) -> dict | None:
    """A JSON object option; None when not given ('{}')."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"{option}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{option}: a JSON object is needed, e.g. '{{\"iterations\": 100}}'")
    return value or None


def settled(path: Path, given: dict | None, load: Callable[[dict], object], dump: Callable[[object], dict], ctx: Dist, option: str):
    """The resume rule (module docstring) for one recorded setting: the value saved in `path`
    if there is one (refusing a different `given`), else `given` (or the defaults), recorded."""
    saved = read_json(path)
    if saved:
        value = load(saved)
        if given is not None and load(given) != value:
            raise SystemExit(
                f"{path.parent} holds a run started with another {option} ({path.name}): rerun it with the same one "
                f"or without {option}, or use a new --out"
            )
        return value
    value = load(given or {})
    if ctx.main:
        atomic_write_json(path, dump(value), indent=2)
    return value


def device_name(ctx: Dist, device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    )
    return f"{ctx.world} processes (torchrun, DDP), each on {name}" if ctx.world > 1 else name


def start(run: RunConfig, plans: list[dict | None]) -> tuple[Dist, torch.device]:
    """What every run does first: seed, threads, the torchrun job and its device, GPU settings."""
    torch.manual_seed(run.seed)
    if run.threads:
        torch.set_num_threads(run.threads)
    ctx, device = setup(run.device)
    run.out.mkdir(parents=True, exist_ok=True)
    if ctx.world > 1 and any(p and p.get("minutes") for p in plans):
        teardown(ctx)
        raise SystemExit("time-budgeted plans (minutes) need a single process: ranks' clocks would disagree on when to stop")
    if device.type == "cuda":  # TF32 for the float32 parts (quantizer, baselines); autotuned convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return ctx, device


def parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    ap = argparse.ArgumentParser(prog="pqmim train", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument("--config", default="{}", help='ModelConfig fields as JSON, e.g. \'{"m": 8, "k": 256}\'')
    ap.add_argument(
        "--stage1-plan", default="{}", help="Stage1Plan fields as JSON (iterations, crop, batch, lr, minutes, ...); batches are global"
    )
    ap.add_argument("--stage2-plan", default="{}", help="Stage2Plan fields as JSON")
    ap.add_argument("--stages", default="1,2,export", help="which of 1, 2, export to run")
    ap.add_argument(
        "--base",
        default="",
        help="export only the entropy model, as a variant of this model in --export-dir (same autoencoder; "
        "e.g. a block-causal entropy model trained with --stages 2 on a shipped model's codes)",
    )
    return ap


def main(argv: list[str] | None = None) -> PQMIM:
    """Run `pqmim train`; returns the model as trained so far."""
    ns = parser().parse_args(argv)
    stages = frozenset(ns.stages.split(","))
    if unknown := stages - {"1", "2", "export"}:
        raise SystemExit(f"--stages: unknown {sorted(unknown)} (1, 2, export)")
    run = PQMIMRun.from_args(
        ns,
        name=export_name(ns),
        config=json_option(ns.config, "--config"),
        stages=stages,
        stage1_plan=json_option(ns.stage1_plan, "--stage1-plan"),
        stage2_plan=json_option(ns.stage2_plan, "--stage2-plan"),
    )
    ctx, device = start(run, [run.stage1_plan, run.stage2_plan])
    try:
        return train(run, ctx, device)
    finally:
        teardown(ctx)


def train(run: PQMIMRun, ctx: Dist, device: torch.device) -> PQMIM:
    out = run.out
    cfg = settled(out / "config.json", run.config, ModelConfig.from_dict, ModelConfig.to_dict, ctx, "--config")
    plans = {}
    for stage, cls, given in (("1", Stage1Plan, run.stage1_plan), ("2", Stage2Plan, run.stage2_plan)):
        if stage in run.stages:
            plans[stage] = settled(
                out / f"stage{stage}_plan.json",
                given,
                lambda d, c=cls: plan_from_dict(c, d),
                dataclasses.asdict,
                ctx,
                f"--stage{stage}-plan",
            )
    model = PQMIM(cfg)
    if run.init_from and not (out / "stage1.pt").exists():
        source = PQMIM.load(run.init_from)
        copied = warm_start(model, source)
        log(out, f"warm start from {run.init_from}: copied {len(copied)} modules: {', '.join(copied)}", ctx)
        if ctx.main:
            atomic_write_json(
                out / "warm_start.json",
                {"model": Path(run.init_from).stem, "model_id": source.model_id().hex(), "modules_copied": len(copied)},
            )
    model = model.to(device)
    if device.type == "cuda":  # tensor-core friendly layout for the convolutions
        model = model.to(memory_format=torch.channels_last)
    device_label = device_name(ctx, device)
    log(out, f"start: stages {sorted(run.stages)} on {device_label}, config {cfg.to_dict()}", ctx)
    env = run.stage_env(ctx, device)
    if "1" in run.stages and not fit(Stage1(model, plans["1"], env), out, ctx, device, **run.fit_options()):
        return model
    if "1" not in run.stages and run.init_from and not (out / "stage1.pt").exists() and ctx.main:
        # stage 2 alone on a trained model's autoencoder (e.g. a block-causal entropy model for a
        # shipped model, fine-tuned from its full-attention one): the warm start is stage 1
        save_ckpt(out / "stage1.pt", model=model.state_dict(), iteration=0, elapsed=0.0)
        log(out, f"stage 1: the autoencoder and quantizer of {run.init_from}, as they are", ctx)
    ctx.barrier()
    if "2" in run.stages or "export" in run.stages:
        if (ck := load_ckpt(out / "stage1.pt")) is None:
            raise SystemExit("stage 2 needs a finished stage 1 checkpoint in --out")
        model.load_state_dict(ck["model"])
    if "2" in run.stages and not fit(Stage2(model, plans["2"], env), out, ctx, device, **run.fit_options()):
        return model
    if "export" in run.stages and ctx.main:
        if (ck := load_ckpt(out / "stage2.pt")) is not None:
            model.entropy.load_state_dict(ck["entropy"])
        export(model, run, device_label)
    return model
