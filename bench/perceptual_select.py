"""Choose a perceptual decoder by FID on held-out images: the selection the bench cannot make.

    python -m bench perceptual-select runs/round-X/export models/pqmim-perceptual.safetensors
    python -m bench perceptual-select runs/round-X/export --models pqmim-q3 --images 12   # a quick first pass
    python -m bench perceptual-select CANDIDATES... --pick runs/round-X/export            # and write the winner

Candidates are perceptual decoder files (a refiner, pqmim/models/perceptual.py, or a latent-texture
decoder, pqmim/models/texture.py) or folders of them: a GPU round's
export folder holds each perceptual job's snapshots (`NAME.itNNNNNN.safetensors`) and its end.
LPIPS and PSNR, which training sees, do not rank refiners by FID (models/TRAINING.md: FID got
worse as LPIPS improved), so each candidate is scored the way the bench scores codecs, on
images neither training nor the bench uses:

- held-out set: the val photos outside the bench's FID images (`bench.fid.spread` of 12),
  `--images` of them evenly spaced (24 by default), whole;
- for each model served: the file the real codec writes for each photo, its default decoder's
  image, and the candidate applied as `pqmim decode --perceptual` applies it (tiles, precision);
- FID and KID (as bench.fid.fid_kid_of, HiFiC's patches) against the originals' patches, and a
  90% interval of each candidate's FID minus the default decoder's, by a paired bootstrap over
  the photos (bench.fid.fid_differences: on a few hundred patches FID moves by points with the
  photos, so a difference of a point or two may be none); LPIPS (Alex), PSNR, and the PSNR of
  8x8 block means (colour and shading, which a refiner should not move);
- with `--against FILE` (the shipped decoder, say), also a 90% interval of each candidate's FID
  minus that file's, paired the same way: two decoders of the same images differ far less than
  either differs from the default decoder, so this is the test of "better than what ships".

A candidate's score is its FID over the default decoder's, averaged over the models (lower is
better; 1 is the default decoder). `--pick DEST` copies the best candidate that serves every
model measured to DEST/pqmim-perceptual.safetensors with a card holding its figures
("selection"), which `python -m pqmim.gpu_round ship` requires of a perceptual decoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pqmim import Codec, tiling, zoo
from pqmim.checkout import FID_WEIGHTS, LPIPS_BACKBONE, VAL
from pqmim.data import list_images
from pqmim.evaluate import LPIPSAlex, block_psnr, psnr_uint8
from pqmim.fileio import atomic_write_json
from pqmim.image import load_image
from pqmim.models import ModelFileError
from pqmim.models.weights import file_metadata
from pqmim.models.perceptual import load_decoder, served_ids
from pqmim.train.perceptual import LOW_POOL, description

from .fid import fid_differences, fid_kid_of, inception_features, patches, spread

BENCH_FID_IMAGES = 12  # the bench's default FID set (bench/suite.py): kept out of the selection
SNAPSHOT = re.compile(r"\.it(\d+)$")


def held_out(val: Path, n: int) -> list[Path]:
    """`n` val photos, evenly spaced, none of them among the bench's FID images."""
    files = list_images(val)
    bench = set(spread(files, BENCH_FID_IMAGES))
    return spread([f for f in files if f not in bench], n)


def candidates(paths: list[str]) -> list[Path]:
    """Perceptual decoder files, folders expanded to the ones in them (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.glob("*.safetensors") if _is_perceptual(f))
            if not found:
                raise SystemExit(f"{p}: no perceptual decoder in it")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"{p}: no such file or folder")
    return out


def _is_perceptual(path: Path) -> bool:
    try:
        return served_ids(path) is not None
    except ModelFileError:  # unreadable
        return False


def default_images(codec: Codec, originals: list[np.ndarray], cache: Path) -> tuple[list[np.ndarray], float]:
    """The default decoder's image of each photo through the real codec and the mean bits per
    pixel of the files (cached by model id and the photos' pixels)."""
    which = hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in originals)).hexdigest()[:12]
    path = cache / f"default-{codec.model.model_id().hex()}-{which}.npz"
    if path.exists():
        d = np.load(path)
        return [d[f"i{i}"] for i in range(len(originals))], float(d["bpp"])
    decoded, bpp = [], []
    for rgb in originals:
        data = codec.compress(rgb)
        decoded.append(np.asarray(codec.decompress(data)))
        bpp.append(len(data) * 8 / (rgb.shape[0] * rgb.shape[1]))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, bpp=np.mean(bpp), **{f"i{i}": im for i, im in enumerate(decoded)})
    return decoded, float(np.mean(bpp))


