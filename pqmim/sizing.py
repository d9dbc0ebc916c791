"""Files of a given size (`cwebp -size`): the rung and the number of coding steps sent that give
the best quality within a byte budget.

Invariant: the file returned is never over the budget; when even the file of the lowest rung
that sends only the first step is, TargetSizeError says how many bytes it needs.

"Best" is the highest PSNR against the input, measured by the encoder on the very pixels the
decoder will compute (what is not sent is filled in deterministically). The candidates are the
highest rung whose whole file fits, found by walking the ladder from the rung the shipped
cards' Kodak bpp predicts (file size grows with the rung on every image we know of), then the
rungs above it, each with as many steps as fit (its payload sealed after each step:
`sealed_sizes`), climbing only while each is better than the one below: a finer rung sends
fewer steps, and past the first that loses, the next ones send fewer still. A rung that fits
whole beats the rungs below it, so they are not tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from . import zoo
from .evaluate import psnr_uint8
from .extras import Extras
from .image import ImageLike, Picture, read_picture


class TargetSizeError(ValueError):
    """No shipped quality level gives a file within the budget."""


@dataclass(frozen=True)
class Candidate:
    name: str  # the model
    sent: int  # steps sent (the model's steps: the whole file)
    data: bytes


def bytes_for_bpp(bpp: float, width: int, height: int) -> int:
    """The byte budget of a bits-per-pixel budget for an image of width x height."""
    return math.floor(bpp * width * height / 8)


def _kodak_bpp(card: dict) -> float:
    bpp = (card.get("kodak") or {}).get("bpp")
    return bpp if isinstance(bpp, (int, float)) else math.inf


def file_bytes(codec, pic: Picture, keep_metadata: bool, sent: int | None, payload_bytes: int) -> int:
    """The size of a file of `pic` whose payload has this many bytes (header, chunks, CRC)."""
    chunks = Extras(pic.icc, pic.exif if keep_metadata else None, pic.alpha).to_chunks()
    h, w = pic.rgb.shape[:2]
    header = fmt.Header(codec.model_id, w, h, codec.cfg.steps, 0, 0, chunks, sent, arithmetic=codec.arithmetic)
    return len(fmt.pack(header, b"")) + payload_bytes


def compress_to_size(image: ImageLike, max_bytes: int, **options) -> tuple[bytes, str]:
    """(the .pqm bytes, the model's name) of the best file of `image` (ICC profile, alpha and,
    with keep_metadata, EXIF included) within max_bytes. With partial=False only whole files
    (every step sent) are considered, as before 0.4. `progress(model name, done, total)`
    follows the entropy coder through each rung tried. `options`: best_within's keywords
    (keep_metadata, device, progress, partial)."""
    best = best_within(image, max_bytes, **options)
    return best.data, best.name


def best_within(
    image: ImageLike,
    max_bytes: int,
    keep_metadata: bool = False,
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    partial: bool = True,
) -> Candidate:
    """The best candidate within max_bytes (see the module docstring)."""
    from .codec import shipped_codec

    pic = read_picture(image)
    levels = zoo.quality_levels()  # level -> model name, ascending
    if not levels:
        raise TargetSizeError("no quality levels shipped")
    names = [levels[q] for q in levels]
    pixels = pic.rgb.shape[0] * pic.rgb.shape[1]
    whole: dict[int, bytes] = {}

    def report(name: str):
        return None if progress is None else (lambda done, total: progress(name, done, total))

    def fits(i: int) -> bool:
        if i not in whole:
            whole[i] = shipped_codec(names[i], device).compress(pic, keep_metadata, report(names[i]))
        return len(whole[i]) <= max_bytes

    bpp = {c["name"]: _kodak_bpp(c) for c in zoo.list_models()}
    i = max([j for j, n in enumerate(names) if bpp.get(n, math.inf) * pixels / 8 <= max_bytes], default=0)
    top = None  # the highest rung whose whole file fits
    if fits(i):
        while i + 1 < len(names) and fits(i + 1):
            i += 1
        top = i
    else:
        while i > 0:
            i -= 1
            if fits(i):
                top = i
                break
    candidates: list[Candidate] = []  # from the lowest rung up, each better than the one before
    scores: dict[int, float] = {}  # PSNR by index in candidates, measured only when compared

    def score(i: int) -> float:
        if i not in scores:
            c = candidates[i]
            scores[i] = _psnr(shipped_codec(c.name, device), pic, c.data)
        return scores[i]

    def add(c: Candidate) -> bool:
        """Keep `c` if it beats the candidate below it (the first is always kept)."""
        candidates.append(c)
        if len(candidates) > 1 and score(len(candidates) - 1) <= score(len(candidates) - 2):
            candidates.pop()
            scores.pop(len(candidates))
            return False
        return True

    if top is not None:
        add(Candidate(names[top], shipped_codec(names[top], device).cfg.steps, whole[top]))
    if partial:
        for j in range(0 if top is None else top + 1, len(names)):
            c = _partial(shipped_codec(names[j], device), names[j], pic, max_bytes, keep_metadata, report(names[j]))
            if c is None or not add(c):
                break
    if not candidates:
        if partial:
            codec = shipped_codec(names[0], device)
            first = codec.coder.sealed_sizes(codec.encode_codes([pic.rgb])[0], limit=0, arithmetic=codec.arithmetic)[0]
            smallest, what = file_bytes(codec, pic, keep_metadata, 1, first), f"{names[0]}, 1 step sent"
        else:
            smallest, what = len(whole[0]), names[0]
        raise TargetSizeError(f"{max_bytes} bytes is too small for this image: its smallest pqmim file ({what}) is {smallest} bytes")
    return candidates[-1]


def _partial(codec, name: str, pic: Picture, max_bytes: int, keep_metadata: bool, progress) -> Candidate | None:
    """The file of this rung that sends as many steps as fit in max_bytes (at least one), or None."""
    codes = codec.encode_codes([pic.rgb])[0]
    sizes = codec.coder.sealed_sizes(codes, limit=max_bytes, arithmetic=codec.arithmetic)  # payload bytes when sending 1, 2, ... steps
    fit = [s + 1 for s, n in enumerate(sizes) if s + 1 < codec.cfg.steps and file_bytes(codec, pic, keep_metadata, s + 1, n) <= max_bytes]
    for sent in sorted(fit, reverse=True):  # the sizes assume grid shift 0; a rare other shift changes the payload
        data = codec.compress(pic, keep_metadata, progress, send_steps=sent)
        if len(data) <= max_bytes:
            return Candidate(name, sent, data)
    return None


def _psnr(codec, pic: Picture, data: bytes) -> float:
    """PSNR of the RGB the decoder gets from `data` (every candidate is decoded as users will)."""
    return psnr_uint8(pic.rgb, np.asarray(codec.decompress(data).convert("RGB")))
