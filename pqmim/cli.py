"""Command line: pqmim encode | decode | info | models | compare | serve | train | bench.

Errors print one line on stderr and exit with status 1; nothing partial is ever left behind.
Given a folder or several files, encode and decode work through all of them, report each file
that fails, and exit with status 1 at the end if any did.
"""

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


def write_output(path: str, data: bytes, force: bool, inputs: list[str]) -> None:
    """Write atomically (pqmim.fileio: permissions from the umask), or to stdout for -."""
    from .fileio import atomic_write

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
    atomic_write(dest, data)


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


def load_codec(model: str | None, model_file: str | None, data: bytes | None = None, quality: int | None = None, verbose: bool = False, device: str = "cpu"):
    """The codec for --model/--model-file/--quality; when decoding with none of them, the shipped
    model whose id the file names (so any shipped model's files decode without options)."""
    from .codec import Codec, codec_for, shipped_codec

    if sum(x is not None for x in (model, model_file, quality)) > 1:
        raise CLIError("choose one of --quality, --model and --model-file")
    t0 = time.perf_counter()
    if model_file:
        codec = Codec.from_file(model_file, device=device)
    elif model or quality is not None:
        from . import zoo

        try:
            codec = shipped_codec(zoo.model_for_quality(quality) if quality is not None else model, device)
        except ValueError as e:
            raise CLIError(str(e)) from None
    elif data is not None:
        codec = codec_for(data, device)
    else:
        codec = shipped_codec(None, device)
    if verbose:
        say(f"pqmim: model {codec.name} ready in {time.perf_counter() - t0:.2f} s")
    return codec


def read_picture_arg(src: str):
    """An image file (or - for stdin) as a pqmim.image.Picture."""
    import io

    from PIL import Image

    from .image import UnsupportedImageError, read_picture

    if src != "-":
        return read_picture(src)
    try:
        with Image.open(io.BytesIO(read_input("-"))) as im:
            im.load()
            return read_picture(im)
    except (Image.UnidentifiedImageError, OSError) as e:
        raise UnsupportedImageError(f"cannot read stdin as an image: {e}") from None


def encode_file(codec, args: argparse.Namespace, src: str, out: str | None) -> None:
    """Encode one image file (or - for stdin) into a .pqm file (or - for stdout); `codec` is
    None when --max-bytes / --max-bpp choose the model per image."""
    from .format import unpack
    from .sizing import bytes_for_bpp, compress_to_size

    t = Timings()
    with t("read"):
        pic = read_picture_arg(src)
    h, w = pic.rgb.shape[:2]
    with t("encode"):
        if codec is None:
            budget = args.max_bytes if args.max_bytes is not None else bytes_for_bpp(args.max_bpp, w, h)
            data, name = compress_to_size(pic, budget, args.keep_metadata, args.device)
        else:
            with coding_bar(args, w * h, Path(src).name) as progress:
                data = codec.compress(pic, args.keep_metadata, progress, send_steps=args.send_steps, seed=args.seed, progressive=args.progressive)
                name = codec.name
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".pqm")))
    with t("write"):
        write_output(out, data, args.force, [src])
    if not args.quiet and out != "-":
        header, _ = unpack(data)
        steps = "" if header.sent is None else f", {header.sent} of {header.steps} steps sent"
        say(f"{out}: {w}x{h}, {len(data)} bytes, {len(data) * 8 / (w * h):.4f} bpp ({name}{steps})" + (f"; {t}" if args.verbose else ""))


def decode_file(codecs: dict, args: argparse.Namespace, src: str, out: str | None) -> None:
    """Decode one .pqm file (or -); `codecs` caches the models met so far by name."""
    import io

    from . import zoo
    from .format import unpack, unpack_partial

    t = Timings()
    with t("read"):
        data = read_input(src)
        header, payload, complete = unpack_partial(data) if args.partial else (*unpack(data), True)
    key = args.model_file or args.model or zoo.name_for_id(header.model_id) or header.model_id.hex()
    if key not in codecs:
        codecs[key] = load_codec(args.model, args.model_file, data, verbose=args.verbose, device=args.device)
    codec = codecs[key]
    with t("decode"):
        with coding_bar(args, header.width * header.height, Path(src).name) as progress:
            image = codec.decompress(data, progress, partial=args.partial, seed=args.seed)
    if not complete and not args.quiet:
        say(f"{src}: cut short: {len(data)} bytes hold {header.steps_in(len(payload))} of {header.steps} coding steps; the rest is filled in")
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".png")))
    buf = io.BytesIO()
    keep = {k: image.info[k] for k in ("icc_profile", "exif") if image.info.get(k)}
    with t("write"):
        try:
            image.save(buf, format="PNG" if out == "-" else pil_format_for(out), **keep)
        except (KeyError, ValueError, OSError) as e:
            raise CLIError(f"cannot write {out}: {e}") from None
        write_output(out, buf.getvalue(), args.force, [src])
    if args.verbose and out != "-":
        say(f"{out}: {image.width}x{image.height} {image.mode} ({codec.name}); {t}")


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


