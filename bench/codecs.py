"""Every codec the bench compares, as rate points with one interface: `roundtrip(rgb)` gives the
real compressed size, the decoded 8-bit image and the encode / decode seconds.

- pqmim: one point per shipped model (the quality ladder);
- pqmim-perceptual: the same models' files decoded by the perceptual decoder, where one ships;
- baselines: one point per CompressAI model we trained (models/baselines/, see bench/baselines.py);
- classical: one point per Pillow quality setting of JPEG 4:2:0 / 4:4:4, WebP and AVIF.

A point's `key` names its cache files: it changes when the weights or the encoder library do,
and a pqmim point's also when what it gives for a fixed probe image does (`outcome`: its bytes
and decoded pixels), so a change of code or transforms precision that moves pixels starts a new
measurement instead of reusing the old one's figures (a change seen only on images larger than
one tile is not caught).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import PIL

from pqmim import Codec, zoo
from pqmim import format as fmt
from pqmim.evaluate import roundtrip

from .classical import LABELS, QUALITIES, available, decode, encode


PERCEPTUAL = "pqmim-perceptual"  # the family of the perceptual decoder's points


@dataclass
class Point:
    codec: str  # family: "pqmim", "bmshj2018-hyperprior", "jpeg420", ...
    label: str  # the point within its family: "q3", "lambda=0.0018", "q=30"
    key: str
    _roundtrip: Callable[[np.ndarray], tuple[int, np.ndarray, float, float]] = field(repr=False)
    meta: dict = field(default_factory=dict)

    def roundtrip(self, rgb: np.ndarray) -> tuple[int, np.ndarray, float, float]:
        """(compressed bytes, decoded HxWx3 uint8, encode seconds, decode seconds)"""
        return self._roundtrip(rgb)


def _checked(codec) -> Callable[[np.ndarray], tuple[int, np.ndarray, float, float]]:
    """pqmim.evaluate.roundtrip for this codec; a pqmim decode that does not give back exactly
    the encoder's codes is a bug, not a data point, and raises."""

    def run(rgb: np.ndarray) -> tuple[int, np.ndarray, float, float]:
        n, out, enc, dec, exact = roundtrip(codec, rgb)
        if exact is False:
            raise RuntimeError(f"{codec.name}: decoded codes differ from the encoder's")
        return n, out, enc, dec

    return run


class _Pillow:
    """A classical codec at one quality setting, with the compress/decompress interface."""

    def __init__(self, codec: str, quality: int) -> None:
        self.codec, self.quality, self.name = codec, quality, f"{codec} q={quality}"

    def compress(self, rgb: np.ndarray) -> bytes:
        return encode(self.codec, rgb, self.quality)

    def decompress(self, data: bytes) -> np.ndarray:
        return decode(data)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def probe_image() -> np.ndarray:
    """80x96 RGB uint8: ramps, a checkerboard and integer-hashed noise (integer arithmetic only,
    so the same array on every machine and numpy)."""
    y, x = np.mgrid[0:80, 0:96]
    noise = (x * 7919 + y * 104729 + x * y * 31) % 251
    return np.stack([x * 255 // 95, (y * 255 // 79 + noise) // 2, ((x // 8 + y // 8) % 2) * 160 + noise // 4], -1).astype(np.uint8)


def outcome(codec) -> str:
    """A hash of a codec's bytes and decoded pixels for `probe_image` (anything with
    compress / decompress)."""
    data = codec.compress(probe_image())
    pixels = np.ascontiguousarray(np.asarray(codec.decompress(data)))
    return hashlib.sha256(data + pixels.tobytes()).hexdigest()[:8]


def pqmim_points(names: list[str] | None = None) -> list[Point]:
    """The shipped ladder (or the named models); decoding checks the codes match the encoder's."""
    points = []
    for name in names or list(zoo.quality_levels().values()):
        codec = Codec.from_pretrained(name)
        points.append(
            Point(
                "pqmim",
                name.replace("pqmim-", ""),
                f"pqmim-{name}-{codec.model_id.hex()}-v{fmt.VERSION}-{outcome(codec)}",
                _checked(codec),
                {"model": name, "model_id": codec.model_id.hex(), "config": codec.cfg.to_dict()},
            )
        )
    return points


class _Perceptual:
    """A pqmim model decoded by its perceptual decoder: compress as usual, decompress with
    perceptual=True (the file's codes are still checked against its checksum)."""

    def __init__(self, codec: Codec) -> None:
        self.codec, self.name = codec, f"{codec.name} perceptual"

    def compress(self, rgb: np.ndarray) -> bytes:
        return self.codec.compress(rgb)

    def decompress(self, data: bytes):
        return self.codec.decompress(data, perceptual=True)


def perceptual_points(names: list[str] | None = None) -> list[Point]:
    """The shipped ladder (or the named models) through the perceptual decoder, where one ships."""
    points = []
    for name in names or list(zoo.quality_levels().values()):
        codec = Codec.from_pretrained(name)
        try:
            path = zoo.perceptual_path(codec.model_id)
        except FileNotFoundError:
            continue
        perceptual = _Perceptual(codec)
        points.append(
            Point(
                PERCEPTUAL,
                name.replace("pqmim-", ""),
                f"pqmim-perceptual-{name}-{codec.model_id.hex()}-{_file_hash(path)}-v{fmt.VERSION}-{outcome(perceptual)}",
                _checked(perceptual),
                {"model": name, "model_id": codec.model_id.hex(), "perceptual": path.stem},
            )
        )
    return points


def baseline_points(folder: str | Path | None = None) -> list[Point]:
    from .baselines import Baseline, shipped

    points = []
    for path in shipped(folder):
        model = Baseline.load(path)
        card = json.loads(path.with_suffix(".json").read_text())
        points.append(
            Point(
                model.arch,
                f"lambda={card['lmbda']}",
                f"{path.stem}-{_file_hash(path)}",
                _checked(model),
                {"model": path.stem, "lmbda": card["lmbda"], "training": card.get("training")},
            )
        )
    return points


def classical_points(codecs: list[str], qualities: int | None = None) -> list[Point]:
    """Pillow codecs at their quality settings (`qualities`: keep only that many, spread out)."""
    points = []
    for c in codecs:
        if not available(c):
            print(f"skipping {LABELS[c]}: this Pillow build cannot write it")
            continue
        qs = QUALITIES[c]
        if qualities:
            qs = [qs[round(i)] for i in np.linspace(0, len(qs) - 1, qualities)]
        points += [classical_point(c, q) for q in qs]
    return points


def classical_point(codec: str, quality: int) -> Point:
    """One Pillow codec at one quality setting."""
    return Point(
        codec, f"q={quality}", f"{codec}-q{quality}-pillow{PIL.__version__}", _checked(_Pillow(codec, quality)), {"quality": quality}
    )
