"""A training round on a lent GPU, prepared so that none of its 30 minutes goes to set-up.

A session that is lent a device (the `status` tool says can_start_another) runs, in order (the
README's "A training round on a lent GPU" gives each device call's carry):

    here:    python -m pqmim.gpu_round prepare                # pack, wheels, weights out of the index
    here:    python -m pqmim.gpu_round xcheck-prepare         # Kodak, default model, this CPU's files
    device:  python3 -m pqmim.gpu_round launch --minutes 19  # carry .round/pack.tar, .round/whl
    device:  python3 -m pqmim.gpu_round xcheck --out $OUT; python3 -m pqmim.gpu_round poll --seconds 420
    device:  python3 -m pqmim.gpu_round poll --seconds 570   # back to back, until every job is done
    device:  python3 -m pqmim.gpu_round collect --out $OUT   # (then --from-part N if it says so)
    here:    ../shared/tools/device-tree restore
    here:    python -m pqmim.gpu_round xcheck-receive FILES  # GPU<->CPU exact round trips
    here:    python -m pqmim.gpu_round receive FILES...      # join, cards, Kodak with the real codec
    here:    python -m pqmim.gpu_round ship runs/round-... NAME...  # models that beat the shipped ones

`launch` starts one detached process (setsid) per job: every rung of the ladder and the
same-budget baselines, all on the one GPU at once, each a plain `python -m pqmim.train` run with
time-budgeted plans (so a job ends on time however fast the GPU is), checkpoints on the
machine's local disk every few minutes and an export (int8 weights, card without Kodak) at the
end. `collect` exports any job that has not finished from its last checkpoint, so a round that
runs short still brings back what it learned. `dry-run` does all of it on this CPU with tiny
models, as the tests do.

Invariants: nothing the device runs needs the network or ../shared (the pack holds the photos
and validation crops, .round/whl the missing packages); what comes back is parts of at most
PART_BYTES, at most CALL_BYTES per command, checked here by a SHA-256 in the round's manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the device runs from its root
TRIP = ROOT / ".round"  # ignored by git, carried to the device: pack.tar and whl/
WORK = Path("/tmp/pqmim-round")  # the device's local disk: jobs, checkpoints, exports
SHARED = ROOT.parent / "shared"
PART_BYTES = 15 << 20  # what the device gives back per command: 8 files of at most 16 MiB, 64 MiB in all,
CALL_BYTES = 60 << 20  # so 4 parts of 15 MiB and the manifest per collect call
WHEELS = ("compressai==1.2.8", "constriction==0.5.0", "pytorch-msssim==1.0.0")  # not on the device
MODELS_BUDGET = 64 * 10**6  # models/ in all, ladder and baselines (bytes)
STAGE2_SHARE = 0.2  # of a pqmim job's minutes: the entropy model converges fast, the autoencoder does not
OVERHEAD_MIN = 1.5  # per job: start, decoding the pack (twice), stage 2's code maps, export


# ----------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One training process: a rung of the ladder or a baseline, as `pqmim.train` arguments."""

    name: str
    args: list[str]
    kind: str = "pqmim"  # or "baseline"


@dataclass
class RoundPlan:
    minutes: float
    jobs: list[Job] = field(default_factory=list)
    device: str = "cuda"


def shipped_config(name: str) -> dict:
    """The architecture of a shipped rung, from its card (cards travel; weights may not)."""
    return json.loads((ROOT / "models" / f"{name}.json").read_text())["config"]


