"""What runs on the lent machine: install the missing wheels, launch the jobs detached, poll
them, collect (export what did not finish, bundle, split into parts that fit what comes back)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ..checkout import ROOT
from ..fileio import atomic_file
from .plan import CALL_BYTES, MODULES, Job, PART_BYTES, RoundPlan, TRIP, WORK


# ----------------------------------------------------------------------------- on the device
def install_wheels(wheels: Path, work: Path) -> None:
    """Install the carried wheels (for the device's Python) into work/site: no network, no deps."""
    found = sorted(str(p) for p in wheels.glob("*.whl"))
    if found and not (work / "site").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--target",
                str(work / "site"),
                *found,
            ],
            check=True,
        )


def job_env(work: Path) -> dict[str, str]:
    """The environment that puts this checkout and the installed wheels on the jobs' path."""
    site = work / "site"
    path = [str(ROOT)] + ([str(site)] if site.exists() else []) + [os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "PYTHONUNBUFFERED": "1"}


def job_argv(job: Job, work: Path, stages: str | None = None) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        MODULES[job.kind],
        "--out",
        str(work / "jobs" / job.name),
        "--name",
        job.name,
        "--export-dir",
        str(work / "export"),
        *job.args,
    ]
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
    record = {
        "minutes": plan.minutes,
        "device": device,
        "started": time.time(),
        "pids": pids,
        "jobs": [dataclasses.asdict(j) for j in plan.jobs],
    }
    (work / "round.json").write_text(json.dumps(record, indent=2))
    print(f"launched {len(plan.jobs)} jobs on {device}, {plan.minutes:g} minutes each: {', '.join(pids)}")
    poll(work, watch_s, every=max(5.0, watch_s / 4))


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def read_json_or_empty(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def states(work: Path) -> list[dict]:
    """One row per job: its status.json (written by pqmim.train) and, once it ended, its exit code."""
    record = read_json_or_empty(work / "round.json")
    rows = []
    for j in record.get("jobs", []):
        done = work / "done" / j["name"]
        rc = int(done.read_text().strip() or -1) if done.exists() else None
        rows.append({"name": j["name"], "rc": rc, **read_json_or_empty(work / "jobs" / j["name"] / "status.json")})
    return rows


def report(work: Path) -> str:
    record = read_json_or_empty(work / "round.json")
    rows = states(work)
    lines = [
        f"round on {record.get('device')}: {(time.time() - record.get('started', time.time())) / 60:.1f} of {record.get('minutes')} minutes"
    ]
    lines.append(f"{'job':<36} {'state':<9} {'stage':>5} {'iteration':>9} {'samples/s':>9}  latest validation")
    total = 0.0
    for r in rows:
        state = "running" if r["rc"] is None else ("done" if r["rc"] == 0 else f"FAILED {r['rc']}")
        per_s = r.get("per_s") or 0.0
        if r["rc"] is None and r.get("stage") in ("stage1", "baseline"):
            total += per_s  # crops now being cut: stage 1 and the baselines
        val = " ".join(f"{k} {r[k]:.4g}" for k in ("val_psnr", "val_bpp", "val_bits_per_code", "val_m2_lpips") if k in r)
        lines.append(f"{r['name']:<36} {state:<9} {r.get('stage', '-'):>5} {r.get('iteration', 0):>9} {per_s:>9.1f}  {val}")
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
    with atomic_file(bundle) as f, tarfile.open(fileobj=f, mode="w:gz", compresslevel=6) as tar:
        tar.add(work / "round.json", "round.json")
        for p in sorted((work / "export").glob("*")):
            if p.suffix in (".safetensors", ".json"):
                tar.add(p, f"export/{p.name}")
        for j in record["jobs"]:
            for name in ("train.log", "metrics.jsonl", "status.json", "stdout.log"):
                p = work / "jobs" / j["name"] / name
                if p.exists():
                    tar.add(p, f"logs/{j['name']}/{name}")
    return bundle


def collect(
    out: Path, work: Path = WORK, wait_s: float = 120, part_bytes: int = PART_BYTES, call_bytes: int = CALL_BYTES, from_part: int = 0
) -> int | None:
    """Wait up to wait_s for the jobs, stop the rest and export them from their last checkpoint,
    bundle everything (_bundle) and write it in parts of at most part_bytes under `out`, as many
    as one command may return (call_bytes), with a manifest (round.json: sizes and SHA-256).
    Returns the first part left for the next call (`collect --from-part N`), or None."""
    record = read_json_or_empty(work / "round.json")
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
                print(
                    f"{r['name']}: exported from its last checkpoint"
                    if res.returncode == 0
                    else f"{r['name']}: NO EXPORT ({res.stderr.strip().splitlines()[-1:]})"
                )
        _bundle(work, record)
        print(report(work))
    elif not bundle.exists():
        raise SystemExit(f"no bundle in {work}: run collect without --from-part first")
    data = bundle.read_bytes()
    n_parts = -(-len(data) // part_bytes)
    manifest = {
        **record,
        "collected": time.time(),
        "bytes": len(data),
        "parts": n_parts,
        "sha256": hashlib.sha256(data).hexdigest(),
        "jobs_state": states(work),
    }
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