def score(
    originals: list[np.ndarray], decoded: list[np.ndarray], reference: torch.Tensor, features: torch.Tensor, lpips: LPIPSAlex
) -> dict:
    """A decoder's figures on the photos; `reference` and `features` are the Inception features
    of the originals' and the decoded images' patches (bench.fid.inception_features)."""
    return {
        **fid_kid_of(reference, features),
        "lpips": float(np.mean([lpips(o, d) for o, d in zip(originals, decoded)])),
        "psnr": float(np.mean([psnr_uint8(o, d) for o, d in zip(originals, decoded)])),
        "block_psnr": float(np.mean([block_psnr(o, d, LOW_POOL) for o, d in zip(originals, decoded)])),
    }


def select(
    paths: list[Path], models: list[str], images: list[Path], weights: Path, backbone: Path, cache: Path, against: Path | None = None
) -> list[dict]:
    """One row per candidate (and the default decoder first): per model its figures, with a 90%
    interval of its FID minus the default decoder's (bench.fid.fid_differences), and minus
    `against`'s where that is one of `paths` and serves the model, and the score."""
    originals = [load_image(p) for p in images]
    groups = [len(patches(im)) for im in originals]
    features = lambda ims, cached=False: inception_features(  # noqa: E731
        [p for im in ims for p in patches(im)], weights, cache_dir=cache if cached else None
    )
    reference = features(originals, cached=True)
    lpips = LPIPSAlex(backbone)
    rows = [{"candidate": "default decoder", "models": {}}] + [{"candidate": str(p), "models": {}} for p in paths]
    serves = [served_ids(p) or [] for p in paths]
    for name in models:
        codec = Codec.from_pretrained(name)
        mid = codec.model.model_id().hex()
        base, bpp = default_images(codec, originals, cache)
        t = time.time()
        base_features = features(base, cached=True)
        rows[0]["models"][name] = {"bpp": bpp, **score(originals, base, reference, base_features, lpips)}
        print(f"{name} ({bpp:.4f} bpp) default decoder: {_fmt(rows[0]['models'][name])} ({time.time() - t:.0f} s)", flush=True)
        measured = []
        for row, path, ids in zip(rows[1:], paths, serves):
            if mid not in ids:
                continue
            t = time.time()
            refiner = load_decoder(path, mid)
            refined = [tiling.refine_tiled(refiner, im, codec.tile_pixels, codec.transform_dtype) for im in base]
            f = features(refined)
            row["models"][name] = {"bpp": bpp, **score(originals, refined, reference, f, lpips)}
            measured.append((row, f))
            print(f"{name} {row['candidate']}: {_fmt(row['models'][name])} ({time.time() - t:.0f} s)", flush=True)
        intervals = fid_differences(reference, base_features, [f for _, f in measured], groups) if measured else []
        for (row, _), interval in zip(measured, intervals):
            row["models"][name]["fid_delta_90"] = interval
        is_against = lambda row: against is not None and Path(row["candidate"]).resolve() == against.resolve()  # noqa: E731
        paired = [f for row, f in measured if is_against(row)]
        others = [(row, f) for row, f in measured if not is_against(row)]
        if paired and others:
            for (row, _), interval in zip(others, fid_differences(reference, paired[0], [f for _, f in others], groups)):
                row["models"][name]["fid_delta_against_90"] = interval
    for row in rows:
        served = [n for n in models if n in row["models"]]
        row["serves_all"] = len(served) == len(models)
        row["score"] = float(np.mean([row["models"][n]["fid"] / rows[0]["models"][n]["fid"] for n in served])) if served else None
    return rows


def _fmt(m: dict) -> str:
    return f"FID {m['fid']:.1f} KID {m['kid'] * 1000:.1f}e-3 LPIPS {m['lpips']:.3f} PSNR {m['psnr']:.2f} block PSNR {m['block_psnr']:.2f}"


