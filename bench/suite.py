"""The bench suite in one command: Kodak rate-distortion of every codec, FID/KID on val patches,
BD-rates, plots, a visual comparison and the README's results section.

    python -m bench run            # full: every shipped model and baseline, all Pillow settings
    python -m bench run --quick    # 2 images, a few points: proves the pipeline end to end
    python -m bench report         # redraw plots and the README section from the JSON results

Per-point results are cached in <results>/cache/: a rerun measures only what is new (a new
model, another Pillow); --fresh measures everything again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import torch

from pqmim import zoo
from pqmim.checkout import FID_WEIGHTS, KODAK, VAL, head_commit
from pqmim.fileio import atomic_write_json
from pqmim.data import list_images

from . import codecs, kodak, report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def git_commit() -> str | None:
    """HEAD, with "+changes" when the package or the bench differ from it (results then come
    from code that is not in that commit)."""
    head = head_commit()
    if head is None:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pqmim", "bench/*.py", "models"], capture_output=True, text=True, cwd=HERE.parent
    ).stdout.strip()
    return head + ("+changes" if dirty else "")


def environment(threads: int) -> dict:
    import compressai

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "compressai": compressai.__version__,
        },
    }


def nearest(points: list[codecs.Point], results: dict[str, dict], bpp: float) -> codecs.Point | None:
    """The point whose measured Kodak bpp is closest (in log rate) to `bpp`."""
    have = [p for p in points if p.key in results]
    return min(have, key=lambda p: abs(np.log(results[p.key]["bpp"] / bpp)), default=None)


def fid_points(
    pq: list[codecs.Point], base: list[codecs.Point], classical: list[codecs.Point], results: dict[str, dict]
) -> list[codecs.Point]:
    """pqmim and the other learned points (`base`: the perceptual decoder's, the baselines') all;
    JPEG 4:2:0, WebP and AVIF at the settings nearest to pqmim's rates (within a factor 1.5: a codec that cannot go that low is left out)."""
    chosen = pq + base
    for c in ("jpeg420", "webp", "avif"):
        same = [p for p in classical if p.codec == c]
        for q in pq:
            want = results[q.key]["bpp"]
            p = nearest(same, results, want)
            if p is not None and p not in chosen and abs(np.log(results[p.key]["bpp"] / want)) < np.log(1.5):
                chosen.append(p)
    return chosen


def visual(points: list[codecs.Point], results: dict[str, dict], image: Path, target: str, out: Path, box=(256, 160, 224)) -> None:
    """The same crop of one image from each codec, at the point nearest the target point's rate on that image."""
    from pqmim.compare import tile_sheet
    from pqmim.image import load_image

    rgb = load_image(image)
    rate = lambda p: next(r["bpp"] for r in results[p.key]["rows"] if r["image"] == image.name)  # noqa: E731
    want = rate(next(p for p in points if p.key == target))
    tiles = [(rgb, "original")]
    for c in dict.fromkeys(p.codec for p in points):
        p = min((p for p in points if p.codec == c), key=lambda p: abs(np.log(rate(p) / want)))
        n, dec, _, _ = p.roundtrip(rgb)
        tiles.append((dec, f"{report.family_label(c).split(' (')[0]}\n{p.label}, {n * 8 / (rgb.shape[0] * rgb.shape[1]):.3f} bpp"))
    x, y, s = box
    tile_sheet([(im[y : y + s, x : x + s], label) for im, label in tiles]).save(out)


