"""Files of a given size: the best quality level whose file fits a byte budget (`cwebp -size`).

Invariant: the file returned is never over the budget; when even the smallest rung's file is,
TargetSizeError says how many bytes that file needs. "Best" is the highest quality level that
fits: file size grows with the level on every image we know of (each rung about doubles the
rate on Kodak), so the search walks up or down the ladder from the level the shipped cards'
Kodak bpp predicts, and stops at the first level past the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from . import zoo
from .image import ImageLike, read_picture


class TargetSizeError(ValueError):
    """No shipped quality level gives a file within the budget."""


def bytes_for_bpp(bpp: float, width: int, height: int) -> int:
    """The byte budget of a bits-per-pixel budget for an image of width x height."""
    return math.floor(bpp * width * height / 8)


def _kodak_bpp(card: dict) -> float:
    bpp = (card.get("kodak") or {}).get("bpp")
    return bpp if isinstance(bpp, (int, float)) else math.inf


def compress_to_size(image: ImageLike, max_bytes: int, keep_metadata: bool = False, device: str = "cpu",
                     progress: Callable[[str, int, int], None] | None = None) -> tuple[bytes, str]:
    """(the .pqm bytes, the model's name) of the highest quality level whose file of `image`
    (ICC profile, alpha and, with keep_metadata, EXIF included) is at most max_bytes.
    `progress(model name, done, total)` follows the entropy coder through each level tried."""
    from .codec import shipped_codec

    pic = read_picture(image)
    levels = zoo.quality_levels()  # level -> model name, ascending
    if not levels:
        raise TargetSizeError("no quality levels shipped")
    qs = list(levels)
    pixels = pic.rgb.shape[0] * pic.rgb.shape[1]
    files: dict[int, bytes] = {}

    def fits(i: int) -> bool:
        if i not in files:
            name = levels[qs[i]]
            report = None if progress is None else (lambda done, total: progress(name, done, total))
            files[i] = shipped_codec(name, device).compress(pic, keep_metadata, report)
        return len(files[i]) <= max_bytes

    bpp = {c["name"]: _kodak_bpp(c) for c in zoo.list_models()}
    i = max([j for j, q in enumerate(qs) if bpp.get(levels[q], math.inf) * pixels / 8 <= max_bytes], default=0)
    if fits(i):
        while i + 1 < len(qs) and fits(i + 1):
            i += 1
        return files[i], levels[qs[i]]
    while i > 0:
        i -= 1
        if fits(i):
            return files[i], levels[qs[i]]
    raise TargetSizeError(f"{max_bytes} bytes is too small for this image: its smallest pqmim file ({levels[qs[0]]}) is {len(files[0])} bytes")
