"""The .pqm bitstream: a small binary header, the range-coded payload and a CRC-32.

Layout (see FORMAT.md):

    magic     3 bytes  b"PQM"
    version   1 byte   1
    model id  4 bytes  first 4 bytes of the SHA-256 of the model's weights
    width     varint   original image width in pixels (>= 1)
    height    varint   original image height in pixels (>= 1)
    steps     varint   number of coding steps S the payload was coded with
    grid      1 byte   shift of the logit grid the encoder chose (0..3, see entropy/pmf.py)
    codes     4 bytes  CRC-32 of the codes, little-endian: catches a decoder out of step
    payload   bytes    range-coded codes (constriction RangeEncoder words, little-endian,
                       trailing zero bytes dropped)
    crc32     4 bytes  CRC-32 (zlib) of everything before it, little-endian
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"PQM"
VERSION = 2
MODEL_ID_BYTES = 4
MAX_IMAGE_PIXELS = 89_478_485  # like Pillow's default; set pqmim.format.MAX_IMAGE_PIXELS = None to lift it
MAX_STEPS = 64
GRID_SHIFTS = 4


class BitstreamError(ValueError):
    """A .pqm bitstream is malformed, truncated, corrupted or was made by another model."""


@dataclass(frozen=True)
class Header:
    model_id: bytes
    width: int
    height: int
    steps: int
    grid: int = 0
    codes_crc: int = 0


def _put_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be >= 0")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _get_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    n = shift = 0
    for i in range(5):  # up to 35 bits: more is never a valid field
        if pos >= len(data):
            raise BitstreamError(f"truncated bitstream: header ends inside the {what} field")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if i and b == 0:
                raise BitstreamError(f"malformed {what} field (overlong varint)")
            return n, pos
        shift += 7
    raise BitstreamError(f"malformed {what} field (varint too long)")


def check_dimensions(width: int, height: int) -> None:
    """Refuse zero or absurd dimensions before anything is allocated."""
    if width < 1 or height < 1:
        raise BitstreamError(f"invalid image size {width}x{height}")
    limit = MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise BitstreamError(f"image size {width}x{height} exceeds the pixel limit ({limit}); raise pqmim.format.MAX_IMAGE_PIXELS to allow it")


def pack(header: Header, payload: bytes) -> bytes:
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError("model id must be 4 bytes")
    if not 0 <= header.grid < GRID_SHIFTS:
        raise ValueError("grid shift out of range")
    fields = _put_varint(header.width) + _put_varint(header.height) + _put_varint(header.steps)
    body = MAGIC + bytes([VERSION]) + header.model_id + fields + bytes([header.grid]) + header.codes_crc.to_bytes(4, "little") + payload
    return body + zlib.crc32(body).to_bytes(4, "little")


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a bitstream; raises BitstreamError with a message saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("bitstream must be bytes")
    data = bytes(data)
    if len(data) == 0:
        raise BitstreamError("empty input: not a pqmim bitstream")
    if not data.startswith(MAGIC[: len(data)]):
        raise BitstreamError("not a pqmim bitstream (bad magic number)")
    if len(data) < len(MAGIC):
        raise BitstreamError("truncated bitstream (shorter than the magic number)")
    if len(data) < len(MAGIC) + 1:
        raise BitstreamError("truncated bitstream: no version byte")
    version = data[3]
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this pqmim reads version {VERSION})")
    pos = 4
    if len(data) < pos + MODEL_ID_BYTES:
        raise BitstreamError("truncated bitstream: header ends inside the model id")
    model_id = data[pos : pos + MODEL_ID_BYTES]
    pos += MODEL_ID_BYTES
    width, pos = _get_varint(data, pos, "width")
    height, pos = _get_varint(data, pos, "height")
    steps, pos = _get_varint(data, pos, "steps")
    if len(data) < pos + 5 + 4:
        raise BitstreamError("truncated bitstream: header ends before the codes checksum")
    grid = data[pos]
    codes_crc = int.from_bytes(data[pos + 1 : pos + 5], "little")
    pos += 5
    body, crc = data[:-4], int.from_bytes(data[-4:], "little")
    if zlib.crc32(body) != crc:
        raise BitstreamError("checksum mismatch: the file is truncated or corrupted")
    check_dimensions(width, height)
    if not 1 <= steps <= MAX_STEPS:
        raise BitstreamError(f"invalid number of coding steps {steps}")
    if grid >= GRID_SHIFTS:
        raise BitstreamError(f"invalid grid shift {grid} (must be below {GRID_SHIFTS})")
    return Header(model_id, width, height, steps, grid, codes_crc), body[pos:]


def codes_checksum(codes: np.ndarray) -> int:
    """CRC-32 of a code grid (m, h, w), as little-endian uint16 in C order."""
    return zlib.crc32(np.ascontiguousarray(codes, dtype="<u2").tobytes())
