"""FID/KID of classical codecs at chosen quality settings, on the bench's FID set.

    python -m bench.classical_at avif:13 avif:15 avif:17 webp:2
    python -m bench.classical_at avif:15 webp:2 --against pqmim-q1:perceptual   # with paired intervals
    python -m bench.classical_at avif:15 --against pqmim-q1:perceptual --images 80
    python -m bench.classical_at avif:12 webp:0 --against pqmim-q1:perceptual --photos DIR   # other photos

`python -m bench run` measures FID only at the classical settings nearest pqmim's rates; this
measures any other setting the same way (the val images spread as the bench spreads them, 12 by
default, HiFiC's 256x256 patches, the cache in bench/results/cache), for a comparison at a given
rate, e.g. issue 14's "at 0.1 bpp".

`--against POINT` (a pqmim model, `pqmim-q1`, or its perceptual decoder, `pqmim-q1:perceptual`,
or another CODEC:QUALITY) also measures that point and gives, for each setting, a 90% interval
of the setting's FID minus the point's: a paired bootstrap over the photos
(bench.fid.fid_differences; both decode the same photos, so what moves FID with the photos
moves both). On the bench's 12 photos and 201 patches FID moves by points with the photos: a
single figure's lead of a few points may be none; `--images 80` takes all the val photos, and
`--photos DIR` the photos of another folder (a held-out set the decoders were never chosen on;
the bootstrap's cost grows with the patches: README, "Against AVIF and WebP"). Decoded features are cached as well
(bench/results/cache/inception, by point key: see bench.fid.point_features).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pqmim.checkout import FID_WEIGHTS, VAL
from pqmim.data import list_images
from pqmim.image import load_image

from .classical import LABELS
from .codecs import Point, classical_point, perceptual_points, pqmim_points
from .fid import fid_differences, fid_kid_of, inception_features, measure, patches, point_features, spread

RESULTS = Path(__file__).resolve().parent / "results"


def point_of(spec: str) -> Point:
    """CODEC:QUALITY (a classical setting), pqmim-qN (a shipped model, default decoder) or
    pqmim-qN:perceptual (its perceptual decoder)."""
    name, _, q = spec.partition(":")
    if name in LABELS and q.isdigit():
        return classical_point(name, int(q))
    if name.startswith("pqmim-") and q in ("", "perceptual"):
        found = (perceptual_points if q else pqmim_points)([name])
        if not found:
            raise ValueError(f"{name} has no perceptual decoder")
        return found[0]
    raise ValueError(f"bad point {spec!r}: want CODEC:QUALITY (codec one of {', '.join(LABELS)}), pqmim-qN or pqmim-qN:perceptual")


def paired(points: list[Point], against: Point, images: int | None, photos: Path = VAL) -> list[dict]:
    """Each point's bpp, FID and KID, and a 90% interval of its FID minus `against`'s (first row:
    `against` itself), on `images` photos of the folder `photos` (all: None) spread as the bench
    spreads them."""
    cache = RESULTS / "cache"
    originals = [load_image(f) for f in spread(list_images(photos), images)]
    groups = [len(patches(im)) for im in originals]
    reference = inception_features([p for im in originals for p in patches(im)], FID_WEIGHTS, cache_dir=cache)
    measured = [point_features(p, originals, FID_WEIGHTS, cache_dir=cache) for p in [against, *points]]
    intervals = fid_differences(reference, measured[0][0], [f for f, _ in measured[1:]], groups)
    rows = []
    for p, (f, bpp), interval in zip([against, *points], measured, [None, *intervals]):
        rows.append({"point": p, "bpp": sum(bpp) / len(bpp), **fid_kid_of(reference, f), "fid_delta_90": interval})
    return rows


def _family(p: Point) -> str:
    return LABELS.get(p.codec, p.codec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.classical_at", description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="CODEC:QUALITY (codec one of " + ", ".join(LABELS) + "), or pqmim-qN[:perceptual]")
    ap.add_argument("--against", metavar="POINT", help="pqmim-qN, pqmim-qN:perceptual or CODEC:QUALITY: paired FID intervals against it")
    ap.add_argument(
        "--images",
        type=int,
        help="photos used, spread as the bench spreads them (default: 12 val photos, the bench's FID set; all of --photos)",
    )
    ap.add_argument("--photos", type=Path, help="a folder of other photos than the val set's (a held-out set; needs --against)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.images is not None and args.images < 1:
        ap.error("--images must be at least 1")
    if args.photos is not None:
        if not args.against:
            ap.error("--photos needs --against (the table without it is the bench's val set's)")
        try:
            list_images(args.photos)
        except OSError as e:  # missing, not a folder, no images in it
            ap.error(f"--photos: {e}")
    torch.set_num_threads(args.threads)
    try:
        points = [point_of(s) for s in args.settings]
        against = point_of(args.against) if args.against else None
    except (ValueError, FileNotFoundError) as e:  # a bad spec, an unknown model
        ap.error(str(e))
    if against is not None:
        rows = paired(points, against, args.images or (None if args.photos else 12), args.photos or VAL)
        n = rows[0]["patches"]
        print(
            f"| codec | setting | bpp | FID [90% of FID - {_family(against)} {against.label}'s] | KID x 1000 | patches |\n|---|---|---|---|---|---|"
        )
        for r in rows:
            p, iv = r["point"], r["fid_delta_90"]
            cell = f"{r['fid']:.1f}" + ("" if iv is None else " [%+.1f, %+.1f]" % iv)
            print(f"| {_family(p)} | {p.label} | {r['bpp']:.4f} | {cell} | {r['kid'] * 1000:.1f} | {n} |")
        return 0
    results = measure(points, VAL, FID_WEIGHTS, RESULTS / "cache", limit=args.images or 12, progress=False)
    print("| codec | setting | bpp | FID | KID x 1000 | patches |\n|---|---|---|---|---|---|")
    for p in points:
        r = results[p.key]
        print(f"| {_family(p)} | {p.label} | {r['bpp']:.4f} | {r['fid']:.1f} | {r['kid'] * 1000:.1f} | {r['patches']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
