"""Training data packs: photos re-encoded once into one small file that travels to a lent GPU
(whose working tree is limited to 64 MiB) and that training reads straight into memory.

    python -m pqmim.pack --out .round/pack.tar ../shared/data/train ../shared/data/train_more

A pack is an uncompressed tar (stdlib tarfile; inspect it with `tar tvf`):

    manifest.json        what is inside: images, megapixels, sources, JPEG quality, max side
    train/00000.jpg ...  the training photos, downscaled to at most `max_side`, JPEG (4:2:0)
    val/00000.png ...    validation crops: the central 256x256 of the first 16 val photos, lossless

The JPEG quality is the highest of QUALITIES whose pack fits in `max_bytes` (48 MiB by default,
leaving room for the code and wheels in the 64 MiB that travel). Invariant: the same inputs
and options give a byte-identical pack (fixed entry names, times and order), so a pack can be
checked by its hash. Reading decodes every photo once (threads: Pillow releases the GIL).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .checkout import VAL
from .data import center_crop_arrays, list_images, load_rgb
from .fileio import atomic_file

MAX_BYTES = 48 << 20
QUALITIES = (95, 92, 90, 88, 85, 82, 80, 75, 70, 60, 50)
VAL_CROP, VAL_CROPS = 256, 16
PACK_VERSION = 1


def is_pack(path: str | Path) -> bool:
    return Path(path).is_file() and tarfile.is_tarfile(path)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=2, optimize=True)
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def build(
    sources: list[str | Path],
    out: str | Path,
    val: str | Path | None,
    max_side: int = 1024,
    max_bytes: int = MAX_BYTES,
    qualities: tuple[int, ...] = QUALITIES,
    threads: int = 2,
) -> dict:
    """Write a pack of every photo in `sources` (and `val`'s crops); returns its manifest."""
    files = [p for s in sources for p in list_images(s)]
    with ThreadPoolExecutor(threads) as ex:
        photos = list(ex.map(lambda p: load_rgb(p, max_side), files))
    vals = [_png(c) for c in center_crop_arrays(val, VAL_CROP, VAL_CROPS)] if val else []
    fixed = sum(len(v) for v in vals) + 2048 * (len(files) + len(vals) + 2)  # tar headers and manifest
    for q in qualities:
        with ThreadPoolExecutor(threads) as ex:
            jpegs = list(ex.map(lambda a: _jpeg(a, q), photos))
        if fixed + sum(len(j) for j in jpegs) <= max_bytes:
            break
    else:
        raise ValueError(
            f"{len(files)} photos do not fit in {max_bytes / 2**20:.1f} MiB even at JPEG quality {qualities[-1]}: use fewer or a smaller max_side"
        )
    manifest = {
        "pack_version": PACK_VERSION,
        "images": len(photos),
        "megapixels": round(sum(a.shape[0] * a.shape[1] for a in photos) / 1e6, 2),
        "sources": {str(s): len(list_images(s)) for s in sources},
        "jpeg_quality": q,
        "max_side": max_side,
        "val": {"source": str(val) if val else None, "crops": len(vals), "size": VAL_CROP},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
        for i, j in enumerate(jpegs):
            _add(tar, f"train/{i:05d}.jpg", j)
        for i, v in enumerate(vals):
            _add(tar, f"val/{i:05d}.png", v)
    return {**manifest, "bytes": out.stat().st_size}


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def manifest(path: str | Path) -> dict:
    """A pack's manifest alone (nothing decoded); ValueError if it is not a pack this pqmim reads."""
    with tarfile.open(path, "r") as tar:
        try:
            m = json.loads(tar.extractfile("manifest.json").read())
        except KeyError:
            raise ValueError(f"{path} is not a pqmim data pack (no manifest.json)") from None
    if m.get("pack_version") != PACK_VERSION:
        raise ValueError(f"{path}: data pack version {m.get('pack_version')} (this pqmim reads {PACK_VERSION})")
    return m


def read(path: str | Path, part: str = "train", threads: int = 8) -> list[np.ndarray]:
    """A pack's training photos (part "train") or validation crops ("val"), each decoded once."""
    if part not in ("train", "val"):
        raise ValueError(f"a pack has parts train and val, not {part!r}")
    manifest(path)  # checks the version
    with tarfile.open(path, "r") as tar:
        blobs = [
            tar.extractfile(m).read()
            for m in sorted(tar.getmembers(), key=lambda m: m.name)
            if m.isfile() and m.name.startswith(part + "/")
        ]
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(_decode, blobs))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pqmim.pack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+", help="folders of training photos (never Kodak or the val images)")
    ap.add_argument("--out", required=True, help="the pack file to write (e.g. .round/pack.tar)")
    ap.add_argument("--val", default=str(VAL), help="folder whose central crops validate training ('' for none)")
    ap.add_argument("--max-side", type=int, default=1024, help="downscale larger photos to this side")
    ap.add_argument("--max-mib", type=float, default=MAX_BYTES / 2**20, help="size limit of the pack")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    m = build(args.sources, args.out, args.val or None, args.max_side, int(args.max_mib * 2**20), threads=args.threads)
    print(
        f"{args.out}: {m['images']} photos, {m['megapixels']} megapixels, JPEG quality {m['jpeg_quality']}, "
        f"{m['val']['crops']} val crops, {m['bytes'] / 2**20:.1f} MiB"
    )
    return m


if __name__ == "__main__":
    main()
