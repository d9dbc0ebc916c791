"""The .pqm bitstream: a small binary header, the range-coded payload and a CRC-32.

Layout (see FORMAT.md):

    magic     3 bytes  b"PQM"
    version   1 byte   2, or 3 when the file carries chunks; 4 and 5 likewise for files whose
                       entropy model computes in integer arithmetic (entropy/exact.py)
    model id  4 bytes  first 4 bytes of the SHA-256 of the model's weights
    width     varint   original image width in pixels (>= 1)
    height    varint   original image height in pixels (>= 1)
    steps     varint   number of coding steps S the payload was coded with
    shift     1 byte   shift of the logit grid the encoder chose (0..3, see entropy/pmf.py)
    codes     4 bytes  CRC-32 of the codes, little-endian: catches a decoder out of step
    chunks    (versions 3 and 5) varint count, then per chunk: 4-byte tag, varint length, data
    payload   bytes    range-coded codes (constriction RangeEncoder words, little-endian,
                       trailing zero bytes dropped)
    crc32     4 bytes  CRC-32 (zlib) of everything before it, little-endian

Invariants: a float64 file without chunks is written as version 2, byte for byte as pqmim 0.2.0
wrote it (so older decoders read it); the version says how the entropy model computes (float64,
versions 2 and 3, the only ones before 0.7.0; integer, versions 4 and 5, which older decoders
refuse by their version); chunks are optional data beside the coded image (colour
profile, metadata, alpha: see pqmim/extras.py), each tag at most once, in the order written. A
tag this version does not know is skipped when its first letter is lowercase (ancillary) and
refused when it is uppercase (critical), as in PNG.

Two chunks describe the payload itself, and live in the Header's own fields:

    SEND  (critical) the payload holds only the first `sent` of the S steps (at least one: the
          first step's codes must be paid for by the payload, so the information budget of
          the decoder still refuses a header that claims an image its payload cannot
          describe, and a few bytes cannot make a decoder generate a huge image); the decoder fills
          in the rest with `fill` (0: expected code words; n >= 1: drawn with seed n - 1). The
          codes CRC covers the filled-in grid, so a decoder that fills in differently refuses
          the file. Older decoders refuse the file (they cannot fill in).
    prog  (ancillary) progressive: for each step sent, the payload bytes from which a decoder
          gets the codes of that step and all before it. A file cut short decodes from its
          longest such prefix (`unpack_partial`); older decoders ignore the table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .entropy.grid import GRID_SHIFTS

MAGIC = b"PQM"
VERSION = 2  # files without chunks
VERSION_CHUNKS = 3  # files with chunks
VERSIONS = {  # (arithmetic, has chunks) -> version byte
    ("float64", False): VERSION,
    ("float64", True): VERSION_CHUNKS,
    ("integer", False): 4,
    ("integer", True): 5,
}
READABLE_VERSIONS = tuple(sorted(VERSIONS.values()))
MODEL_ID_BYTES = 4
MAX_IMAGE_PIXELS = 89_478_485  # like Pillow's default; set pqmim.format.MAX_IMAGE_PIXELS = None to lift it
MAX_STEPS = 64
MAX_CHUNKS = 16
SEND, PROG = b"SEND", b"prog"  # the payload's own chunks: Header.sent / fill and Header.step_bytes
KNOWN_CHUNKS = (b"ICCP", b"EXIF", b"ALPH", SEND, PROG)  # the extras: see pqmim/extras.py
MAX_FILL = 1 << 32  # fill = seed + 1, seeds 0 .. 2**32 - 1


class BitstreamError(ValueError):
    """A .pqm bitstream is malformed, truncated, corrupted or was made by another model."""


@dataclass(frozen=True)
class Header:
    model_id: bytes
    width: int
    height: int
    steps: int
    shift: int = 0  # of the logit grid (entropy/pmf.py)
    codes_crc: int = 0
    chunks: tuple[tuple[bytes, bytes], ...] = ()  # (tag, data) pairs of the extras, in file order
    sent: int | None = None  # SEND: steps in the payload (None: all `steps`)
    fill: int = 0  # SEND: how the codes not sent are filled in (0: expected code words; n: drawn with seed n - 1)
    step_bytes: tuple[int, ...] | None = None  # prog: payload bytes that decode steps <= s
    arithmetic: str = "float64"  # of the entropy model: "integer" (versions 4, 5) or "float64" (2, 3)

    def chunk(self, tag: bytes) -> bytes | None:
        return next((data for t, data in self.chunks if t == tag), None)

    @property
    def steps_sent(self) -> int:
        return self.steps if self.sent is None else self.sent

    def steps_in(self, payload_bytes: int) -> int:
        """How many steps a payload prefix of this many bytes decodes (progressive files)."""
        if self.step_bytes is None:
            return self.steps_sent
        return sum(n <= payload_bytes for n in self.step_bytes)


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
        raise BitstreamError(
            f"image size {width}x{height} exceeds the pixel limit ({limit}); raise pqmim.format.MAX_IMAGE_PIXELS to allow it"
        )


def pack(header: Header, payload: bytes) -> bytes:
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError("model id must be 4 bytes")
    if not 0 <= header.shift < GRID_SHIFTS:
        raise ValueError("grid shift out of range")
    fields = _put_varint(header.width) + _put_varint(header.height) + _put_varint(header.steps)
    all_chunks = _payload_chunks(header, len(payload)) + header.chunks
    chunks = b""
    if all_chunks:
        tags = [t for t, _ in all_chunks]
        if len(tags) > MAX_CHUNKS or len(set(tags)) != len(tags) or any(len(t) != 4 or not t.isascii() or not t.isalpha() for t in tags):
            raise ValueError("chunks: at most 16, distinct tags of 4 ASCII letters")
        chunks = _put_varint(len(tags)) + b"".join(t + _put_varint(len(d)) + d for t, d in all_chunks)
    if (header.arithmetic, False) not in VERSIONS:
        raise ValueError(f"unknown arithmetic {header.arithmetic!r}")
    version = VERSIONS[header.arithmetic, bool(all_chunks)]
    body = (
        MAGIC
        + bytes([version])
        + header.model_id
        + fields
        + bytes([header.shift])
        + header.codes_crc.to_bytes(4, "little")
        + chunks
        + payload
    )
    return body + zlib.crc32(body).to_bytes(4, "little")


def _payload_chunks(header: Header, payload_bytes: int) -> tuple[tuple[bytes, bytes], ...]:
    """The SEND and prog chunks of a header (checked: a bad value is a bug of the caller)."""
    out = []
    if header.sent is not None:
        if not 1 <= header.sent < header.steps or not 0 <= header.fill <= MAX_FILL:
            raise ValueError("SEND: steps sent must be 1 to the model's steps - 1, the fill 0 to 2**32")
        out.append((SEND, _put_varint(header.sent) + _put_varint(header.fill)))
    elif header.fill:
        raise ValueError("a fill needs steps sent")
    if header.step_bytes is not None:
        sb = header.step_bytes
        if len(sb) != header.steps_sent or any(b > a for a, b in zip(sb[1:], sb)) or (sb and sb[-1] > payload_bytes):
            raise ValueError("prog: one nondecreasing payload length per step sent, at most the payload")
        out.append((PROG, b"".join(_put_varint(b - a) for a, b in zip((0, *sb), sb))))
    return tuple(out)


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a bitstream; raises BitstreamError with a message saying what is wrong."""
    header, payload, complete = _unpack(data, partial=False)
    return header, payload