def default_plan(minutes: float, pack: str, only: list[str] | None = None, init: dict[str, str] | None = None,
                 device: str = "cuda") -> RoundPlan:
    """Every rung (its shipped architecture, from scratch unless `init` names a start) and the
    baselines at two rate points each, all with the same wall-time budget. GPU recipe: 256 px
    crops, batch 32 (stage 1 and baselines) and 128 windows (stage 2)."""
    train = minutes - OVERHEAD_MIN
    if train <= 0:
        raise ValueError(f"{minutes} minutes leave no training time")
    jobs = []
    common = ["--train", pack, "--val", pack, "--kodak", "", "--ckpt-minutes", "3", "--log-every", "50", "--device", device, "--threads", "2"]
    for q in range(1, 6):
        name = f"pqmim-q{q}"
        s1 = {"minutes": round(train * (1 - STAGE2_SHARE), 2), "steps": 10**7, "warmup_ae_steps": 500, "small_crop_until": 0,
              "crop": 256, "batch": 32, "lr": 5e-4}
        s2 = {"minutes": round(train * STAGE2_SHARE, 2), "steps": 10**7, "batch": 128, "lr": 1e-3}
        args = ["--config", json.dumps(shipped_config(name)), "--stage1-plan", json.dumps(s1), "--stage2-plan", json.dumps(s2),
                "--description", f"MSE-optimised, trained on a lent GPU for {minutes:g} minutes (pqmim.gpu_round)"]
        if init and name in init:
            args += ["--init-from", init[name]]
        jobs.append(Job(name, args + common))
    for arch in ("bmshj2018-hyperprior", "mbt2018-mean"):
        for lmbda in (0.0018, 0.0130):
            name = f"{arch}-lambda{lmbda}"
            s1 = {"minutes": round(train, 2), "steps": 10**7, "crop": 256, "batch": 32, "lr": 5e-4}
            jobs.append(Job(name, ["--arch", arch, "--lmbda", str(lmbda), "--stage1-plan", json.dumps(s1), "--stages", "1,export",
                                   "--description", f"CompressAI {arch}, same data and wall time as the ladder's round"] + common, "baseline"))
    if only:
        unknown = set(only) - {j.name for j in jobs}
        if unknown:
            raise ValueError(f"no job named {sorted(unknown)} (jobs: {', '.join(j.name for j in jobs)})")
        jobs = [j for j in jobs if j.name in only]
    return RoundPlan(minutes, jobs, device)


def tiny_plan(pack: str) -> RoundPlan:
    """The dry run's plan, on the CPU: a tiny pqmim model whose stage 1 has a time budget (6 s),
    and a tiny baseline with a budget too long to finish (10 minutes), which collect must stop
    and export from its last checkpoint, as it would a job that overruns a lent machine."""
    tiny = {"widths": [8, 8, 16, 16], "res_blocks": 1, "m": 3, "k": 32, "sub_dim": 2, "d_model": 32, "n_layers": 2, "n_heads": 2, "window": 8, "steps": 6}
    common = ["--train", pack, "--val", pack, "--kodak", "", "--ckpt-every", "4", "--log-every", "2", "--device", "cpu", "--threads", "1"]
    s1 = {"minutes": 0.1, "steps": 10**6, "warmup_ae_steps": 2, "small_crop_until": 0, "crop": 64, "batch": 2}
    return RoundPlan(0.5, [
        Job("tiny-pqmim", ["--config", json.dumps(tiny), "--stage1-plan", json.dumps(s1), "--stage2-plan", json.dumps({"steps": 6, "batch": 4})] + common),
        Job("tiny-hyperprior", ["--arch", "bmshj2018-hyperprior", "--n", "8", "--m", "8", "--stage1-plan", json.dumps({"minutes": 10, "steps": 10**6, "crop": 64, "batch": 2}),
                                "--stages", "1,export"] + common, "baseline"),
    ], "cpu")


# ----------------------------------------------------------------------------- here, before the trip
def prepare(sources: list[str], val: str, lighten: bool = True) -> None:
    """Build the pack and fetch the wheels the device lacks (each only if missing), take the
    tracked weights out of the index, and check what travels fits in 64 MiB."""
    from . import pack

    TRIP.mkdir(exist_ok=True)
    if not (TRIP / "pack.tar").exists():
        m = pack.build(sources, TRIP / "pack.tar", val)
        print(f"pack: {m['images']} photos, {m['megapixels']} MP, JPEG q{m['jpeg_quality']}, {m['bytes'] / 2**20:.1f} MiB")
    whl = TRIP / "whl"
    if not list(whl.glob("*.whl")):
        platforms = [a for p in ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64") for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", *platforms, "-d", str(whl), *WHEELS], check=True)
    if lighten and not (ROOT / ".git" / "device-tree-lightened").exists():
        (ROOT / ".git" / "info").mkdir(exist_ok=True)  # device-tree writes its ignore rules there
        (ROOT / ".git" / "info" / "exclude").touch()
        subprocess.run([str(SHARED / "tools" / "device-tree"), "lighten"], cwd=ROOT, check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = sum((ROOT / p).stat().st_size for p in listed.decode().split("\0") if p and (ROOT / p).is_file())
    carried = (TRIP / "pack.tar").stat().st_size + sum(p.stat().st_size for p in whl.glob("*.whl"))
    print(f"launch travels: {tree / 2**20:.1f} MiB of the tree + {carried / 2**20:.1f} MiB carried (.round/pack.tar, .round/whl) "
          f"= {(tree + carried) / 2**20:.1f} MiB of 64")
    if tree + carried > 64 << 20:
        raise SystemExit("too big to travel: lighten the tree (../shared/tools/device-tree lighten) or build a smaller pack (--max-mib)")


# ----------------------------------------------------------------------------- on the device
def install_wheels(wheels: Path, work: Path) -> None:
    """Install the carried wheels (for the device's Python) into work/site: no network, no deps."""
    found = sorted(str(p) for p in wheels.glob("*.whl"))
    if found and not (work / "site").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(work / "site"), *found], check=True)


