"""The .pqm bitstream: a small binary header, the range-coded payload and a CRC-32.

Layout (see FORMAT.md):

    magic     3 bytes  b"PQM"
    version   1 byte   2, or 3 when the file carries chunks
    model id  4 bytes  first 4 bytes of the SHA-256 of the model's weights
    width     varint   original image width in pixels (>= 1)
    height    varint   original image height in pixels (>= 1)
    steps     varint   number of coding steps S the payload was coded with
    grid      1 byte   shift of the logit grid the encoder chose (0..3, see entropy/pmf.py)
    codes     4 bytes  CRC-32 of the codes, little-endian: catches a decoder out of step
    chunks    (version 3 only) varint count, then per chunk: 4-byte tag, varint length, data
    payload   bytes    range-coded codes (constriction RangeEncoder words, little-endian,
                       trailing zero bytes dropped)
    crc32     4 bytes  CRC-32 (zlib) of everything before it, little-endian

Invariants: a file without chunks is written as version 2, byte for byte as pqmim 0.2.0 wrote
it (so older decoders read it); chunks are optional data beside the coded image (colour
profile, metadata, alpha: see pqmim/extras.py), each tag at most once, in the order written. A
tag this version does not know is skipped when its first letter is lowercase (ancillary) and
refused when it is uppercase (critical), as in PNG.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"PQM"
VERSION = 2  # files without chunks
VERSION_CHUNKS = 3  # files with chunks
READABLE_VERSIONS = (VERSION, VERSION_CHUNKS)
MODEL_ID_BYTES = 4
MAX_IMAGE_PIXELS = 89_478_485  # like Pillow's default; set pqmim.format.MAX_IMAGE_PIXELS = None to lift it
MAX_STEPS = 64
GRID_SHIFTS = 4
MAX_CHUNKS = 16
KNOWN_CHUNKS = (b"ICCP", b"EXIF", b"ALPH")  # see pqmim/extras.py


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
    chunks: tuple[tuple[bytes, bytes], ...] = ()  # (tag, data) pairs, in file order

    def chunk(self, tag: bytes) -> bytes | None:
        return next((data for t, data in self.chunks if t == tag), None)


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
    chunks = b""
    if header.chunks:
        tags = [t for t, _ in header.chunks]
        if len(tags) > MAX_CHUNKS or len(set(tags)) != len(tags) or any(len(t) != 4 or not t.isascii() or not t.isalpha() for t in tags):
            raise ValueError("chunks: at most 16, distinct tags of 4 ASCII letters")
        chunks = _put_varint(len(tags)) + b"".join(t + _put_varint(len(d)) + d for t, d in header.chunks)
    version = VERSION_CHUNKS if header.chunks else VERSION
    body = MAGIC + bytes([version]) + header.model_id + fields + bytes([header.grid]) + header.codes_crc.to_bytes(4, "little") + chunks + payload
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
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported bitstream version {version} (this pqmim reads versions {VERSION} and {VERSION_CHUNKS})")
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
    chunks: tuple[tuple[bytes, bytes], ...] = ()
    if version == VERSION_CHUNKS:
        chunks, pos = _get_chunks(body, pos)
    check_dimensions(width, height)
    if not 1 <= steps <= MAX_STEPS:
        raise BitstreamError(f"invalid number of coding steps {steps}")
    if grid >= GRID_SHIFTS:
        raise BitstreamError(f"invalid grid shift {grid} (must be below {GRID_SHIFTS})")
    return Header(model_id, width, height, steps, grid, codes_crc, chunks), body[pos:]


def _get_chunks(body: bytes, pos: int) -> tuple[tuple[tuple[bytes, bytes], ...], int]:
    """The chunk section of a version-3 body (CRC already checked): known and ancillary chunks."""
    count, pos = _get_varint(body, pos, "chunk count")
    if not 1 <= count <= MAX_CHUNKS:
        raise BitstreamError(f"invalid chunk count {count} (1 to {MAX_CHUNKS})")
    chunks, seen = [], set()
    for _ in range(count):
        tag = body[pos : pos + 4]
        if len(tag) < 4:
            raise BitstreamError("truncated bitstream: header ends inside a chunk tag")
        if not (tag.isascii() and tag.isalpha()):
            raise BitstreamError(f"malformed chunk tag {tag!r}")
        if tag in seen:
            raise BitstreamError(f"chunk {tag.decode()} appears twice")
        seen.add(tag)
        n, pos = _get_varint(body, pos + 4, f"{tag.decode()} chunk length")
        if pos + n > len(body):
            raise BitstreamError(f"truncated bitstream: the {tag.decode()} chunk is cut short")
        if tag in KNOWN_CHUNKS:
            chunks.append((tag, body[pos : pos + n]))
        elif tag[:1].isupper():
            raise BitstreamError(f"this file needs chunk {tag.decode()}, which this pqmim does not know: decode it with a newer release")
        pos += n
    return tuple(chunks), pos


def codes_checksum(codes: np.ndarray) -> int:
    """CRC-32 of a code grid (m, h, w), as little-endian uint16 in C order."""
    return zlib.crc32(np.ascontiguousarray(codes, dtype="<u2").tobytes())
