"""`python -m pqmim.gpu_round`: the commands of a round, and the dry run on this CPU."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ..checkout import ROOT, SHARED
from .plan import TRIP, WORK, default_plan, tiny_plan
from .device import read_json_or_empty, collect, install_wheels, launch, poll
from .here import prepare, receive, ship
from .xcheck import xcheck_device, xcheck_prepare, xcheck_receive
from . import __doc__


# ----------------------------------------------------------------------------- the dry run
def dry_run(base: Path, train: Path, kodak: Path, val: Path | None = None) -> list[dict]:
    """The whole procedure on this CPU with tiny models: pack, launch (detached processes), poll,
    collect (in small parts, to exercise the splitting), receive (join, cards, Kodak)."""
    from .. import pack

    t0 = time.time()
    pack_path = base / "pack.tar"
    m = pack.build([train], pack_path, val or train, max_side=512, max_bytes=4 << 20)
    print(f"dry run: pack of {m['images']} photos, {m['bytes'] / 1024:.0f} KiB")
    work = base / "work"
    launch(tiny_plan(str(pack_path)), work, watch_s=0, wheels=None)
    if not poll(work, seconds=180, every=5, wait_for={"tiny-pqmim"}):
        raise SystemExit("dry run: the tiny pqmim job did not finish in 3 minutes")
    deadline = time.time() + 60
    while "val_iteration" not in read_json_or_empty(work / "jobs" / "tiny-hyperprior" / "status.json"):  # it has a checkpoint
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
    ap = argparse.ArgumentParser(
        prog="python -m pqmim.gpu_round", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: build .round/pack.tar and .round/whl, lighten the tree")
    p.add_argument("sources", nargs="*", default=[str(SHARED / "data" / "train"), str(SHARED / "data" / "train_more")])
    p.add_argument("--val", default=str(SHARED / "data" / "val"))
    p.add_argument("--no-lighten", action="store_true")
    p.add_argument("--max-side", type=int, default=1024, help="photos downscaled to at most this many pixels a side")
    p.add_argument(
        "--max-mib", type=float, default=None, help="the pack's size limit (default 48; its JPEG quality is the highest that fits)"
    )
    p.add_argument("--perceptual", action="store_true", help="the perceptual jobs' trip: LPIPS backbone, q1-q3 carried")
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
    p.add_argument("--retire", nargs="+", default=[], help="shipped models to take out too (e.g. a replaced variant's base)")
    p.add_argument("--retired-in", default=None, help="the release that retires them, as retired.json says")
    p = sub.add_parser("xcheck", help="device: decode the CPU's Kodak files on the GPU, encode them there (carry .round/xcheck)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("xcheck-prepare", help="here: .round/xcheck with Kodak, this CPU's files and which model (the default)")
    p.add_argument("--kodak", default=str(SHARED / "data" / "kodak"))
    p.add_argument("--images", type=int, default=None, help="the first N Kodak images only (what travels)")
    p = sub.add_parser("xcheck-receive", help="here: decode the GPU's files on this CPU and count the exact round trips")
    p.add_argument("files")
    p.add_argument("--dest", default=str(ROOT / "bench" / "results" / "gpu_exactness.json"))
    p = sub.add_parser("dry-run", help="the whole procedure on this CPU with tiny models")
    p.add_argument("--dir", default="runs/round-dry-run")
    p.add_argument("--train", default=str(SHARED / "data" / "kodak"), help="a few photos (the dry run only checks the machinery)")
    p.add_argument("--kodak", default=str(SHARED / "data" / "kodak"))
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(
            args.sources, args.val, lighten=not args.no_lighten, max_side=args.max_side, max_mib=args.max_mib, perceptual=args.perceptual
        )
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
        ship(Path(args.round_dir), args.names, retired_in=args.retired_in, retire=args.retire)
    elif args.cmd == "xcheck":
        install_wheels(TRIP / "whl", WORK)  # constriction: installed by launch, or now
        sys.path.insert(0, str(WORK / "site"))
        xcheck_device(Path(args.out), device=args.device)
    elif args.cmd == "xcheck-prepare":
        from .. import zoo

        xcheck_prepare(Path(args.kodak), zoo.model_path(zoo.resolve(None)), images=args.images)
    elif args.cmd == "xcheck-receive":
        xcheck_receive(Path(args.files), dest=Path(args.dest))
    elif args.cmd == "dry-run":
        base = Path(args.dir)
        if base.exists():
            shutil.rmtree(base)
        dry_run(base, Path(args.train), Path(args.kodak))


if __name__ == "__main__":
    main()