def job_env(work: Path) -> dict[str, str]:
    """The environment that puts this checkout and the installed wheels on the jobs' path."""
    site = work / "site"
    path = [str(ROOT)] + ([str(site)] if site.exists() else []) + [os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "PYTHONUNBUFFERED": "1"}


def job_argv(job: Job, work: Path, stages: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "pqmim.train", "--out", str(work / "jobs" / job.name), "--name", job.name,
            "--export-dir", str(work / "export"), *job.args]
    return argv + (["--stages", stages] if stages else [])


def launch(plan: RoundPlan, work: Path = WORK, watch_s: float = 60, wheels: Path | None = TRIP / "whl") -> None:
    """Start every job detached (its own session: it outlives this command), then watch them for
    `watch_s` seconds so that a job that dies at once is reported now, not at the next poll.
    `wheels`: the packages the device lacks (None where they are installed, as in the dry run)."""
    if (work / "round.json").exists():
        raise SystemExit(f"{work} already holds a round: poll or collect it (or remove the folder)")
    for d in ("jobs", "export", "done"):
        (work / d).mkdir(parents=True, exist_ok=True)
    if wheels:
        install_wheels(wheels, work)
    env = job_env(work)
    device = plan.device
    if device == "cuda":
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda (not available!)"
    pids = {}
    for job in plan.jobs:
        (work / "jobs" / job.name).mkdir(parents=True, exist_ok=True)
        cmd = " ".join(_quote(a) for a in job_argv(job, work)) + f"; echo $? > {_quote(str(work / 'done' / job.name))}"
        with open(work / "jobs" / job.name / "stdout.log", "ab") as out:
            p = subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pids[job.name] = p.pid
    record = {"minutes": plan.minutes, "device": device, "started": time.time(), "pids": pids,
              "jobs": [dataclasses.asdict(j) for j in plan.jobs]}
    (work / "round.json").write_text(json.dumps(record, indent=2))
    print(f"launched {len(plan.jobs)} jobs on {device}, {plan.minutes:g} minutes each: {', '.join(pids)}")
    poll(work, watch_s, every=max(5.0, watch_s / 4))


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def states(work: Path) -> list[dict]:
    """One row per job: its status.json (written by pqmim.train) and, once it ended, its exit code."""
    record = _read(work / "round.json")
    rows = []
    for j in record.get("jobs", []):
        done = work / "done" / j["name"]
        rc = int(done.read_text().strip() or -1) if done.exists() else None
        rows.append({"name": j["name"], "rc": rc, **_read(work / "jobs" / j["name"] / "status.json")})
    return rows