def unpack_partial(data: bytes) -> tuple[Header, bytes, bool]:
    """(header, payload, complete) of a bitstream that may be cut short: a complete file is
    verified as by `unpack`; otherwise the data must hold the whole header (chunks included)
    and a progressive table (prog), and what follows is the start of the payload, unverified
    (a prefix has no checksum: corrupted data decodes to a wrong but valid image). A prefix must
    hold at least the first step, for the reason the SEND chunk sends at least one."""
    return _unpack(data, partial=True)


def _unpack(data: bytes, partial: bool) -> tuple[Header, bytes, bool]:
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
        raise BitstreamError(
            f"unsupported bitstream version {version} (this pqmim reads versions {', '.join(map(str, READABLE_VERSIONS))}: a newer pqmim wrote it?)"
        )
    arithmetic, has_chunks = next(key for key, v in VERSIONS.items() if v == version)
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
    shift = data[pos]
    codes_crc = int.from_bytes(data[pos + 1 : pos + 5], "little")
    pos += 5
    body, crc = data[:-4], int.from_bytes(data[-4:], "little")
    complete = zlib.crc32(body) == crc
    if not complete:
        if not partial:
            raise BitstreamError("checksum mismatch: the file is truncated or corrupted")
        body = data  # a prefix: no checksum at the end, everything after the header is payload
    chunks: tuple[tuple[bytes, bytes], ...] = ()
    if has_chunks:
        chunks, pos = _get_chunks(body, pos)
    check_dimensions(width, height)
    if not 1 <= steps <= MAX_STEPS:
        raise BitstreamError(f"invalid number of coding steps {steps}")
    if shift >= GRID_SHIFTS:
        raise BitstreamError(f"invalid grid shift {shift} (must be below {GRID_SHIFTS})")
    payload = body[pos:]
    found = dict(chunks)
    sent, fill = _get_send(found.pop(SEND), steps) if SEND in found else (None, 0)
    step_bytes = _get_prog(found.pop(PROG), steps if sent is None else sent, len(payload) if complete else None) if PROG in found else None
    if not complete and step_bytes is None:
        raise BitstreamError(
            "checksum mismatch: the file is truncated or corrupted (a file cut short decodes only if it was encoded with --progressive)"
        )
    if not complete and step_bytes and len(payload) < step_bytes[0]:
        raise BitstreamError(
            f"the file is cut short before its first coding step is complete ({step_bytes[0] - len(payload)} more bytes needed)"
        )
    extras = tuple((t, d) for t, d in chunks if t in found)
    return Header(model_id, width, height, steps, shift, codes_crc, extras, sent, fill, step_bytes, arithmetic), payload, complete


def _get_send(data: bytes, steps: int) -> tuple[int, int]:
    sent, pos = _get_varint(data, 0, "steps sent")
    fill, pos = _get_varint(data, pos, "fill")
    if pos != len(data):
        raise BitstreamError("the SEND chunk has trailing data")
    if not 1 <= sent < steps:
        raise BitstreamError(f"the SEND chunk says {sent} steps sent, the file has {steps} (1 to {steps - 1} may be sent)")
    if fill > MAX_FILL:
        raise BitstreamError(f"invalid fill {fill} in the SEND chunk")
    return sent, fill


def _get_prog(data: bytes, sent: int, payload_bytes: int | None) -> tuple[int, ...]:
    out, pos, total = [], 0, 0
    for s in range(sent):
        delta, pos = _get_varint(data, pos, "progressive table")
        total += delta
        out.append(total)
    if pos != len(data):
        raise BitstreamError("the prog chunk has trailing data")
    if payload_bytes is not None and out and out[-1] > payload_bytes:
        raise BitstreamError("the prog chunk points past the end of the payload")
    return tuple(out)


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
