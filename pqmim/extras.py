"""What a .pqm file carries beside the coded RGB image: colour profile, EXIF, alpha.

Each is one optional chunk of the bitstream (pqmim/format.py, FORMAT.md):

    ICCP  the ICC colour profile, zlib-deflated (restored by default: colours stay right)
    EXIF  the EXIF block as Pillow gives it (orientation already applied), zlib-deflated
    ALPH  the alpha plane, lossless: 1 byte filter (0 = none, 1 = each byte minus its left
          neighbour, 2 = minus the one above, mod 256), then the zlib-deflated H*W bytes in
          raster order; the encoder keeps whichever filter deflates smallest

Invariants: alpha round-trips exactly; a chunk never inflates past its limit (the alpha plane
exactly H*W bytes, a profile or EXIF block at most MAX_METADATA_BYTES), so a hostile file
cannot exhaust memory; anything malformed raises BitstreamError.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .format import BitstreamError

MAX_METADATA_BYTES = 16 << 20  # an ICC profile or EXIF block, inflated
ALPHA_FILTERS = (0, 1, 2)  # none, left difference, up difference


@dataclass(frozen=True)
class Extras:
    icc: bytes | None = None  # ICC profile of the RGB data
    exif: bytes | None = None  # EXIF block
    alpha: np.ndarray | None = None  # HxW uint8; None when the image is opaque

    def to_chunks(self) -> tuple[tuple[bytes, bytes], ...]:
        chunks = []
        if self.icc:
            chunks.append((b"ICCP", zlib.compress(self.icc, 9)))
        if self.exif:
            chunks.append((b"EXIF", zlib.compress(self.exif, 9)))
        if self.alpha is not None:
            chunks.append((b"ALPH", _pack_alpha(self.alpha)))
        return tuple(chunks)

    @classmethod
    def from_chunks(cls, chunks: tuple[tuple[bytes, bytes], ...], width: int, height: int, alpha: bool = True) -> "Extras":
        """Parse the chunks of a file of width x height (the alpha plane only if `alpha`)."""
        found = dict(chunks)
        icc = _inflate(found[b"ICCP"], MAX_METADATA_BYTES, "ICC profile") if b"ICCP" in found else None
        exif = _inflate(found[b"EXIF"], MAX_METADATA_BYTES, "EXIF") if b"EXIF" in found else None
        plane = _unpack_alpha(found[b"ALPH"], width, height) if alpha and b"ALPH" in found else None
        return cls(icc, exif, plane)


def _inflate(data: bytes, limit: int, what: str, exact: bool = False) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
        if d.unconsumed_tail:
            raise BitstreamError(f"the {what} chunk inflates past {limit} bytes")
        out += d.flush()
    except zlib.error as e:
        raise BitstreamError(f"the {what} chunk is corrupted: {e}") from None
    if not d.eof or d.unused_data:
        raise BitstreamError(f"the {what} chunk is truncated or has trailing data")
    if exact and len(out) != limit:
        raise BitstreamError(f"the {what} chunk holds {len(out)} bytes, the image needs {limit}")
    return out


def _pack_alpha(alpha: np.ndarray) -> bytes:
    """The smallest of the deflated plane and its left and up differences, with its filter byte."""
    a = np.ascontiguousarray(alpha, dtype=np.uint8)
    left, up = a.copy(), a.copy()
    left[:, 1:] -= a[:, :-1]  # uint8 arithmetic wraps mod 256
    up[1:] -= a[:-1]
    packed = [bytes([f]) + zlib.compress(p.tobytes(), 9) for f, p in enumerate((a, left, up))]
    return min(packed, key=len)


def _unpack_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    if not data or data[0] not in ALPHA_FILTERS:
        raise BitstreamError("the alpha chunk has an unknown filter")
    plane = np.frombuffer(_inflate(data[1:], width * height, "alpha", exact=True), dtype=np.uint8).reshape(height, width)
    if data[0] in (1, 2):
        plane = np.cumsum(plane, axis=2 - data[0], dtype=np.uint8)  # undoes the difference, mod 256
    return np.ascontiguousarray(plane)
