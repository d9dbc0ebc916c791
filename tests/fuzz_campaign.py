"""A long fuzz campaign against the .pqm decoder: `python tests/fuzz_campaign.py --minutes 30`.

A mutation loop (no coverage guidance; the format is small enough to reach every check by
hand-picked mutations): seeds are real files made by shipped models from crops of the shipped
photo, examples/kodim23.png; each input is a seed mutated (bit flips, byte overwrites,
truncation, insertion, deletion, splices, trailing garbage, header fields rewritten with edge
values, the SEND and prog chunks rewritten) and, half of the time, given a correct CRC so the
mutation reaches the range decoder and the codes checksum. Seeds include files that send only
some steps and progressive files; a third of the inputs are decoded with partial=True (a file
cut short is then decoded from its prefix, without checksums).

Every input is decoded in a worker process. Allowed outcomes: `pqmim.BitstreamError`, or an
image of the size the header gives. Anything else is a crash and is saved: another exception,
the worker dying, a decode over --timeout seconds, or the worker's memory over --max-rss-mb.
Prints and writes (to --out) the counts of inputs and outcomes; exits 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "kodim23.png"  # the photo the repository ships
EDGE_INTS = [0, 1, 2, 7, 15, 16, 17, 127, 128, 255, 256, 4095, 4096, 65535, 65536, 2**20, 2**28 - 1, 2**31, 2**35 - 1]


def make_seeds(models: list[str], sizes: list[tuple[int, int]]) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from pqmim import Codec

    with Image.open(PHOTO) as im:
        photo = np.asarray(im.convert("RGB"))
    # its 8 flips and transposes, for seeds that do not all look alike
    variants = [np.flip(v, axis) if axis is not None else v for v in (photo, photo.transpose(1, 0, 2)) for axis in (None, 0, 1, (0, 1))]
    seeds = []
    rng = np.random.default_rng(0)
    for name in models:
        codec = Codec.from_pretrained(name)
        for i, (w, h) in enumerate(sizes):
            rgb = variants[i % len(variants)]
            y, x = int(rng.integers(0, rgb.shape[0] - h + 1)), int(rng.integers(0, rgb.shape[1] - w + 1))
            crop = rgb[y : y + h, x : x + w]
            seeds.append(codec.compress(crop))
            seeds.append(codec.compress(crop, progressive=True))
            seeds.append(
                codec.compress(crop, send_steps=int(rng.integers(1, codec.cfg.steps)), seed=None if i % 2 else i, progressive=bool(i % 3))
            )
    return seeds


def rewrite_field(data: bytes, rnd: random.Random) -> bytes:
    """Replace one header field of a valid file with an edge value."""
    from pqmim.format import _put_varint as varint

    pos, fields = 8, []
    for _ in range(3):
        start = pos
        while data[pos] & 0x80:
            pos += 1
        pos += 1
        fields.append((start, pos))
    end = pos  # just after the varint fields (width, height, steps)
    which = rnd.choice(["version", "model", "width", "height", "steps", "shift", "codes", "dims", "chunk"])
    if which == "chunk":  # the first varint after a SEND or prog tag and its length
        tag = rnd.choice([b"SEND", b"prog"])
        at = data.find(tag, end)
        if at < 0:
            return data
        at += 5  # tag and a one-byte length
        nxt = at
        while nxt < len(data) and data[nxt] & 0x80:
            nxt += 1
        return data[:at] + varint(rnd.choice(EDGE_INTS)) + data[nxt + 1 :]
    if which == "version":
        return data[:3] + bytes([rnd.choice([0, 1, 3, 255])]) + data[4:]
    if which == "model":
        return data[:4] + rnd.randbytes(4) + data[8:]
    if which in ("width", "height", "steps"):
        a, b = fields[["width", "height", "steps"].index(which)]
        return data[:a] + varint(rnd.choice(EDGE_INTS)) + data[b:]
    if which == "dims":  # a plausible but larger (or smaller) image: the payload no longer fits
        w, h = rnd.choice(EDGE_INTS[1:12]) * rnd.choice([1, 8, 64]), rnd.choice(EDGE_INTS[1:12]) * rnd.choice([1, 8, 64])
        return data[:8] + varint(w) + varint(h) + data[fields[2][0] :]
    if which == "shift":
        return data[:end] + bytes([rnd.choice([1, 2, 3, 4, 255])]) + data[end + 1 :]
    return data[: end + 1] + rnd.randbytes(4) + data[end + 5 :]


def mutate(seeds: list[bytes], rnd: random.Random) -> bytes:
    data = bytearray(rnd.choice(seeds))
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        op = rnd.randrange(8)
        n = len(data)
        if op == 0 and n:  # bit flips
            for _ in range(rnd.randint(1, 8)):
                data[rnd.randrange(n)] ^= 1 << rnd.randrange(8)
        elif op == 1 and n:  # overwrite bytes
            i = rnd.randrange(n)
            data[i : i + rnd.randint(1, 4)] = rnd.randbytes(rnd.randint(1, 4))
        elif op == 2:  # truncate
            del data[rnd.randint(0, n) :]
        elif op == 3:  # insert
            i = rnd.randint(0, n)
            data[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 4 and n:  # delete a range
            i = rnd.randrange(n)
            del data[i : i + rnd.randint(1, 16)]
        elif op == 5:  # trailing garbage
            data += rnd.randbytes(rnd.randint(1, 64))
        elif op == 6:  # splice with another seed
            other = rnd.choice(seeds)
            data = data[: rnd.randint(0, n)] + other[rnd.randint(0, len(other)) :]
        elif op == 7 and n > 20:
            try:
                data = bytearray(rewrite_field(bytes(data), rnd))
            except IndexError:  # the header was already broken by an earlier mutation
                pass
    if rnd.random() < 0.5 and len(data) >= 4:  # crafted: a correct CRC, so the decoder goes deeper
        body = bytes(data[:-4])
        data = bytearray(body + zlib.crc32(body).to_bytes(4, "little"))
    return bytes(data)


def _vm_size_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(conn, models: list[str], max_pixels: int, max_mb: float) -> None:
    import resource

    import torch

    import pqmim.format as fmt
    from pqmim import BitstreamError, Codec

    torch.set_num_threads(1)
    fmt.MAX_IMAGE_PIXELS = max_pixels
    codecs = {name: Codec.from_pretrained(name) for name in models}
    by_id = {c.model_id: c for c in codecs.values()}
    default = codecs[models[0]]
    # a hard bound: an allocation beyond max_mb more than the loaded worker fails (a crash)
    limit = int((_vm_size_mb() + max_mb) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        data, partial = job
        t0 = time.perf_counter()
        try:
            header = fmt.unpack_partial(data)[0] if partial else fmt.unpack(data)[0]
            image = by_id.get(header.model_id, default).decompress(data, partial=partial)
            ok = image.size == (header.width, header.height)
            outcome = "decoded" if ok else f"crash: decoded size {image.size} != header {header.width}x{header.height}"
        except BitstreamError as e:
            outcome = "rejected: " + _kind(str(e))
        except BaseException as e:  # noqa: BLE001 - anything else is what we are looking for
            outcome = f"crash: {type(e).__name__}: {e}"
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send((outcome, time.perf_counter() - t0, rss_mb))


def _kind(message: str) -> str:
    """A short class for a rejection message (numbers stripped), for the summary."""
    head = message.split(":")[0].split(" (")[0].split(" b'")[0].split(' b"')[0]  # no chunk tags either
    return "".join(c for c in head if not c.isdigit()).strip()[:60]


class Worker:
    def __init__(self, models: list[str], max_pixels: int, max_mb: float) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, models, max_pixels, max_mb), daemon=True)
        self.proc.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def run(self, data: bytes, partial: bool, timeout: float):
        self.conn.send((data, partial))
        if not self.conn.poll(timeout):
            return None
        try:
            return self.conn.recv()
        except EOFError:
            return ("crash: worker died", 0.0, 0.0)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--models", default="pqmim-q3,pqmim-q1", help="shipped models whose files seed the campaign")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one decode may take")
    ap.add_argument("--max-rss-mb", type=float, default=3000.0, help="memory one worker may reach (and allocate beyond its loaded size)")
    ap.add_argument("--max-pixels", type=int, default=89_478_485, help="pqmim.format.MAX_IMAGE_PIXELS in the worker")
    ap.add_argument("--out", default=str(ROOT / "runs" / "fuzz"), help="folder for the summary and crashing inputs")
    args = ap.parse_args(argv)

    out = Path(args.out)
    (out / "crashes").mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    sizes = [(64, 64), (1, 1), (17, 33), (130, 70), (256, 160), (48, 300)]
    seeds = make_seeds(models, sizes)
    rnd = random.Random(args.seed)
    w = Worker(models, args.max_pixels, args.max_rss_mb)
    counts: Counter[str] = Counter()
    crashes, slowest, peak_rss, n = 0, 0.0, 0.0, 0
    t_end = time.monotonic() + args.minutes * 60
    t_report = time.monotonic()
    while time.monotonic() < t_end:
        data = seeds[n % len(seeds)] if n < len(seeds) else mutate(seeds, rnd)  # the seeds themselves first
        n += 1
        res = w.run(data, n % 3 == 0, args.timeout)
        if res is None:
            outcome, secs, rss = f"crash: no answer within {args.timeout:.0f} s", args.timeout, 0.0
        else:
            outcome, secs, rss = res
        if rss > args.max_rss_mb:
            outcome = f"crash: worker memory {rss:.0f} MB over {args.max_rss_mb:.0f} MB"
        slowest, peak_rss = max(slowest, secs), max(peak_rss, rss)
        counts["crash" if outcome.startswith("crash") else outcome] += 1
        if outcome.startswith("crash"):
            crashes += 1
            (out / "crashes" / f"{n:08d}.pqm").write_bytes(data)
            print(f"[{n}] {outcome}", file=sys.stderr)
        if res is None or outcome.startswith("crash") or rss > args.max_rss_mb:
            w.kill()
            w = Worker(models, args.max_pixels, args.max_rss_mb)
        if time.monotonic() - t_report > 60:
            t_report = time.monotonic()
            print(
                f"{n} inputs, {crashes} crashes, slowest decode {slowest:.2f} s, worker peak {peak_rss:.0f} MB", file=sys.stderr, flush=True
            )
    w.conn.send(None)
    summary = {
        "minutes": args.minutes,
        "inputs": n,
        "crashes": crashes,
        "outcomes": dict(counts.most_common()),
        "slowest_decode_s": round(slowest, 3),
        "worker_peak_rss_mb": round(peak_rss, 1),
        "models": models,
        "seed_files": len(seeds),
        "max_pixels": args.max_pixels,
        "cpu": os.cpu_count(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