def report(work: Path) -> str:
    record = _read(work / "round.json")
    rows = states(work)
    lines = [f"round on {record.get('device')}: {(time.time() - record.get('started', time.time())) / 60:.1f} of {record.get('minutes')} minutes"]
    lines.append(f"{'job':<36} {'state':<9} {'stage':>5} {'step':>7} {'samples/s':>9}  latest validation")
    total = 0.0
    for r in rows:
        state = "running" if r["rc"] is None else ("done" if r["rc"] == 0 else f"FAILED {r['rc']}")
        per_s = r.get("per_s") or 0.0
        if r["rc"] is None and r.get("stage") == "1":
            total += per_s  # crops now being cut: stage 1 and the baselines
        val = " ".join(f"{k} {r[k]:.4g}" for k in ("val_psnr", "val_bpp", "val_bits_per_code") if k in r)
        lines.append(f"{r['name']:<36} {state:<9} {r.get('stage', '-'):>5} {r.get('step', 0):>7} {per_s:>9.1f}  {val}")
    lines.append(f"crops of stage 1 and the baselines, all running jobs: {total:.0f} per second")
    for r in rows:
        if r["rc"] not in (None, 0):
            log = (work / "jobs" / r["name"] / "stdout.log").read_text(errors="replace").splitlines()[-15:]
            lines += [f"--- {r['name']} (exit {r['rc']}), last lines:"] + log
    return "\n".join(lines)


def poll(work: Path = WORK, seconds: float = 540, every: float = 60, wait_for: set[str] | None = None) -> bool:
    """Print the jobs' progress every `every` seconds until all (or those in wait_for) have ended
    or `seconds` passed (a device command may run 10 minutes: poll again, back to back). True
    once they ended."""
    if not (work / "round.json").exists():
        raise SystemExit(f"no round in {work}: launch one first")
    end = time.time() + seconds
    while True:
        print(report(work), flush=True)
        all_done = all(r["rc"] is not None for r in states(work) if wait_for is None or r["name"] in wait_for)
        if all_done or time.time() >= end:
            return all_done
        time.sleep(max(0.5, min(every, end - time.time())))


def _bundle(work: Path, record: dict) -> Path:
    """The exports (weights and cards), the round's record and every job's logs, as one gzipped
    tar (int8 weights shrink by about a tenth)."""
    bundle = work / "round.tar.gz"
    tmp = work / "round.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        tar.add(work / "round.json", "round.json")
        for p in sorted((work / "export").glob("*")):
            if p.suffix in (".safetensors", ".json"):
                tar.add(p, f"export/{p.name}")
        for j in record["jobs"]:
            for name in ("train.log", "status.json", "stdout.log"):
                p = work / "jobs" / j["name"] / name
                if p.exists():
                    tar.add(p, f"logs/{j['name']}/{name}")
    tmp.replace(bundle)
    return bundle


def collect(out: Path, work: Path = WORK, wait_s: float = 120, part_bytes: int = PART_BYTES,
            call_bytes: int = CALL_BYTES, from_part: int = 0) -> int | None:
    """Wait up to wait_s for the jobs, stop the rest and export them from their last checkpoint,
    bundle everything (_bundle) and write it in parts of at most part_bytes under `out`, as many
    as one command may return (call_bytes), with a manifest (round.json: sizes and SHA-256).
    Returns the first part left for the next call (`collect --from-part N`), or None."""
    record = _read(work / "round.json")
    if not record:
        raise SystemExit(f"no round in {work}")
    bundle = work / "round.tar.gz"
    if from_part == 0:
        poll(work, wait_s, every=30)
        env = job_env(work)
        for r in states(work):
            if r["rc"] is None:  # stop it (its whole session) and export what its checkpoints hold
                try:
                    os.killpg(record["pids"][r["name"]], signal.SIGTERM)
                except ProcessLookupError:
                    pass
                time.sleep(2)
            if not (work / "export" / f"{r['name']}.json").exists():
                job = Job(**next(j for j in record["jobs"] if j["name"] == r["name"]))
                res = subprocess.run(job_argv(job, work, "export"), cwd=ROOT, env=env, capture_output=True, text=True)
                print(f"{r['name']}: exported from its last checkpoint" if res.returncode == 0 else f"{r['name']}: NO EXPORT ({res.stderr.strip().splitlines()[-1:]})")
        _bundle(work, record)
        print(report(work))
    elif not bundle.exists():
        raise SystemExit(f"no bundle in {work}: run collect without --from-part first")
    data = bundle.read_bytes()
    n_parts = -(-len(data) // part_bytes)
    manifest = {**record, "collected": time.time(), "bytes": len(data), "parts": n_parts,
                "sha256": hashlib.sha256(data).hexdigest(), "jobs_state": states(work)}
    out.mkdir(parents=True, exist_ok=True)
    i, sent = from_part, 0
    while i < n_parts and (sent == 0 or sent + part_bytes <= call_bytes):
        chunk = data[i * part_bytes : (i + 1) * part_bytes]
        (out / f"round.tar.gz.{i:03d}").write_bytes(chunk)
        sent, i = sent + len(chunk), i + 1
    (out / "round.json").write_text(json.dumps(manifest, indent=2))
    print(f"bundle {len(data) / 2**20:.1f} MiB in {n_parts} parts; parts {from_part}..{i - 1} ({sent / 2**20:.1f} MiB) under {out}")
    if i < n_parts:
        print(f"MORE TO COLLECT: in the next call, back to back: python3 -m pqmim.gpu_round collect --out $OUT --from-part {i}")
        return i
    return None


# ----------------------------------------------------------------------------- here, after the trip
def reassemble(folders: list[Path], dest: Path) -> dict:
    """Join the parts that came back (in one or several folders, one per collect call), check
    their SHA-256, unpack into dest; returns the manifest."""
    manifest = json.loads((folders[0] / "round.json").read_text())
    chunks = []
    for i in range(manifest["parts"]):
        found = [f / f"round.tar.gz.{i:03d}" for f in folders if (f / f"round.tar.gz.{i:03d}").exists()]
        if not found:
            raise SystemExit(f"part {i} of {manifest['parts']} is in none of {', '.join(map(str, folders))}: collect --from-part {i}")
        chunks.append(found[0].read_bytes())
    data = b"".join(chunks)
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"the parts in {', '.join(map(str, folders))} do not add up to the round's bundle (size or SHA-256 differ): collect again")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return manifest


