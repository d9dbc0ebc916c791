"""The one training loop, shared by stage 1, stage 2 and the CompressAI baselines (bench).

A stage says what one iteration computes (`Stage.loss`), what validation measures
(`Stage.validate`) and what a checkpoint holds (`Stage.state`); the loop does the rest, the same
way for all: learning-rate schedule, optimiser steps, logging, checkpoints, resume, stop.

Invariants:
- An iteration is a pure function of (seed, rank, iteration) and the state before it: its random
  numbers come from a generator seeded with those three, and a checkpoint holds every torch RNG
  (CPU and, in a GPU run, CUDA: dead-code restarts draw on the device), so a run stopped and
  resumed ends exactly where an uninterrupted one does.
- "Iteration" is a training step; "step" is kept for the coder's coding steps.
- Every figure logged goes to run/metrics.jsonl (one JSON object per line: what bench curves and
  a poll of a detached run read) and, for people, to run/train.log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..distributed import Dist
from ..fileio import atomic_file, atomic_write_json

LEGACY_PLAN_KEYS = {"steps": "iterations", "warmup_ae_steps": "warmup_ae_iterations"}  # plans written before 0.5


def plan_from_dict(cls, fields: dict):
    """A plan dataclass from JSON fields, accepting the names of plans written before 0.5
    ("steps") and refusing unknown ones with the list of known ones."""
    fields = {LEGACY_PLAN_KEYS.get(k, k): v for k, v in fields.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(fields) - known:
        raise SystemExit(f"{cls.__name__}: unknown field(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**fields)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def log(out: Path, msg: str, ctx: Dist | None = None) -> None:
    """A line for people: printed and appended to out/train.log (rank 0 only)."""
    if ctx is not None and not ctx.main:
        return
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def record(out: Path, ctx: Dist, **fields) -> None:
    """Figures for programs (rank 0 only): a line of out/metrics.jsonl, and the run's latest
    figures merged into out/status.json (replaced atomically), which a poll of a detached run
    (pqmim.gpu_round) reads."""
    if not ctx.main:
        return
    fields = {**fields, "time": time.time()}
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(fields) + "\n")
    atomic_write_json(out / "status.json", {**read_json(out / "status.json"), **fields})


def finished(iteration: int, elapsed: float, plan) -> bool:
    """A stage is done after plan.iterations, or once a time-budgeted plan's minutes are spent."""
    return iteration >= plan.iterations or (plan.minutes > 0 and elapsed >= plan.minutes * 60)


def lr_at(iteration: int, elapsed: float, plan, warmup: int = 100) -> float:
    """Linear warm-up over `warmup` iterations, then cosine decay to 5% over the plan's
    iterations, or over its minutes when it has a time budget."""
    if iteration < warmup:
        return plan.lr * (iteration + 1) / warmup
    t = (iteration - warmup) / max(1, plan.iterations - warmup)
    if plan.minutes > 0:
        t = max(t, elapsed / (plan.minutes * 60))
    return plan.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Checkpoints:
    """When to validate and checkpoint: every `every` iterations, every `minutes` of wall time
    (the GPU round: a lent machine can go at any moment), and at the end of a stage."""

    def __init__(self, every: int, minutes: float) -> None:
        self.every, self.seconds, self.last = every, minutes * 60, time.time()

    def due(self, iteration: int, stop: bool) -> bool:
        if stop or iteration % self.every == 0 or (self.seconds > 0 and time.time() - self.last >= self.seconds):
            self.last = time.time()
            return True
        return False


def per_rank(batch: int, ctx: Dist) -> int:
    """A plan's batch is global: each of the ranks takes an equal share."""
    if batch % ctx.world:
        raise SystemExit(f"batch {batch} does not split evenly over {ctx.world} processes")
    return batch // ctx.world


def save_ckpt(path: Path, **state) -> None:
    with atomic_file(path) as f:
        torch.save(state, f)


