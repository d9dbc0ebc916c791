"""Command line: pqmim encode | decode | info | models | train | bench.

Errors print one line on stderr and exit with status 1; nothing partial is ever left behind.
Given a folder or several files, encode and decode work through all of them, report each file
that fails, and exit with status 1 at the end if any did.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

USAGE_ERRORS = (ValueError, OSError)  # BitstreamError, UnsupportedImageError, missing files, ...


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


def write_output(path: str, data: bytes, force: bool, inputs: list[str]) -> None:
    """Write atomically: a temporary file in the destination folder, then rename."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
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
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_codec(model: str | None, model_file: str | None, data: bytes | None = None, quality: int | None = None):
    """The codec for --model/--model-file; when decoding with neither, the shipped model whose id
    the file names (so any shipped model's files decode without options)."""
    from . import zoo
    from .codec import Codec
    from .format import BitstreamError, unpack

    if sum(x is not None for x in (model, model_file, quality)) > 1:
        raise CLIError("choose one of --quality, --model and --model-file")
    if model_file:
        return Codec.from_file(model_file)
    if model or quality is not None:
        try:
            return Codec.from_pretrained(model, quality=quality)
        except ValueError as e:
            raise CLIError(str(e)) from None
    if data is not None:
        header, _ = unpack(data)
        name = zoo.name_for_id(header.model_id)
        if name is None:
            what = zoo.describe_id(header.model_id)
            raise BitstreamError(f"file encoded with {what}" + ("" if zoo.retired(header.model_id) else ", not a shipped one: pass --model-file"))
        return Codec.from_pretrained(name)
    return Codec.from_pretrained()


def encode_file(codec, src: str, out: str | None, force: bool, quiet: bool) -> None:
    """Encode one image file (or - for stdin) into a .pqm file (or - for stdout)."""
    import io

    from PIL import Image

    from .image import load_image

    if src == "-":
        with Image.open(io.BytesIO(read_input("-"))) as im:
            im.load()
            rgb = load_image(im)
    else:
        rgb = load_image(src)
    data = codec.compress(rgb)
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".pqm")))
    write_output(out, data, force, [src])
    if not quiet and out != "-":
        h, w = rgb.shape[:2]
        print(f"{out}: {w}x{h}, {len(data)} bytes, {len(data) * 8 / (w * h):.4f} bpp ({codec.name})", file=sys.stderr)


def decode_file(codecs: dict, args: argparse.Namespace, src: str, out: str | None) -> None:
    """Decode one .pqm file (or -); `codecs` caches the models met so far by name."""
    import io

    data = read_input(src)
    key = args.model_file or args.model or _model_name(data)
    if key not in codecs:
        codecs[key] = load_codec(args.model, args.model_file, data)
    image = codecs[key].decompress(data)
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".png")))
    buf = io.BytesIO()
    try:
        image.save(buf, format="PNG" if out == "-" else pil_format_for(out))
    except (KeyError, ValueError) as e:
        raise CLIError(f"cannot write {out}: {e}") from None
    write_output(out, buf.getvalue(), args.force, [src])


def _model_name(data: bytes) -> str:
    from . import zoo
    from .format import unpack

    header, _ = unpack(data)
    return zoo.name_for_id(header.model_id) or header.model_id.hex()


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