def _is_image(path: Path) -> bool:
    from PIL import Image

    Image.init()
    return path.suffix.lower() in Image.EXTENSION and path.suffix.lower() != ".pqm"


def cmd_encode(args: argparse.Namespace) -> int:
    sized = args.max_bytes is not None or args.max_bpp is not None
    if sized and (args.quality is not None or args.model or args.model_file):
        raise CLIError("--max-bytes and --max-bpp choose the model: give them without --quality, --model or --model-file")
    if sized and (args.send_steps is not None or args.seed is not None or args.progressive):
        raise CLIError("--max-bytes and --max-bpp choose the steps sent: give them without --send-steps, --seed or --progressive")
    if args.seed is not None and args.send_steps is None:
        raise CLIError("--seed fills in the steps not sent: give it with --send-steps")
    if args.max_bytes is not None and args.max_bpp is not None:
        raise CLIError("choose one of --max-bytes and --max-bpp")
    if (args.max_bytes is not None and args.max_bytes < 1) or (args.max_bpp is not None and not args.max_bpp > 0):
        raise CLIError("the size budget must be positive")
    args.device = check_device(args.device)
    codec = None if sized else load_codec(args.model, args.model_file, quality=args.quality, verbose=args.verbose, device=args.device)
    if not is_batch(args.input):
        encode_file(codec, args, args.input[0], args.output)
        return 0
    jobs = batch_jobs(args.input, args.output, _is_image, ".pqm")
    return run_batch(jobs, lambda src, dst: encode_file(codec, args, src, dst), "encoded", args.quiet)


def cmd_decode(args: argparse.Namespace) -> int:
    args.device = check_device(args.device)
    if args.seed is not None and not args.partial:
        raise CLIError("--seed fills in the codes of a file cut short: give it with --partial")
    codecs: dict = {}
    if not is_batch(args.input):
        decode_file(codecs, args, args.input[0], args.output)
        return 0
    jobs = batch_jobs(args.input, args.output, lambda p: p.suffix.lower() == ".pqm", ".png")
    return run_batch(jobs, lambda src, dst: decode_file(codecs, args, src, dst), "decoded", args.quiet)


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
    from .format import unpack_partial

    data = read_input(args.input)
    header, payload, complete = unpack_partial(data)
    px = header.width * header.height
    print(f"model:   {zoo.describe_id(header.model_id).removeprefix('model ')}")
    print(f"image:   {header.width}x{header.height}")
    print(f"steps:   {header.steps}" + ("" if header.sent is None else f", {header.sent} sent, the rest filled in with " + ("expected code words" if not header.fill else f"codes drawn with seed {header.fill - 1}")))
    if header.step_bytes is not None:
        print("preview: progressive; payload bytes per step " + ", ".join(map(str, header.step_bytes)))
    if not complete:
        print(f"cut:     the file is cut short (no checksum at its end): it holds {header.steps_in(len(payload))} of {header.steps_sent} steps (decode --partial)")
    extra = sum(len(d) for _, d in header.chunks)  # the extras (profile, EXIF, alpha); SEND and prog count as header
    print(f"bytes:   {len(data)} (payload {len(payload)}, extras {extra}, header and checksum {len(data) - len(payload) - extra})")
    print(f"bpp:     {len(data) * 8 / px:.4f}")
    names = {b"ICCP": "ICC profile", b"EXIF": "EXIF", b"ALPH": "alpha plane"}
    extras = ", ".join(f"{names[t]} ({len(d)} bytes)" for t, d in header.chunks) or "none"
    print(f"extras:  {extras}")


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


def parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--crop takes X,Y,W,H in pixels, e.g. 256,128,256,256") from None
    return x, y, w, h


def cmd_compare(args: argparse.Namespace) -> None:
    """One PNG: the same crop from pqmim and from JPEG, WebP and AVIF at the same file size."""
    import io

    from .compare import comparison_sheet

    codec = load_codec(args.model, args.model_file, quality=args.quality, device=check_device(args.device))
    out = args.output or str(Path(args.input).with_name(Path(args.input).stem + "_compare.png"))
    sheet, rows = comparison_sheet(read_picture_arg(args.input), codec, crop=args.crop, size=args.size)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_output(out, buf.getvalue(), args.force, [args.input])
    print(f"{'codec':<12} {'setting':<10} {'bytes':>7} {'bpp':>7} {'PSNR':>6}")
    for r in rows:
        if r["skipped"]:
            print(f"{r['label']:<12} {r['skipped']}")
        else:
            size = f"{'>' if r['over_budget'] else ''}{r['bytes']}"
            print(f"{r['label']:<12} {r['setting']:<10} {size:>7} {r['bpp']:>7.4f} {r['psnr']:>6.2f}")
    print(f"wrote {out}" + ("  (>: that codec cannot make a file as small as pqmim's; this is its smallest)" if any(r["over_budget"] for r in rows) else ""))