def load_ckpt(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def ckpt_iteration(ck: dict) -> int:
    return ck["iteration"] if "iteration" in ck else ck["step"]  # "step": checkpoints before 0.5


def rng_states() -> dict:
    """Every torch generator a training iteration may draw from."""
    return {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def progress(ck: dict | None) -> dict:
    """A stage's figures for a model card, from its last checkpoint: iterations, wall time,
    samples seen (crops for stage 1 and the baselines, code windows for stage 2) and their rate."""
    if ck is None:
        return {"iterations_done": 0, "wall_s": None}
    seen = ck.get("seen")
    return {
        "iterations_done": ckpt_iteration(ck),
        "wall_s": round(ck["elapsed"]),
        "seen": seen,
        "per_s": round(seen / ck["elapsed"], 1) if seen and ck["elapsed"] > 0 else None,
    }


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def fmt(metrics: dict) -> str:
    return " ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


@dataclass(frozen=True)
class StageEnv:
    """What a stage runs in: its photos, seed and run folder, the torchrun job and device, and the
    wrapper of its loss module (DDP under torchrun, torch.compile with --compile)."""

    train: str
    val: str
    max_side: int
    seed: int
    out: Path
    ctx: Dist
    device: torch.device
    wrap: Callable[[nn.Module], nn.Module]


class Stage:
    """What differs between the stages. A subclass sets `name` (the checkpoint's and the log's
    name), `plan`, `unit` (what a sample is: crops, windows), `optimizer` (the one the schedule
    drives), `params` (those its gradients are clipped on) and `state` (checkpoint key -> module
    or optimiser), and implements the methods below."""

    name: str
    unit: str
    plan: object
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    state: dict[str, object]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser stepped after the backward pass (the baselines add an aux one)."""
        return [self.optimizer]

    def batch_at(self, iteration: int) -> int:
        """The global batch of an iteration (stage 1 starts with small crops in larger batches)."""
        return self.plan.batch

    def begin(self, iteration: int) -> None:
        """Build what iterations need (data, DDP wrapper), positioned at `iteration`."""

    def loss(self, iteration: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """One iteration's forward pass: the loss to minimise and the figures to log."""
        raise NotImplementedError

    def validate(self) -> tuple[str, dict]:
        """Rank 0, at a checkpoint: a line for people and the figures for metrics.jsonl."""
        raise NotImplementedError

    def train(self, mode: bool) -> None:
        raise NotImplementedError


def fit(
    stage: Stage,
    out: Path,
    ctx: Dist,
    device: torch.device,
    *,
    seed: int,
    stop_at: int = 0,
    ckpt_every: int = 250,
    ckpt_minutes: float = 0.0,
    log_every: int = 50,
) -> bool:
    """Run `stage` from its checkpoint in `out` (if any) to the end of its plan, or to
    iteration `stop_at`; True once the plan is done."""
    path, plan = out / f"{stage.name}.pt", stage.plan
    iteration, elapsed, seen = 0, 0.0, 0
    if (ck := load_ckpt(path)) is not None:
        for key, target in stage.state.items():
            target.load_state_dict(ck[key])
        if "rng" in ck:
            torch.set_rng_state(ck["rng"])
        if "cuda_rng" in ck and torch.cuda.is_available():
            torch.cuda.set_rng_state(ck["cuda_rng"])
        iteration, elapsed, seen = ckpt_iteration(ck), ck["elapsed"], ck.get("seen", 0)
        log(out, f"{stage.name}: resumed at iteration {iteration}", ctx)
    if finished(iteration, elapsed, plan):
        return True
    if stop_at and iteration >= stop_at:  # already there: rerunning a stopped command trains no further
        return False
    stage.begin(iteration)
    stage.train(True)
    t0 = time.time() - elapsed
    ckpts = Checkpoints(ckpt_every, ckpt_minutes)
    while True:
        rng = np.random.default_rng([seed, ctx.rank, iteration])  # a pure function of the iteration
        lr = lr_at(iteration, elapsed, plan)
        for g in stage.optimizer.param_groups:
            g["lr"] = lr
        with autocast(device):
            loss, metrics = stage.loss(iteration, rng)
        for opt in stage.optimizers():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.params, 1.0)
        for opt in stage.optimizers():
            opt.step()
        seen += stage.batch_at(iteration)
        iteration += 1
        elapsed = time.time() - t0
        if iteration % log_every == 0 or iteration == 1:  # iteration 1: a detached run shows it is under way
            log(out, f"{stage.name} iteration {iteration} {fmt(metrics)} lr {lr:.2e} {elapsed:.0f}s {stage.unit} {seen}", ctx)
            record(
                out,
                ctx,
                stage=stage.name,
                iteration=iteration,
                elapsed=elapsed,
                seen=seen,
                per_s=seen / max(elapsed, 1e-9),
                lr=lr,
                **metrics,
            )
        stop = finished(iteration, elapsed, plan) or iteration == stop_at
        if ckpts.due(iteration, stop) and ctx.main:
            stage.train(False)
            with torch.no_grad():
                line, figures = stage.validate()
            stage.train(True)
            if line:
                log(out, f"{stage.name} val iteration {iteration}: {line}", ctx)
                record(out, ctx, stage=stage.name, val_iteration=iteration, **{f"val_{k}": v for k, v in figures.items()})
            state = {key: target.state_dict() for key, target in stage.state.items()}
            save_ckpt(path, **state, **rng_states(), iteration=iteration, elapsed=time.time() - t0, seen=seen)
        if stop:
            break
    stage.train(False)
    ctx.barrier()
    return finished(iteration, elapsed, plan)
