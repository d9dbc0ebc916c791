"""Training curves of `pqmim train` runs: validation PSNR (stage 1) and validation rate
(stage 2) against training iterations, to see whether more compute would still pay.

    python -m bench curves [RUN_FOLDER | metrics.jsonl | models/logs/NAME.train.log ...] [--out models/efficiency.png]

A run folder (or its metrics.jsonl, with config.json beside it) is read as JSON lines; the text
logs of models/logs/, written before runs logged JSON, are parsed.

Stage 2's validation figure is the cross-entropy of masked validation codes; it is shown as
bpp = bits/code x M / f^2, the rate it implies. A run restarted from scratch replaces the points
of the attempt before it; a resumed run continues them.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

from pqmim.fileio import atomic_write_json

LOGS = Path(__file__).resolve().parents[1] / "models" / "logs"
VAL1 = re.compile(r"stage1 val step (\d+): psnr ([\d.]+) dB")
VAL2 = re.compile(r"stage2 val step (\d+): ([\d.]+) bits/code")
CONFIG = re.compile(r"start: .* config (\{.*\})")
STAGE = re.compile(r"stage([12])")


def read_metrics(path: Path) -> dict:
    """A run's curves from its metrics.jsonl (path: the file or the run folder), in parse_log's
    form. An iteration validated twice (a run resumed from a checkpoint before it) keeps the last."""
    path = path / "metrics.jsonl" if path.is_dir() else path
    config = path.parent / "config.json"
    curves: dict[str, dict[int, float]] = {"stage1": {}, "stage2": {}}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("stage") == "stage1" and "val_psnr" in r:
            curves["stage1"][r["val_iteration"]] = r["val_psnr"]
        elif r.get("stage") == "stage2" and "val_bits_per_code" in r:
            curves["stage2"][r["val_iteration"]] = r["val_bits_per_code"]
    return {"config": json.loads(config.read_text()) if config.exists() else None, **{k: sorted(v.items()) for k, v in curves.items()}}


def read_run(path: Path) -> dict:
    return read_metrics(path) if path.is_dir() or path.suffix == ".jsonl" else parse_log(path.read_text())


def parse_log(text: str) -> dict:
    """A text log's curves (logs written before 0.5):
    {'config': ..., 'stage1': [(step, psnr)], 'stage2': [(step, bits/code)]}, final attempt only."""
    curves: dict[str, dict[int, float]] = {"stage1": {}, "stage2": {}}
    config, fresh = None, set()
    for line in text.splitlines():
        if m := CONFIG.search(line):
            config = ast.literal_eval(m.group(1))
            fresh = {"stage1", "stage2"}  # a new process: each stage either resumes or starts over
            continue
        if m := STAGE.search(line):
            stage = f"stage{m.group(1)}"
            if stage in fresh:
                fresh.discard(stage)
                if f"{stage}: resumed" not in line:
                    curves[stage] = {}
        for rx, stage in ((VAL1, "stage1"), (VAL2, "stage2")):
            if m := rx.search(line):
                curves[stage][int(m.group(1))] = float(m.group(2))
    return {"config": config, **{k: sorted(v.items()) for k, v in curves.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench curves", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="*", default=[str(LOGS / "pqmim-q3-0.2.0.train.log")])
    ap.add_argument("--out", default=str(LOGS.parent / "efficiency.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    summary = {}
    for i, path in enumerate(args.logs):
        p = Path(path)
        name = p.name if p.is_dir() else p.resolve().parent.name if p.suffix == ".jsonl" else p.name.split(".")[0]
        run = read_run(p)
        cfg = run["config"] or {}
        f, m = 2 ** len(cfg.get("widths", [])), cfg.get("m", 0)
        s1, s2 = run["stage1"], [(s, b * m / f**2) for s, b in run["stage2"]]
        if s1:
            a1.plot(*zip(*s1), "o-", ms=3, color=f"C{i}", label=name)
        if s2:
            a2.plot(*zip(*s2), "o-", ms=3, color=f"C{i}", label=name)
        summary[name] = {"stage1_psnr": s1, "stage2_bpp": s2}
        for label, pts, unit in (("stage 1 val PSNR", s1, "dB"), ("stage 2 val rate", s2, "bpp")):
            if len(pts) >= 3:
                (sa, va), (sb, vb) = pts[-3], pts[-1]
                print(
                    f"{name}: {label} {va:.4f} -> {vb:.4f} {unit} over its last {sb - sa} iterations (final {vb:.4f} {unit} at iteration {sb})"
                )
    a1.set(xlabel="stage 1 iteration", ylabel="PSNR dB (16 val crops, quantized)", title="Stage 1: autoencoder + PQ")
    a2.set(xlabel="stage 2 iteration", ylabel="bpp (masked val codes, bits x M / f²)", title="Stage 2: MIM entropy model")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    atomic_write_json(Path(args.out).with_suffix(".json"), summary)
    print(f"wrote {args.out}")
    return 0
