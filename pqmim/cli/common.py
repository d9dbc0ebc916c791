"""What the commands share: reading inputs, writing outputs atomically, talking to the user,
loading a codec, and working through a batch of files."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

USAGE_ERRORS = (ValueError, OSError)  # BitstreamError, UnsupportedImageError, missing files, ...
LARGE_IMAGE_PIXELS = 4_000_000  # from here on, coding shows a progress bar on a terminal


class CLIError(Exception):
    """An error to report as one line."""


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise CLIError(f"no such file: {path}")
    if p.is_dir():
        raise CLIError(f"{path} is a folder, not a file")
    return p.read_bytes()


def check_output(path: str, force: bool, inputs: list[str]) -> None:
    """CLIError unless `path` may be written: not an input, not there (or --force), not a
    folder, in a folder that exists. The commands check it before coding and `write_output`
    again when it writes."""
    if path == "-":
        return
    dest = Path(path)
    for src in inputs:
        if src != "-" and Path(src).exists() and dest.exists() and dest.resolve() == Path(src).resolve():
            raise CLIError(f"refusing to overwrite the input file {path}")
    if dest.exists() and not force:
        raise CLIError(f"{path} exists (use --force to overwrite)")
    if dest.is_dir():
        raise CLIError(f"{path} is a folder")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise CLIError(f"no such folder: {folder}")


def write_output(path: str, data: bytes, force: bool, inputs: list[str]) -> None:
    """Write atomically (pqmim.fileio: permissions from the umask), or to stdout for -."""
    from ..fileio import atomic_write

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    check_output(path, force, inputs)
    atomic_write(Path(path), data)


def say(msg: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


class Timings:
    """Wall time of the phases of one file, for -v."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.phases.append((phase, time.perf_counter() - t0))

    def __str__(self) -> str:
        return ", ".join(f"{p} {s:.2f} s" for p, s in self.phases)


@contextlib.contextmanager
def coding_bar(args: argparse.Namespace, pixels: int, desc: str) -> Iterator:
    """A progress callback for the entropy coder on a large image (a bar on a terminal), or None."""
    if args.quiet or pixels < LARGE_IMAGE_PIXELS:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=desc, unit="call", leave=False, disable=None, file=sys.stderr) as bar:

        def update(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        yield update


def check_device(device: str) -> str:
    """--device: 'cpu', or 'cuda' ('cuda:N') where torch sees a GPU."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CLIError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: this torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"unsupported device {device!r}: use cpu or cuda")
    return str(dev)


def load_codec(
    model: str | None,
    model_file: str | None,
    data: bytes | None = None,
    quality: int | None = None,
    verbose: bool = False,
    device: str = "cpu",
):
    """The codec for --model/--model-file/--quality; when decoding with none of them, the shipped
    model whose id the file names (so any shipped model's files decode without options)."""
    from ..codec import Codec, codec_for, shipped_codec

    if sum(x is not None for x in (model, model_file, quality)) > 1:
        raise CLIError("choose one of --quality, --model and --model-file")
    t0 = time.perf_counter()
    if model_file:
        codec = Codec.from_file(model_file, device=device)
    elif model or quality is not None:
        from .. import zoo

        try:
            codec = shipped_codec(zoo.model_for_quality(quality) if quality is not None else model, device)
        except ValueError as e:
            raise CLIError(str(e)) from None
    elif data is not None:
        codec = codec_for(data, device)
    else:
        codec = shipped_codec(None, device)
    if verbose:
        transforms = str(codec.transform_dtype).removeprefix("torch.")
        say(f"pqmim: model {codec.name} ready in {time.perf_counter() - t0:.2f} s ({codec.device.type}, {transforms} transforms)")
    return codec


def read_picture_arg(src: str):
    """An image file (or - for stdin) as a pqmim.image.Picture."""
    import io

    from PIL import Image

    from ..image import UnsupportedImageError, read_picture

    if src != "-":
        return read_picture(src)
    try:
        with Image.open(io.BytesIO(read_input("-"))) as im:
            im.load()
            return read_picture(im)
    except (Image.UnidentifiedImageError, OSError) as e:
        raise UnsupportedImageError(f"cannot read stdin as an image: {e}") from None


def is_batch(inputs: list[str]) -> bool:
    return len(inputs) > 1 or Path(inputs[0]).is_dir()


def batch_jobs(inputs: list[str], output: str | None, wanted, suffix: str) -> list[tuple[str, str]]:
    """(input, output) pairs: folders expand to their files that `wanted(path)` accepts (not
    recursively, hidden files skipped); outputs go to the folder `output`, else beside each input."""
    if "-" in inputs or output == "-":
        raise CLIError("a batch reads and writes files: - (stdin/stdout) cannot be part of it")
    files: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".") and wanted(q))
        else:
            files.append(p)  # a missing file is reported when its turn comes
    if output is not None:
        out_dir = Path(output)
        if out_dir.exists() and not out_dir.is_dir():
            raise CLIError(f"with several inputs, -o must be a folder: {output} is a file")
        out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(((Path(output) / f.name) if output is not None else f).with_suffix(suffix))) for f in files]
    seen: dict[str, str] = {}
    for src, dst in jobs:
        if dst in seen:
            raise CLIError(f"{seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
    return jobs


def run_batch(jobs: list[tuple[str, str]], one, verb: str, quiet: bool = False) -> int:
    """Run `one(src, dst)` for every job (a progress bar on a terminal); a failure is reported
    and the batch goes on. With `quiet`, the closing count is printed only if a file failed."""
    from tqdm import tqdm

    failed = 0
    for src, dst in tqdm(jobs, unit="file", leave=False, disable=True if quiet else None, file=sys.stderr):
        try:
            one(src, dst)
        except (CLIError, *USAGE_ERRORS) as e:
            failed += 1
            say(f"pqmim: error: {src}: {e}")
        except Exception as e:  # a bug must not cost the rest of the batch either
            failed += 1
            say(f"pqmim: error: {src}: {type(e).__name__}: {e}")
    if failed or not quiet:
        say(f"{verb} {len(jobs) - failed} of {len(jobs)} files" + (f"; {failed} failed (see above)" if failed else ""))
    return 1 if failed else 0


def is_image(path: Path) -> bool:
    from PIL import Image

    Image.init()
    return path.suffix.lower() in Image.EXTENSION and path.suffix.lower() != ".pqm"


def pil_format_for(path: str) -> str:
    """Pillow's format name for an output file name."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    Image.init()
    if ext not in Image.EXTENSION:
        raise CLIError(f"unknown output image type {ext!r} (use .png, .webp, .jpg, ...)")
    return Image.EXTENSION[ext]


def parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--crop takes X,Y,W,H in pixels, e.g. 256,128,256,256") from None
    return x, y, w, h