def table(rows: list[dict], models: list[str]) -> str:
    head = (
        "| candidate | score | "
        + " | ".join(
            f"{n} FID [90% of FID - default's] {{90% of FID - against's}} / KID x 1000 / LPIPS / PSNR / block PSNR" for n in models
        )
        + " |"
    )
    lines = [head, "|" + "---|" * (2 + len(models))]
    for r in rows:
        cells = [
            "%.1f%s / %.1f / %.3f / %.2f / %.2f" % (m["fid"], _interval(m), m["kid"] * 1000, m["lpips"], m["psnr"], m["block_psnr"])
            if m
            else "-"
            for m in (r["models"].get(n) for n in models)
        ]
        lines.append(f"| {r['candidate']} | {r['score']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(m: dict) -> str:
    out = " [%+.1f, %+.1f]" % tuple(m["fid_delta_90"]) if "fid_delta_90" in m else ""
    return out + (" {against: %+.1f, %+.1f}" % tuple(m["fid_delta_against_90"]) if "fid_delta_against_90" in m else "")


def pick(rows: list[dict], dest: Path, name: str, setup: dict) -> Path:
    """Copy the best candidate serving every model into dest/name.safetensors, with a card: its
    run's card (plan, data, device) where one is beside it, the selection's figures, and `serves`
    naming the models measured (its file may have been trained for more). A shipped decoder of
    that name must be of the candidate's kind (a refiner or a texture file)."""
    best = min((r for r in rows[1:] if r["serves_all"]), key=lambda r: r["score"], default=None)
    if best is None:
        raise SystemExit("no candidate serves every model measured")
    src = Path(best["candidate"])
    shipped = next((c["path"] for c in zoo.perceptual_decoders() if c["name"] == name), None)
    kinds = [file_metadata(f).get("format") for f in (shipped, src)] if shipped is not None else []
    if kinds and kinds[0] != kinds[1]:  # shipping it would swap one kind of decoder for another
        raise SystemExit(
            f"{name} ships as a {kinds[0]} file and the best candidate, {src.name}, is a {kinds[1]} file: pick it under another --name"
        )
    stem, snapshot = src.stem, SNAPSHOT.search(src.stem)
    run_card = src.with_name(f"{SNAPSHOT.sub('', stem)}.json")
    card = json.loads(run_card.read_text()) if run_card.exists() else {"kind": zoo.PERCEPTUAL}
    names = {c.get("model_id"): c["name"] for c in zoo.list_models()}
    # it routes only the models it was chosen on (another decoder may serve the rest: one each)
    card["serves"] = [{"name": names[i], "model_id": i} for i in served_ids(src) or [] if names.get(i) in best["models"]]
    if snapshot:  # the run's card describes its end: this is an earlier iteration of it
        iterations = int(snapshot.group(1))
        card["training"] = {**card.get("training", {}), "iterations_done": iterations, "wall_s": None, "seen": None, "per_s": None}
        if "plan" in card:
            card["description"] = description(card["plan"], iterations, card.get("class") == "latent-texture")
    card["selection"] = {
        "chosen": src.name,
        **setup,
        "rows": rows,
    }
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{name}.safetensors"
    if src.resolve() != out.resolve():
        shutil.copyfile(src, out)
    atomic_write_json(dest / f"{name}.json", card, indent=2)
    print(f"picked {src.name} (score {best['score']:.3f}) -> {out}")
    if best["score"] >= 1:
        print("note: its FID is not better than the default decoder's on these photos")
    for model, m in best["models"].items():
        if "fid_delta_90" in m and m["fid_delta_90"][1] >= 0:
            print(
                f"note: on {model} its FID is not shown lower than the default decoder's (90% interval of the difference {_interval(m).strip()})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench perceptual-select", description=__doc__.split("\n\n")[0])
    ap.add_argument("candidates", nargs="+", help="refiner files, or folders of them (a round's export folder)")
    ap.add_argument("--models", nargs="+", default=["pqmim-q1", "pqmim-q2", "pqmim-q3"])
    ap.add_argument("--images", type=int, default=24, help="held-out val photos (evenly spaced outside the bench's)")
    ap.add_argument("--val", default=str(VAL))
    ap.add_argument("--fid-weights", default=str(FID_WEIGHTS))
    ap.add_argument("--lpips-backbone", default=str(LPIPS_BACKBONE))
    ap.add_argument(
        "--cache",
        default=str(Path(__file__).resolve().parent / "results" / "cache" / "perceptual-select"),
        help="decoded images, features (ignored by git)",
    )
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--against", default="", help="a candidate (the shipped decoder, say): also a 90%% interval of FID minus its FID")
    ap.add_argument("--pick", default="", help="folder to write the best candidate into (as NAME.safetensors + card)")
    ap.add_argument("--name", default="pqmim-perceptual")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = held_out(Path(args.val), args.images)
    paths = candidates(args.candidates)
    against = Path(args.against) if args.against else None
    if against is not None:
        if not against.is_file():
            raise SystemExit(f"{against}: --against takes one perceptual decoder file")
        if against.resolve() not in [p.resolve() for p in paths]:
            paths.append(against)
    print(f"{len(paths)} candidates, {len(args.models)} models, {len(images)} held-out photos of {args.val}", flush=True)
    rows = select(paths, args.models, images, Path(args.fid_weights), Path(args.lpips_backbone), Path(args.cache), against)
    print(table(rows, args.models))
    setup = {"models": args.models, "images": [p.name for p in images], "val": args.val, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        atomic_write_json(Path(args.json), {**setup, "rows": rows}, indent=2)
    if args.pick:
        pick(rows, Path(args.pick), args.name, setup)
    return 0