def ladder_psnr_at(bpp: float, points: list[tuple[float, float]]) -> float | None:
    """The shipped ladder's PSNR at `bpp`, linear in log-rate between its nearest points (None
    outside its range: no verdict by extrapolation)."""
    import math

    pts = sorted(points)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            t = (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return p0 + t * (p1 - p0)
    return None


def receive(files: list[Path], dest: Path, kodak: Path, images: int | None = None) -> list[dict]:
    """Reassemble a round, complete each card (device, steps, wall time, samples seen come from
    the device; the round's manifest adds its date), measure every model on Kodak with the real
    codec on this CPU, and compare each rung with the shipped ladder at its rate."""
    from . import zoo
    from .baselines import Baseline
    from .codec import Codec
    from .evaluate import evaluate_folder
    from .models import PQMIM

    manifest = reassemble(files, dest)
    shipped = {c["name"]: c for c in zoo.list_models()}
    ladder = [(c["kodak"]["bpp"], c["kodak"]["psnr"]) for c in shipped.values() if c.get("kodak") and c["name"].startswith("pqmim-q")]
    rows = []
    for card_path in sorted((dest / "export").glob("*.json")):
        card = json.loads(card_path.read_text())
        weights = card_path.with_suffix(".safetensors")
        is_baseline = "arch" in card
        model = Baseline.load(weights) if is_baseline else Codec(PQMIM.load(weights), name=card["name"])
        res = evaluate_folder(model, kodak, limit=images, progress=False)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim", "all_exact") if k in res}
        card["round"] = {"device": manifest.get("device"), "minutes": manifest.get("minutes"),
                         "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(manifest.get("started", 0)))}
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        row = {"name": card["name"], "bpp": res["bpp"], "psnr": res["psnr"], "baseline": is_baseline}
        old = shipped.get(card["name"], {}).get("kodak")
        if not is_baseline:
            row["shipped"] = (old["bpp"], old["psnr"]) if old else None
            at = ladder_psnr_at(res["bpp"], ladder)
            row["ladder_psnr_at_rate"] = at
            dominates = bool(old) and res["bpp"] <= old["bpp"] and res["psnr"] >= old["psnr"]  # at the ladder's ends
            row["beats"] = (at is not None and res["psnr"] > at) or dominates
        rows.append(row)
        print(f"{card['name']:<36} Kodak {res['bpp']:.4f} bpp {res['psnr']:.2f} dB" +
              ("" if is_baseline else f"; shipped {'%.4f bpp %.2f dB' % row['shipped'] if row['shipped'] else 'none of that name'}; "
               f"shipped ladder at this rate: {'%.2f dB' % at if at is not None else 'out of range'} -> {'BEATS' if row['beats'] else 'does not beat'}"), flush=True)
    (dest / "verdict.json").write_text(json.dumps(rows, indent=2))
    return rows


def ship(round_dir: Path, names: list[str], models: Path = ROOT / "models", retired_in: str | None = None) -> None:
    """Copy the named models of a received round into models/ (baselines into models/baselines/:
    a round's baselines replace all shipped ones, the bench's yardstick being the same budget as
    the ladder's), keep every replaced rung's id known in retired.json, and refuse to exceed the
    models/ budget (it holds the ladder and one family of two baselines, not two)."""
    from . import __version__

    export = round_dir / "export"
    retired_path = models / "retired.json"
    retired = _read(retired_path) or {"retired": []}
    plan = []
    for name in names:
        card = _read(export / f"{name}.json")
        if not card or "kodak" not in card:
            raise SystemExit(f"{name}: no measured card in {export} (run receive first)")
        plan.append((name, card, models / "baselines" if "arch" in card else models))
    replaced: list[Path] = []
    if any("arch" in card for _, card, _ in plan):
        replaced = [p for p in (models / "baselines").glob("*.safetensors") if p.stem not in names]
    new_size = sum(p.stat().st_size for p in models.rglob("*.safetensors") if p not in replaced and p.stem not in names)
    new_size += sum((export / f"{n}.safetensors").stat().st_size for n, _, _ in plan)
    if new_size > MODELS_BUDGET:
        raise SystemExit(f"models/ would hold {new_size / 1e6:.1f} MB, over its {MODELS_BUDGET / 1e6:.0f} MB budget")
    for name, card, folder in plan:
        old = _read(folder / f"{name}.json")
        if old.get("model_id") and old["model_id"] != card.get("model_id"):
            retired["retired"].append({"model_id": old["model_id"], "name": name, "retired_in": retired_in or f"pqmim after {__version__} (GPU round)",
                                       "decoded_by": f"pqmim {__version__}"})
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(export / f"{name}{suffix}", folder / f"{name}{suffix}")
        print(f"shipped {name} into {folder}")
    for p in replaced:
        p.unlink()
        p.with_suffix(".json").unlink(missing_ok=True)
        print(f"removed {p.name} (replaced by this round's baselines)")
    retired_path.write_text(json.dumps(retired, indent=2) + "\n")
    print(f"now raise the version above {__version__} (pyproject.toml, pqmim/__init__.py): files of the replaced models need {__version__}")


# ----------------------------------------------------------------------------- GPU <-> CPU exactness
XCHECK = TRIP / "xcheck"  # carried in its own call: Kodak, the default model, files encoded here


def xcheck_prepare(kodak: Path, model_file: Path, folder: Path = XCHECK) -> None:
    """Here: the Kodak images, a model's weights (the default model's in the round) and the files
    this CPU encodes from them, for the device to decode on its GPU (and to encode there, for
    this CPU to decode)."""
    from .codec import Codec
    from .data import list_images

    (folder / "kodak").mkdir(parents=True, exist_ok=True)
    (folder / "cpu").mkdir(exist_ok=True)
    shutil.copyfile(model_file, folder / "model.safetensors")
    codec = Codec.from_file(folder / "model.safetensors")
    for p in list_images(kodak):
        shutil.copyfile(p, folder / "kodak" / p.name)
        (folder / "cpu" / f"{p.stem}.pqm").write_bytes(codec.compress(p))
    print(f"xcheck: {len(list_images(kodak))} images and their CPU-encoded files in {folder}")


def _exact(codec, data: bytes) -> tuple[bool, str]:
    """Whether a file decodes to exactly its encoder's codes: the header's CRC of the codes is
    checked by read_codes, so any difference in the decoder's probabilities is caught."""
    from .format import BitstreamError

    try:
        codec.read_codes(data)
        return True, ""
    except BitstreamError as e:
        return False, str(e)


def xcheck_device(out: Path, folder: Path = XCHECK, device: str = "cuda") -> dict:
    """Device: decode this CPU's files on the GPU, and encode every image on the GPU; the GPU's
    files go back (one tar) for the CPU to decode with xcheck_receive."""
    import torch

    from .codec import Codec
    from .data import list_images

    codec = Codec.from_file(folder / "model.safetensors", device=device)
    rows = {}
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "xcheck.tar", "w") as tar:
        for p in list_images(folder / "kodak"):
            ok, why = _exact(codec, (folder / "cpu" / f"{p.stem}.pqm").read_bytes())
            data = codec.compress(p)
            info = tarfile.TarInfo(f"gpu/{p.stem}.pqm")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            rows[p.stem] = {"cpu_to_gpu_exact": ok, "error": why, "gpu_bytes": len(data)}
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
              "cpu_to_gpu_exact": sum(r["cpu_to_gpu_exact"] for r in rows.values()), "images": len(rows), "per_image": rows}
    (out / "xcheck.json").write_text(json.dumps(result, indent=2))
    print(f"xcheck: {result['cpu_to_gpu_exact']} of {len(rows)} files encoded on the CPU decode exactly on {result['device']}")
    return result