def run_batch(jobs: list[tuple[str, str]], one, verb: str) -> int:
    """Run `one(src, dst)` for every job; a failure is reported and the batch goes on."""
    failed = 0
    for src, dst in jobs:
        try:
            one(src, dst)
        except (CLIError, *USAGE_ERRORS) as e:
            failed += 1
            print(f"pqmim: error: {src}: {e}", file=sys.stderr)
        except Exception as e:  # a bug must not cost the rest of the batch either
            failed += 1
            print(f"pqmim: error: {src}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"{verb} {len(jobs) - failed} of {len(jobs)} files" + (f"; {failed} failed (see above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _is_image(path: Path) -> bool:
    from PIL import Image

    Image.init()
    return path.suffix.lower() in Image.EXTENSION and path.suffix.lower() != ".pqm"


def cmd_encode(args: argparse.Namespace) -> int:
    codec = load_codec(args.model, args.model_file, quality=args.quality)
    if not is_batch(args.input):
        encode_file(codec, args.input[0], args.output, args.force, args.quiet)
        return 0
    jobs = batch_jobs(args.input, args.output, _is_image, ".pqm")
    return run_batch(jobs, lambda src, dst: encode_file(codec, src, dst, args.force, args.quiet), "encoded")


def cmd_decode(args: argparse.Namespace) -> int:
    codecs: dict = {}
    if not is_batch(args.input):
        decode_file(codecs, args, args.input[0], args.output)
        return 0
    jobs = batch_jobs(args.input, args.output, lambda p: p.suffix.lower() == ".pqm", ".png")
    return run_batch(jobs, lambda src, dst: decode_file(codecs, args, src, dst), "decoded")


def pil_format_for(path: str) -> str:
    """Pillow's format name for an output file name."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    Image.init()
    if ext not in Image.EXTENSION:
        raise CLIError(f"unknown output image type {ext!r} (use .png, .webp, .jpg, ...)")
    return Image.EXTENSION[ext]


def cmd_info(args: argparse.Namespace) -> None:
    from . import zoo
    from .format import unpack

    data = read_input(args.input)
    header, payload = unpack(data)
    px = header.width * header.height
    print(f"model:   {zoo.describe_id(header.model_id).removeprefix('model ')}")
    print(f"image:   {header.width}x{header.height}")
    print(f"steps:   {header.steps}")
    print(f"bytes:   {len(data)} (payload {len(payload)}, header and checksum {len(data) - len(payload)})")
    print(f"bpp:     {len(data) * 8 / px:.4f}")


def cmd_models(args: argparse.Namespace) -> None:
    from . import zoo

    cards = zoo.list_models()
    if not cards:
        raise CLIError("no shipped models found (looked in: " + ", ".join(map(str, zoo.model_dirs())) + ")")
    quality = {name: q for q, name in zoo.quality_levels().items()}

    def num(d: dict, key: str, fmt: str) -> str:
        return format(d[key], fmt) if isinstance(d.get(key), (int, float)) else "-"

    print("Kodak: mean over the 24 images, bpp from the real file size.")
    print(f"{'name':<16} {'-q':>2} {'M':>3} {'K':>5} {'f':>3} {'MB':>5}  {'bpp':>6} {'PSNR':>6} {'MS-SSIM':>7}  description")
    for c in cards:
        cfg, kodak = c.get("config", {}), c.get("kodak") or {}
        f = 2 ** len(cfg.get("widths", [])) if cfg else "-"
        size = zoo.model_path(c["name"]).stat().st_size / 1e6
        default = " (default)" if c["name"] == zoo.DEFAULT_MODEL else ""
        print(f"{c['name']:<16} {quality.get(c['name'], '-'):>2} {cfg.get('m', '-'):>3} {cfg.get('k', '-'):>5} {f:>3} {size:>5.1f}  "
              f"{num(kodak, 'bpp', '.4f'):>6} {num(kodak, 'psnr', '.2f'):>6} {num(kodak, 'ms_ssim', '.4f'):>7}  {c.get('description', '')}{default}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="pqmim", description="Learned image compression (PQ-MIM).")
    ap.add_argument("--version", action="version", version=f"pqmim {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-m", "--model", help="shipped model name (see `pqmim models`)")
        p.add_argument("--model-file", help="a .safetensors model file written by `pqmim train`")

    p = sub.add_parser("encode", help="compress an image into a .pqm file")
    p.add_argument("input", nargs="+", help="image file (PNG, JPEG, WebP, ...), - for stdin, or several files and folders (a batch)")
    p.add_argument("-o", "--output", help="output .pqm file, or - for stdout, or the output folder of a batch (default: input name with .pqm)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quality", type=int, help="quality level, 1 = smallest files (see `pqmim models`; default: the default model)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    model_opts(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decompress a .pqm file into an image")
    p.add_argument("input", nargs="+", help=".pqm file, - for stdin, or several files and folders (a batch)")
    p.add_argument("-o", "--output", help="output image (.png, .webp, ...), or - for PNG on stdout, or the output folder of a batch (default: input name with .png)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    model_opts(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="show what a .pqm file holds")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the shipped models with their measured Kodak bpp/PSNR/MS-SSIM")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model (see `pqmim train -h`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("bench", help="the benchmark suite, as `python -m bench` (from a source checkout)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)
    return ap


def run_bench(argv: list[str]) -> int:
    """`pqmim bench ...` runs the checkout's bench/ package (it is not part of the installed wheel)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").is_file():
        print("pqmim: error: the bench suite runs from a source checkout of pqmim (bench/ not found)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .train import main as train_main

        train_main(argv[1:])
        return 0
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("pqmim: interrupted", file=sys.stderr)
        return 130
    except (CLIError, *USAGE_ERRORS) as e:
        msg = str(e) or type(e).__name__
        print(f"pqmim: error: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback for a user's file; say what happened in one line
        print(f"pqmim: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
