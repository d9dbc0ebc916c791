"""Training data: random crops from a folder of photos, held decoded in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .image import load_image

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


class CropSource:
    """Training photos decoded once into memory, served as random crops (with horizontal flips).

    Which images a batch uses is chosen by the caller (a DistributedSampler shard in training);
    the crop positions and flips come from the generator it passes.
    """

    def __init__(self, folder: str | Path, max_side: int | None = None) -> None:
        self.images = [load_rgb(p, max_side) for p in list_images(folder)]

    def __len__(self) -> int:
        return len(self.images)

    def crops(self, indices: list[int], crop: int, rng: np.random.Generator) -> torch.Tensor:
        """A float batch (len(indices), 3, crop, crop) in [0, 1]. An image smaller than the crop
        is replaced by a random one that is large enough."""
        big = [i for i, im in enumerate(self.images) if min(im.shape[:2]) >= crop]
        if not big:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels")
        out = np.empty((len(indices), crop, crop, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            im = self.images[i]
            if min(im.shape[:2]) < crop:
                im = self.images[big[rng.integers(len(big))]]
            y = rng.integers(im.shape[0] - crop + 1)
            x = rng.integers(im.shape[1] - crop + 1)
            c = im[y : y + crop, x : x + crop]
            out[j] = c[:, ::-1] if rng.random() < 0.5 else c
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


def center_crops(folder: str | Path, size: int, limit: int) -> torch.Tensor:
    """Deterministic validation batch: the central size x size crop of the first `limit` images."""
    crops = []
    for p in list_images(folder)[:limit]:
        im = load_rgb(p)
        h, w = im.shape[:2]
        if min(h, w) < size:
            continue
        y, x = (h - size) // 2, (w - size) // 2
        crops.append(im[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)
