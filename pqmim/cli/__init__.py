"""Command line: pqmim encode | decode | info | models | compare | serve | train | bench.

Errors print one line on stderr and exit with status 1; nothing partial is ever left behind.
Given a folder or several files, encode and decode work through all of them, report each file
that fails, and exit with status 1 at the end if any did.

The package: common.py (inputs, outputs, batches), commands.py (one function per command), and
here the parser and `main`.
"""

from __future__ import annotations

import argparse
import sys

from .commands import cmd_compare, cmd_decode, cmd_encode, cmd_info, cmd_models, cmd_serve
from .common import USAGE_ERRORS, CLIError, parse_crop


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    p.add_argument(
        "-o", "--output", help="output .pqm file, or - for stdout, or the output folder of a batch (default: input name with .pqm)"
    )
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quality", type=int, help="quality level, 1 = smallest files (see `pqmim models`; default: the default model)")
    p.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help="the best file of at most N bytes (never over): the quality level and the number of coding steps sent with the highest PSNR",
    )
    p.add_argument("--max-bpp", type=float, metavar="B", help="the same, at most B bits per pixel")
    p.add_argument(
        "--send-steps",
        type=int,
        metavar="S",
        help="send only the first S coding steps (1 to the model's steps, 8); the decoder fills in the rest with the transformer",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="with --send-steps: fill in the codes not sent by drawing them with this seed (default: the code words the transformer expects, the best PSNR)",
    )
    p.add_argument(
        "--progressive",
        action="store_true",
        help="add a table (about a byte per step) with which the start of the file decodes to a preview (decode --partial)",
    )
    p.add_argument("--keep-metadata", action="store_true", help="also store the EXIF block (the ICC profile is always kept)")
    p.add_argument("--compat", action="store_true", help="a file pqmim before 0.7.0 reads too (bitstream version 2/3; slower)")
    talk_opts(p)
    model_opts(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decompress a .pqm file into an image")
    p.add_argument("input", nargs="+", help=".pqm file, - for stdin, or several files and folders (a batch)")
    p.add_argument(
        "-o",
        "--output",
        help="output image (.png, .webp, ...), or - for PNG on stdout, or the output folder of a batch (default: input name with .png)",
    )
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--partial", action="store_true", help="accept a progressive file cut short: decode the steps it holds and fill in the rest"
    )
    p.add_argument(
        "--seed",
        type=int,
        help="with --partial: fill in the codes not received by drawing them with this seed (default: the code words the transformer expects)",
    )
    p.add_argument(
        "--perceptual",
        action="store_true",
        help="decode for realism: the same codes through the perceptual decoder (sharper texture, lower PSNR; q1 to q3: README)",
    )
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
    p.add_argument(
        "--lpips-weights",
        metavar="PATH",
        help="AlexNet backbone weights for LPIPS (a checkout's ../shared/weights/lpips_alexnet_features.pth); without them LPIPS is not shown",
    )
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
    from ..checkout import ROOT as root

    if not (root / "bench" / "__main__.py").is_file():
        print("pqmim: error: the bench suite runs from a source checkout of pqmim (bench/ not found)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from ..train import main as train_main

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
