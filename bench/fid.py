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
from torch_fidelity import metric_fid as tf_fid
from torch_fidelity import metric_kid as tf_kid
from torch_fidelity import utils as tf_utils
from torch.utils.data import Dataset
from tqdm import tqdm

from pqmim.data import list_images
from pqmim.image import load_image

from pqmim.fileio import atomic_file, atomic_write_json

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
        # a copy: the patches may be read-only views of a decoded image, which torch warns about
        return torch.from_numpy(np.array(self.items[i])).permute(2, 0, 1)


def _fingerprint(items: list[np.ndarray], weights: Path) -> str:
    """A name for a patch set's cached features: its pixels and the Inception weights used."""
    h = hashlib.sha256(f"{weights.name}:{weights.stat().st_size}:{len(items)}".encode())
    for p in items:
        h.update(np.ascontiguousarray(p).data)
    return h.hexdigest()[:20]


def inception_features(
    items: list[np.ndarray], weights: str | Path, device: str = "cpu", *, cache_dir: Path | None = None, progress: bool = False
) -> torch.Tensor:
    """(n, 2048) float32: torch-fidelity's Inception-v3 pool3 features of HxWx3 uint8 patches
    (the TF-2015-12-05 graph from the file `weights`, resized to 299 px inside as TF does).

    With `cache_dir`, a set's features are kept as cache_dir/inception/NAME.pt, named by a
    hash of its pixels (`_fingerprint`), so measuring many codecs against one reference set
    extracts its features once. Without it nothing is written."""
    weights = Path(weights)
    if not weights.is_file():  # torch-fidelity would download its own copy when given no path
        raise FileNotFoundError(f"no Inception weights at {weights}")
    path = None if cache_dir is None else Path(cache_dir) / "inception" / f"{_fingerprint(items, weights)}.pt"
    if path is not None and path.exists():
        return torch.load(path, weights_only=True)
    cuda = torch.device(device).type == "cuda"
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        net = tf_utils.create_feature_extractor(
            "inception-v3-compat", ["2048"], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=False
        )
        # num_workers=0 (save_cpu_ram): the patches are in memory, worker processes only cost
        f = tf_utils.get_featuresdict_from_dataset(_Patches(items), net, 64, cuda, True, progress)["2048"]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:
            torch.save(f, out)
    return f