def cmd_serve(args: argparse.Namespace) -> None:
    """The local comparison page (pqmim/web): needs the web extra."""
    try:
        from .web.app import Settings, serve
    except ImportError as e:
        raise CLIError(f"pqmim serve needs the web extra ({e.name} is missing): pip install \"pqmim[web]\"") from None
    if args.lpips_weights and not Path(args.lpips_weights).is_file():
        raise CLIError(f"no such file: {args.lpips_weights}")
    if args.max_upload_mb <= 0:
        raise CLIError("--max-upload-mb must be positive")
    serve(args.host, args.port, Settings(check_device(args.device), Path(args.lpips_weights) if args.lpips_weights else None,
                                         int(args.max_upload_mb * 2**20)))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="pqmim", description="Learned image compression (PQ-MIM).")
    ap.add_argument("--version", action="version", version=f"pqmim {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-m", "--model", help="shipped model name (see `pqmim models`)")
        p.add_argument("--model-file", help="a .safetensors model file written by `pqmim train`")
        p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the networks run; files are the same either way")

    def talk_opts(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--quiet", action="store_true", help="print nothing on success")
        g.add_argument("-v", "--verbose", action="store_true", help="also print what each file took (seconds per phase)")

    p = sub.add_parser("encode", help="compress an image into a .pqm file")
    p.add_argument("input", nargs="+", help="image file (PNG, JPEG, WebP, ...), - for stdin, or several files and folders (a batch)")
    p.add_argument("-o", "--output", help="output .pqm file, or - for stdout, or the output folder of a batch (default: input name with .pqm)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quality", type=int, help="quality level, 1 = smallest files (see `pqmim models`; default: the default model)")
    p.add_argument("--max-bytes", type=int, metavar="N", help="the best file of at most N bytes (never over): the quality level and the number of coding steps sent with the highest PSNR")
    p.add_argument("--max-bpp", type=float, metavar="B", help="the same, at most B bits per pixel")
    p.add_argument("--send-steps", type=int, metavar="S", help="send only the first S coding steps (1 to the model's steps, 8); the decoder fills in the rest with the transformer")
    p.add_argument("--seed", type=int, help="with --send-steps: fill in the codes not sent by drawing them with this seed (default: the code words the transformer expects, the best PSNR)")
    p.add_argument("--progressive", action="store_true", help="add a table (about a byte per step) with which the start of the file decodes to a preview (decode --partial)")
    p.add_argument("--keep-metadata", action="store_true", help="also store the EXIF block (the ICC profile is always kept)")
    talk_opts(p)
    model_opts(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decompress a .pqm file into an image")
    p.add_argument("input", nargs="+", help=".pqm file, - for stdin, or several files and folders (a batch)")
    p.add_argument("-o", "--output", help="output image (.png, .webp, ...), or - for PNG on stdout, or the output folder of a batch (default: input name with .png)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--partial", action="store_true", help="accept a progressive file cut short: decode the steps it holds and fill in the rest")
    p.add_argument("--seed", type=int, help="with --partial: fill in the codes not received by drawing them with this seed (default: the code words the transformer expects)")
    talk_opts(p)
    model_opts(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="show what a .pqm file holds")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the shipped models with their measured Kodak bpp/PSNR/MS-SSIM")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("compare", help="one PNG with the same crop from pqmim, JPEG, WebP and AVIF at the same file size")
    p.add_argument("input", help="an image file, or - for stdin")
    p.add_argument("-o", "--output", help="the PNG to write (default: <input name>_compare.png beside the input)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quality", type=int, help="the pqmim quality level to compare (default: the default model)")
    p.add_argument("--crop", type=parse_crop, metavar="X,Y,W,H", help="the region shown (default: a centred square)")
    p.add_argument("--size", type=int, default=256, help="side of the default centred square, in pixels (default 256)")
    model_opts(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("serve", help="a local web page: your image through pqmim beside JPEG, WebP or AVIF at the same size")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--lpips-weights", metavar="PATH", help="AlexNet backbone weights for LPIPS (a checkout's ../shared/weights/lpips_alexnet_features.pth); without them LPIPS is not shown")
    p.add_argument("--max-upload-mb", type=float, default=50, help="largest upload accepted, in MiB (default 50)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the networks run")
    p.set_defaults(func=cmd_serve)

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