def xcheck_receive(files: Path, folder: Path = XCHECK, dest: Path | None = None) -> dict:
    """Here: decode the GPU's files on this CPU; the counts both ways, written to `dest`."""
    from .codec import Codec

    result = json.loads((files / "xcheck.json").read_text())
    codec = Codec.from_file(folder / "model.safetensors")
    with tarfile.open(files / "xcheck.tar") as tar:
        for m in tar.getmembers():
            stem = Path(m.name).stem
            ok, why = _exact(codec, tar.extractfile(m).read())
            result["per_image"][stem].update(gpu_to_cpu_exact=ok, gpu_to_cpu_error=why)
    result["gpu_to_cpu_exact"] = sum(r.get("gpu_to_cpu_exact", False) for r in result["per_image"].values())
    print(f"GPU -> CPU: {result['gpu_to_cpu_exact']} of {result['images']} exact; CPU -> GPU: {result['cpu_to_gpu_exact']} of {result['images']} exact")
    if dest:
        dest.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- the dry run
def dry_run(base: Path, train: Path, kodak: Path, val: Path | None = None) -> list[dict]:
    """The whole procedure on this CPU with tiny models: pack, launch (detached processes), poll,
    collect (in small parts, to exercise the splitting), receive (join, cards, Kodak)."""
    from . import pack

    t0 = time.time()
    pack_path = base / "pack.tar"
    m = pack.build([train], pack_path, val or train, max_side=512, max_bytes=4 << 20)
    print(f"dry run: pack of {m['images']} photos, {m['bytes'] / 1024:.0f} KiB")
    work = base / "work"
    launch(tiny_plan(str(pack_path)), work, watch_s=0, wheels=None)
    if not poll(work, seconds=180, every=5, wait_for={"tiny-pqmim"}):
        raise SystemExit("dry run: the tiny pqmim job did not finish in 3 minutes")
    deadline = time.time() + 60
    while "val_step" not in _read(work / "jobs" / "tiny-hyperprior" / "status.json"):  # it has a checkpoint
        if time.time() > deadline:
            raise SystemExit("dry run: the tiny baseline wrote no checkpoint in a minute")
        time.sleep(1)
    outs, nxt = [base / "OUT0"], collect(base / "OUT0", work, wait_s=0, part_bytes=32 << 10, call_bytes=64 << 10)
    while nxt is not None:  # as on the device: one more call per 64 KiB here (60 MiB there)
        outs.append(base / f"OUT{len(outs)}")
        nxt = collect(outs[-1], work, part_bytes=32 << 10, call_bytes=64 << 10, from_part=nxt)
    rows = receive(outs, base / "received", kodak)
    print(f"dry run: done in {time.time() - t0:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pqmim.gpu_round", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: build .round/pack.tar and .round/whl, lighten the tree")
    p.add_argument("sources", nargs="*", default=[str(SHARED / "data" / "train"), str(SHARED / "data" / "train_more")])
    p.add_argument("--val", default=str(SHARED / "data" / "val"))
    p.add_argument("--no-lighten", action="store_true")
    p = sub.add_parser("launch", help="device: start every job detached, watch them for a minute")
    p.add_argument("--minutes", type=float, default=19, help="wall time of every job (its training: this less OVERHEAD_MIN, 1.5 minutes)")
    p.add_argument("--only", nargs="*", help="job names (default: the 5 rungs and 4 baselines)")
    p.add_argument("--init", nargs="*", default=[], help="NAME=PATH: start that rung from a model file instead of from scratch")
    p.add_argument("--pack", default=str(TRIP / "pack.tar"))
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--device", default="cuda", help="cpu: try the real plan here (slowly)")
    p = sub.add_parser("poll", help="device: print progress until every job ended or --seconds passed")
    p.add_argument("--seconds", type=float, default=540)
    p.add_argument("--every", type=float, default=60)
    p.add_argument("--work", default=str(WORK))
    p = sub.add_parser("collect", help="device: export, bundle and split into --out")
    p.add_argument("--out", required=True, help="$OUT on the device")
    p.add_argument("--from-part", type=int, default=0, help="a further call: the parts left by the last one")
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for running jobs before stopping them")
    p.add_argument("--work", default=str(WORK))
    p = sub.add_parser("receive", help="here: join the parts, complete the cards, measure Kodak")
    p.add_argument("files", nargs="+", help="the folders the collect calls' files came back to (files_at), in order")
    p.add_argument("--dest", default="", help="default: runs/round-<date>")
    p.add_argument("--kodak", default=str(SHARED / "data" / "kodak"))
    p.add_argument("--images", type=int, default=None, help="first N Kodak images only (quicker look)")
    p = sub.add_parser("ship", help="here: copy models that beat the shipped ones into models/")
    p.add_argument("round_dir")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("xcheck", help="device: decode the CPU's Kodak files on the GPU, encode them there (carry .round/xcheck)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("xcheck-prepare", help="here: .round/xcheck with Kodak, the default model and this CPU's files")
    p.add_argument("--kodak", default=str(SHARED / "data" / "kodak"))
    p = sub.add_parser("xcheck-receive", help="here: decode the GPU's files on this CPU and count the exact round trips")
    p.add_argument("files")
    p.add_argument("--dest", default=str(ROOT / "bench" / "results" / "gpu_exactness.json"))
    p = sub.add_parser("dry-run", help="the whole procedure on this CPU with tiny models")
    p.add_argument("--dir", default="runs/round-dry-run")
    p.add_argument("--train", default=str(SHARED / "data" / "kodak"), help="a few photos (the dry run only checks the machinery)")
    p.add_argument("--kodak", default=str(SHARED / "data" / "kodak"))
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.sources, args.val, lighten=not args.no_lighten)
    elif args.cmd == "launch":
        init = dict(x.split("=", 1) for x in args.init)
        work = Path(args.work)
        if (work / "round.json").exists():
            raise SystemExit(f"{work} already holds a round: poll or collect it (or remove the folder)")
        work.mkdir(parents=True, exist_ok=True)
        pack = work / "pack.tar"  # on the local disk: a later call's copy of the tree cannot take it away
        shutil.copyfile(args.pack, pack)
        launch(default_plan(args.minutes, str(pack), args.only, init, args.device), work)
    elif args.cmd == "poll":
        poll(Path(args.work), args.seconds, args.every)
    elif args.cmd == "collect":
        collect(Path(args.out), Path(args.work), args.wait, from_part=args.from_part)
    elif args.cmd == "receive":
        dest = Path(args.dest or ROOT / "runs" / time.strftime("round-%Y%m%d-%H%M"))
        receive([Path(f) for f in args.files], dest, Path(args.kodak), args.images)
        print(f"received into {dest}; ship the winners with: python -m pqmim.gpu_round ship {dest} NAME ...")
    elif args.cmd == "ship":
        ship(Path(args.round_dir), args.names)
    elif args.cmd == "xcheck":
        install_wheels(TRIP / "whl", WORK)  # constriction: installed by launch, or now
        sys.path.insert(0, str(WORK / "site"))
        xcheck_device(Path(args.out), device=args.device)
    elif args.cmd == "xcheck-prepare":
        from . import zoo

        xcheck_prepare(Path(args.kodak), zoo.model_path(zoo.resolve(None)))
    elif args.cmd == "xcheck-receive":
        xcheck_receive(Path(args.files), dest=Path(args.dest))
    elif args.cmd == "dry-run":
        base = Path(args.dir)
        if base.exists():
            shutil.rmtree(base)
        dry_run(base, Path(args.train), Path(args.kodak))


if __name__ == "__main__":
    main()
