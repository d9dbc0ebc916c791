"""FID and KID of decoded images against the originals, following HiFiC (Mentzer et al. 2020).

Each validation photo is cut into 256x256 patches on a grid from (0, 0), plus a second grid
shifted by 128 px in x and y (only full patches); the decoded image is cut at the same positions.
FID and KID compare the set of decoded patches with the set of original patches, both computed
by torch-fidelity with the TF-2015-12-05 Inception-v3 (pool3, 2048-d; patches are resized to
299 px inside, TF-style) loaded from a local file, so nothing is downloaded. KID uses the cubic
polynomial kernel, 100 subsets of min(1000, n) patches, seed 2020. Rates are real bytes: the
length of each codec's compressed output x 8 / pixels of the original, averaged over images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from tqdm import tqdm

from pqmim.data import list_images
from pqmim.image import load_image

from pqmim.fileio import atomic_write_json

PATCH = 256


class PointLike(Protocol):
    """One rate point of one codec (see bench/codecs.py)."""

    codec: str
    label: str
    key: str

    def roundtrip(self, rgb: np.ndarray) -> tuple[int, np.ndarray, float, float]: ...


def patches(rgb: np.ndarray, size: int = PATCH) -> list[np.ndarray]:
    """All full size x size patches on the grid from (0, 0), then on the grid shifted by size//2.

    Row-major within each grid; the patches are views into `rgb` (no copy)."""
    h, w = rgb.shape[:2]
    return [
        rgb[y : y + size, x : x + size]
        for off in (0, size // 2)
        for y in range(off, h - size + 1, size)
        for x in range(off, w - size + 1, size)
    ]


class _Patches(Dataset):
    """HxWx3 uint8 arrays served as the 3xHxW uint8 tensors torch-fidelity expects."""

    def __init__(self, items: list[np.ndarray]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.items[i])).permute(2, 0, 1)


def _fingerprint(items: list[np.ndarray], weights: Path) -> str:
    """A name for a patch set's cached features: its pixels and the Inception weights used."""
    h = hashlib.sha256(f"{weights.name}:{weights.stat().st_size}:{len(items)}".encode())
    for p in items:
        h.update(np.ascontiguousarray(p).data)
    return h.hexdigest()[:20]


def fid_kid(
    reference: list[np.ndarray],
    decoded: list[np.ndarray],
    weights: str | Path,
    device: str = "cpu",
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """FID and KID between two equally sized lists of HxWx3 uint8 patches.

    With `cache_dir`, torch-fidelity keeps the reference set's Inception features (and FID
    statistics) under cache_dir/torch_fidelity, named by a hash of its pixels, so measuring many
    codecs against one reference extracts its features once. Without it nothing is written.

    The sets are paired (patch i of both is the same place), and torch-fidelity's unbiased KID
    counts those pairs, whose kernel is above average: near-lossless codecs get KID slightly
    below 0 (about -2 * 0.2 / 1000 = -0.0004 with 1000-patch subsets). With n < 2048 patches
    the covariances are rank-deficient; FID is still defined, comparable within this set only."""
    n = len(decoded)
    if len(reference) != n or n < 2:
        raise ValueError(f"need two equal sets of at least 2 patches, got {len(reference)} and {n}")
    weights = Path(weights)
    if not weights.is_file():  # torch-fidelity would download its own copy when given no path
        raise FileNotFoundError(f"no Inception weights at {weights}")
    cuda = torch.device(device).type == "cuda"
    cache = {"cache": False}
    if cache_dir is not None:
        cache = {
            "cache": True,
            "cache_root": str(Path(cache_dir) / "torch_fidelity"),
            "input1_cache_name": f"ref-{_fingerprint(reference, weights)}",
        }
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        m = torch_fidelity.calculate_metrics(
            input1=_Patches(reference),
            input2=_Patches(decoded),
            fid=True,
            kid=True,
            kid_subset_size=min(1000, n),
            feature_extractor_weights_path=str(weights),
            cuda=cuda,
            save_cpu_ram=True,  # num_workers=0: the patches are in memory, worker processes only cost
            rng_seed=2020,
            verbose=progress,
            **cache,
        )
    return {
        "fid": float(m[torch_fidelity.KEY_METRIC_FID]),
        "kid": float(m[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(m[torch_fidelity.KEY_METRIC_KID_STD]),
        "patches": n,
    }


def spread(files: list[Path], n: int | None) -> list[Path]:
    """`n` files evenly spaced over the sorted list (the val set is sorted by scene category)."""
    if n is None or n >= len(files):
        return files
    return [files[int(i * len(files) / n)] for i in range(n)]


def _cached(path: Path, images: int, limit: int | None) -> dict | None:
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return r if r.get("images") == images and r.get("limit") == limit else None


def _measure_point(
    point: PointLike,
    images: list[np.ndarray],
    reference: list[np.ndarray],
    weights: str | Path,
    cache_dir: Path,
    device: str,
    progress: bool,
) -> dict:
    t = time.perf_counter()
    bpp, decoded = [], []
    for rgb in tqdm(images, desc=f"{point.codec} {point.label}", leave=False, disable=not progress):
        n, out, _, _ = point.roundtrip(rgb)
        if out.shape != rgb.shape:
            raise ValueError(f"{point.key}: decoded {out.shape} != original {rgb.shape}")
        bpp.append(n * 8 / (rgb.shape[0] * rgb.shape[1]))
        decoded += patches(out)
    m = fid_kid(reference, decoded, weights, device, cache_dir=cache_dir, progress=progress)
    return {
        "codec": point.codec,
        "label": point.label,
        "bpp": float(np.mean(bpp)),
        **m,
        "images": len(images),
        "seconds": time.perf_counter() - t,
    }


def measure(
    points: Iterable[PointLike],
    val_folder: str | Path,
    weights: str | Path,
    cache_dir: Path,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    fresh: bool = False,
) -> dict[str, dict]:
    """{point.key: {codec, label, bpp, fid, kid, kid_std, patches, images, limit, seconds}}.

    Each point's result is cached as cache_dir/fid_{key}.json and reused while its image count
    and `limit` match, so adding a codec measures only that codec."""
    points = list(points)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = spread(list_images(val_folder), limit)
    out = {p.key: None if fresh else _cached(cache_dir / f"fid_{p.key}.json", len(files), limit) for p in points}
    todo = [p for p in points if out[p.key] is None]
    if todo:
        # Decode the originals once; their patches are the reference for every point.
        images = [load_image(f) for f in tqdm(files, desc="val images", leave=False, disable=not progress)]
        reference = [q for im in images for q in patches(im)]
        for p in tqdm(todo, desc="FID/KID", disable=not progress):
            r = _measure_point(p, images, reference, weights, cache_dir, device, progress) | {"limit": limit}
            atomic_write_json(cache_dir / f"fid_{p.key}.json", r)
            out[p.key] = r
    return out