def fid_kid_of(reference: torch.Tensor, decoded: torch.Tensor) -> dict:
    """FID and KID of two feature sets (`inception_features`), by torch-fidelity's own
    functions: KID with the cubic polynomial kernel, 100 subsets of min(1000, n), seed 2020.

    The bench's sets are paired (patch i of both is the same place), and torch-fidelity's
    unbiased KID counts those pairs, whose kernel is above average: near-lossless codecs get KID
    slightly below 0 (about -2 * 0.2 / 1000 = -0.0004 with 1000-patch subsets). With n < 2048
    patches the covariances are rank-deficient; FID is still defined, comparable within this
    set only."""
    n = len(decoded)
    if len(reference) != n or n < 2:
        raise ValueError(f"need two equal sets of at least 2 patches, got {len(reference)} and {n}")
    fid = tf_fid.fid_statistics_to_metric(tf_fid.fid_features_to_statistics(reference), tf_fid.fid_features_to_statistics(decoded), False)
    kid = tf_kid.kid_features_to_metric(reference, decoded, kid_subset_size=min(1000, n), rng_seed=2020, verbose=False)
    return {
        "fid": float(fid[torch_fidelity.KEY_METRIC_FID]),
        "kid": float(kid[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(kid[torch_fidelity.KEY_METRIC_KID_STD]),
        "patches": n,
    }


def frechet(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> float:
    """FID of two feature sets (n_a, d) and (n_b, d), exactly and fast: `frechet_to` with one set."""
    return frechet_to(a, [b], weights)[0]


def frechet_to(a: np.ndarray, others: list[np.ndarray], weights: np.ndarray | None = None) -> list[float]:
    """FID of feature set `a` (n_a, d) against each of `others` (n_b, d), exactly, in whichever
    form is cheaper; what makes a bootstrap of FID affordable. Equal to `fid_kid_of`'s FID up to
    rounding (tested, both forms). The term that costs is tr sqrt(S_a S_b):
    - few samples (min(n_a, n_b) <= d, d = 2048 here): the nuclear norm of A B^T / sqrt((n_a - 1)
      (n_b - 1)), A and B the centred features (the nonzero eigenvalues of A^T A B^T B are the
      squared singular values of A B^T): an n_a x n_b problem instead of d x d;
    - more: A = Q R (R is d x d, made once for all of `others`), so S_a S_b has the eigenvalues
      of R S_b R^T / (n_a - 1) = C^T C / ((n_a - 1)(n_b - 1)), C = B R^T: one d x d symmetric
      eigenvalue problem per set.

    `weights` (n,), paired sets only (every set n rows): row i counted weights[i] times, exactly
    as if it were repeated (a repeated row adds w x x^T to the scatter, as the row sqrt(w) x does
    once); a bootstrap draw that repeats photos then costs the distinct photos' rows, not all of
    them."""

    def centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        x = np.asarray(x, np.float64)
        w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
        if len(w) != len(x):
            raise ValueError(f"{len(w)} weights for a set of {len(x)} rows")
        m = w @ x / w.sum()
        return np.sqrt(w)[:, None] * (x - m), m, w.sum() - 1

    a, ma, na = centred(a)
    d = a.shape[1]
    r = None  # A's R, made once if a set needs the d x d form
    out = []
    for b in others:
        b, mb, nb = centred(b)
        if min(len(a), len(b)) <= d:
            cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(na * nb)
        else:
            if r is None:
                r = np.linalg.qr(a, mode="r")
            c = b @ r.T
            cross = np.sqrt(np.clip(np.linalg.eigvalsh(c.T @ c), 0, None)).sum() / np.sqrt(na * nb)
        out.append(float(np.square(ma - mb).sum() + np.square(a).sum() / na + np.square(b).sum() / nb - 2 * cross))
    return out


def fid_differences(
    reference: torch.Tensor, base: torch.Tensor, others: list[torch.Tensor], groups: list[int], draws: int = 300, seed: int = 0
) -> list[tuple[float, float]]:
    """For each of `others`, a 90% interval of FID(other) - FID(base) against the same
    reference: a paired bootstrap over photos (`groups`: how many patches each photo gave, in
    order), each draw taking photos with replacement and all their patches from every set. FID
    on a few hundred patches moves by points when the photos change; an interval that holds 0
    means the two are not told apart on these photos. (Repeated photos bias each draw's FID up;
    what is compared is two decoders' FID on the same draw.)"""
    if any(sum(groups) != len(f) for f in (reference, base, *others)):
        raise ValueError(f"groups cover {sum(groups)} patches, the sets hold {[len(f) for f in (reference, base, *others)]}")
    starts = np.cumsum([0, *groups])
    r, x = np.asarray(reference, np.float64), np.asarray(base, np.float64)
    ys = [np.asarray(f, np.float64) for f in others]
    rng = np.random.default_rng(seed)
    diffs = np.zeros((draws, len(ys)))
    for d in range(draws):
        # Photos drawn with replacement; each distinct photo's patches once, weighted by how
        # often it was drawn (the same FID as repeating them; about 63% of the rows).
        times = np.bincount(rng.integers(len(groups), size=len(groups)), minlength=len(groups))
        drawn = np.flatnonzero(times)
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in drawn])
        w = np.repeat(times[drawn], np.asarray(groups)[drawn])
        at, *fids = frechet_to(r[rows], [x[rows], *(y[rows] for y in ys)], w)
        diffs[d] = [f - at for f in fids]
    return [(float(lo), float(hi)) for lo, hi in np.percentile(diffs, [5, 95], axis=0).T]


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


def point_features(
    point: PointLike,
    images: list[np.ndarray],
    weights: str | Path,
    device: str = "cpu",
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """Inception features of the patches of `point`'s decoded `images` (image by image, each in
    `patches` order, so paired with the originals' patches) and each image's bits per pixel.

    With `cache_dir`, both are kept as cache_dir/inception/point-KEY-NAME.pt, NAME a hash of the
    originals' pixels: the point's key (bench/codecs.py) names its weights, encoder library and,
    for pqmim, its bytes and pixels on a probe image."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "inception" / f"point-{point.key}-{_fingerprint(images, Path(weights))}.pt"
        if path.exists():
            d = torch.load(path, weights_only=True)
            return d["features"], d["bpp"].tolist()
    bpp, decoded = [], []
    for rgb in tqdm(images, desc=f"{point.codec} {point.label}", leave=False, disable=not progress):
        n, out, _, _ = point.roundtrip(rgb)
        if out.shape != rgb.shape:
            raise ValueError(f"{point.key}: decoded {out.shape} != original {rgb.shape}")
        bpp.append(n * 8 / (rgb.shape[0] * rgb.shape[1]))
        decoded += patches(out)
    f = inception_features(decoded, weights, device, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:
            torch.save({"features": f, "bpp": torch.tensor(bpp, dtype=torch.float64)}, out)
    return f, bpp


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
    decoded, bpp = point_features(point, images, weights, device, progress=progress)
    m = fid_kid_of(inception_features(reference, weights, device, cache_dir=cache_dir, progress=progress), decoded)
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