def run(args) -> int:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = Path(args.results)
    cache = out / "cache"
    t_start = time.time()
    n_kodak, n_val, n_q = (2, 2, 3) if args.quick else (None, None, None)
    models = args.models or ([zoo.model_for_quality(1), zoo.DEFAULT_MODEL] if args.quick else None)
    pq = codecs.pqmim_points(models)
    perceptual = codecs.perceptual_points(models)
    base = codecs.baseline_points(args.baselines)[: 1 if args.quick else None]
    classical = codecs.classical_points(args.codecs or (["jpeg420", "webp"] if args.quick else ["jpeg420", "jpeg444", "webp", "avif"]), n_q)
    points = pq + perceptual + base + classical
    files = list_images(args.kodak)[:n_kodak]

    env = environment(args.threads)
    rows = kodak.run(points, files, cache, fresh=args.fresh, progress=not args.no_progress)
    results = {r["key"]: r for r in rows}
    kod = {**env, "kodak": str(args.kodak), "images": len(files), "points": rows}
    atomic_write_json(out / "kodak.json", kod)

    fid_res = None
    if not args.no_fid:
        from . import fid

        chosen = fid_points(pq, perceptual + base, classical, results)
        n_val = n_val or args.fid_images or None
        measured = fid.measure(
            chosen, args.val, args.fid_weights, cache, limit=n_val, device=args.device, progress=not args.no_progress, fresh=args.fresh_fid
        )
        pts = list(measured.values())
        fid_res = {
            **env,
            "val": str(args.val),
            "images": pts[0]["images"] if pts else 0,
            "patches": pts[0]["patches"] if pts else 0,
            "points": pts,
        }
        atomic_write_json(out / "fid.json", fid_res)

    bd = report.bd_tables(rows)
    atomic_write_json(out / "bdrate.json", bd)
    report.write_plots(kod, fid_res, out)
    image = files[-1] if args.quick else Path(args.kodak) / "kodim23.png"
    target = next((p.key for p in pq if p.meta["model"] == zoo.DEFAULT_MODEL), pq[0].key)
    visual(points, results, image, target, out / "visual.png")
    visual(points, results, image, pq[0].key, out / "visual_low.png")  # the lowest rate: where realism matters most
    command = "python -m bench run" + (" --quick" if args.quick else "")
    if args.readme:
        report.update_readme(Path(args.readme), report.markdown(kod, fid_res, bd, command))
    print(report.markdown(kod, fid_res, bd, command))
    print(f"\nbench finished in {time.time() - t_start:.0f}s; results in {out}")
    return 0


def report_only(args) -> int:
    out = Path(args.results)
    kod = json.loads((out / "kodak.json").read_text())
    fid_path = out / "fid.json"
    fid_res = json.loads(fid_path.read_text()) if fid_path.exists() else None
    bd = report.bd_tables(kod["points"])
    report.write_plots(kod, fid_res, out)
    md = report.markdown(kod, fid_res, bd, "python -m bench run")
    if args.readme:
        report.update_readme(Path(args.readme), md)
    print(md)
    return 0


def main(argv: list[str] | None = None, cmd: str = "run") -> int:
    ap = argparse.ArgumentParser(prog=f"python -m bench {cmd}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(RESULTS), help="where the JSON results, plots and cache go")
    ap.add_argument("--readme", default=None, help="README to update (default: the project's README for a full run, none for --quick)")
    if cmd == "run":
        ap.add_argument(
            "--quick",
            action="store_true",
            help="2 Kodak and 2 val images, q1 and the default model, one baseline, 3 settings of JPEG and WebP",
        )
        ap.add_argument(
            "--fresh", action="store_true", help="measure every Kodak point again, ignoring the cache (e.g. for timings on an idle machine)"
        )
        ap.add_argument("--fresh-fid", action="store_true", help="measure every FID/KID point again")
        ap.add_argument("--no-fid", action="store_true", help="skip FID/KID")
        ap.add_argument("--models", nargs="+", default=None, help="pqmim models (default: every shipped quality level)")
        ap.add_argument("--codecs", nargs="+", default=None, help="Pillow codecs: jpeg420 jpeg444 webp avif")
        ap.add_argument("--baselines", default=None, help="folder of baseline models (default: models/baselines)")
        ap.add_argument("--kodak", default=str(KODAK))
        ap.add_argument("--val", default=str(VAL))
        ap.add_argument("--fid-weights", default=str(FID_WEIGHTS))
        ap.add_argument(
            "--fid-images",
            type=int,
            default=0 if torch.cuda.is_available() else 12,
            help="val images for FID/KID, evenly spaced (0: all 80; default 12 on a CPU, where Inception takes ~0.2 s a patch: "
            "the full run then stays under 45 minutes on 2 cores)",
        )
        ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for LPIPS and FID's Inception")
        ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.readme is None and not (cmd == "run" and args.quick) and Path(args.results).resolve() == RESULTS:
        args.readme = str(HERE.parent / "README.md")
    return run(args) if cmd == "run" else report_only(args)


if __name__ == "__main__":
    sys.exit(main())
