"""Training data: random crops from a folder of photos, held decoded in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .image import load_image, to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images found in {folder}")
    return files


def load_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    """An image as the codec would read it (see pqmim.image), optionally downscaled."""
    rgb = load_image(path)
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        im = Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS)
        rgb = np.asarray(im)
    return rgb


def photos(source: str | Path, part: str = "train", max_side: int | None = None) -> list[np.ndarray]:
    """Every photo of a folder (each downscaled to max_side), or one part of a data pack
    (pqmim.pack: "train", already downscaled when built, or "val", its validation crops),
    decoded once."""
    from . import pack

    if pack.is_pack(source):
        return pack.read(source, part)
    return [load_rgb(p, max_side) for p in list_images(source)]


def describe_source(source: str | Path) -> dict:
    """What a model card says about its training data: the folder or pack, and how many photos."""
    from . import pack

    if pack.is_pack(source):
        m = pack.manifest(source)
        return {
            "train": str(source),
            "pack": {k: m[k] for k in ("sources", "jpeg_quality", "max_side", "megapixels")},
            "train_images": m["images"],
        }
    return {"train": str(source), "train_images": len(list_images(source))}


def center_crop_arrays(folder: str | Path, size: int, limit: int) -> list[np.ndarray]:
    """The central size x size crop of the first `limit` images of a folder (smaller ones skipped)."""
    crops = []
    for p in list_images(folder)[:limit]:
        im = load_rgb(p)
        h, w = im.shape[:2]
        if min(h, w) >= size:
            y, x = (h - size) // 2, (w - size) // 2
            crops.append(np.ascontiguousarray(im[y : y + size, x : x + size]))
    return crops


def val_crops(source: str | Path, size: int, limit: int) -> list[np.ndarray]:
    """The validation crops: the central size x size crops of a folder's first `limit` images,
    or those stored in a data pack (cut the same way when it was built)."""
    from . import pack

    crops = pack.read(source, "val")[:limit] if pack.is_pack(source) else center_crop_arrays(source, size, limit)
    if not crops:
        raise ValueError(f"no validation image of at least {size}x{size} pixels in {source}")
    return crops


def center_crops(source: str | Path, size: int, limit: int) -> torch.Tensor:
    """Deterministic validation batch (B, 3, size, size) in [0, 1] (`val_crops`)."""
    return to_tensor(np.stack(val_crops(source, size, limit)))


class CropSource:
    """Training photos held decoded in memory on `device` (on a GPU, crops and flips are cut
    there: no per-step copy from the host), served as random crops with horizontal flips.

    Which images a batch uses is chosen by the caller (a DistributedSampler shard in training);
    the crop positions and flips come from the numpy generator it passes, so a batch is a pure
    function of (indices, crop, generator state) on any device.
    """

    def __init__(self, images: list[np.ndarray], device: torch.device | str = "cpu") -> None:
        if not images:
            raise ValueError("no training images")
        self.sizes = [im.shape[:2] for im in images]
        self.images = [torch.from_numpy(np.require(im, requirements="CW")).permute(2, 0, 1).to(device) for im in images]  # (3, H, W) uint8
        self.megapixels = sum(h * w for h, w in self.sizes) / 1e6

    def __len__(self) -> int:
        return len(self.images)

    def crops(self, indices: list[int], crop: int, rng: np.random.Generator) -> torch.Tensor:
        """A float batch (len(indices), 3, crop, crop) in [0, 1], on the images' device. An image
        smaller than the crop is replaced by a random one that is large enough."""
        big = [i for i, (h, w) in enumerate(self.sizes) if min(h, w) >= crop]
        if not big:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels")
        out = []
        for i in indices:
            if min(self.sizes[i]) < crop:
                i = big[rng.integers(len(big))]
            h, w = self.sizes[i]
            y = rng.integers(h - crop + 1)
            x = rng.integers(w - crop + 1)
            c = self.images[i][:, y : y + crop, x : x + crop]
            out.append(c.flip(-1) if rng.random() < 0.5 else c)
        return torch.stack(out).float().div_(255)
