"""The commands: pqmim encode | decode | info | models | compare | serve (each `cmd_*` takes the
parsed arguments; errors are raised as CLIError or a usage error and printed by `main`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    CLIError,
    read_input,
    check_output,
    write_output,
    say,
    Timings,
    coding_bar,
    check_device,
    load_codec,
    read_picture_arg,
    is_batch,
    batch_jobs,
    run_batch,
    is_image,
    pil_format_for,
)


def encode_file(codec, args: argparse.Namespace, src: str, out: str | None) -> None:
    """Encode one image file (or - for stdin) into a .pqm file (or - for stdout); `codec` is
    None when --max-bytes / --max-bpp choose the model per image."""
    from ..format import unpack
    from ..sizing import bytes_for_bpp, compress_to_size

    t = Timings()
    with t("read"):
        pic = read_picture_arg(src)
    h, w = pic.rgb.shape[:2]
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".pqm")))
    check_output(out, args.force, [src])  # before the coding: a refusal costs no time
    with t("encode"):
        if codec is None:
            budget = args.max_bytes if args.max_bytes is not None else bytes_for_bpp(args.max_bpp, w, h)
            data, name = compress_to_size(pic, budget, keep_metadata=args.keep_metadata, device=args.device)
        else:
            with coding_bar(args, w * h, Path(src).name) as progress:
                data = codec.compress(
                    pic,
                    args.keep_metadata,
                    progress,
                    send_steps=args.send_steps,
                    seed=args.seed,
                    progressive=args.progressive,
                    arithmetic="float64" if args.compat else None,
                )
                name = codec.name
    with t("write"):
        write_output(out, data, args.force, [src])
    if not args.quiet and out != "-":
        header, _ = unpack(data)
        steps = "" if header.sent is None else f", {header.sent} of {header.steps} steps sent"
        say(f"{out}: {w}x{h}, {len(data)} bytes, {len(data) * 8 / (w * h):.4f} bpp ({name}{steps})" + (f"; {t}" if args.verbose else ""))


def decode_file(codecs: dict, args: argparse.Namespace, src: str, out: str | None) -> None:
    """Decode one .pqm file (or -); `codecs` caches the models met so far by name."""
    import io

    from .. import zoo
    from ..format import unpack, unpack_partial

    t = Timings()
    with t("read"):
        data = read_input(src)
        header, payload, complete = unpack_partial(data) if args.partial else (*unpack(data), True)
    out = out or ("-" if src == "-" else str(Path(src).with_suffix(".png")))
    check_output(out, args.force, [src])  # before the model and the decoding: a refusal costs no time
    key = args.model_file or args.model or zoo.name_for_id(header.model_id) or header.model_id.hex()
    if key not in codecs:
        codecs[key] = load_codec(args.model, args.model_file, data, verbose=args.verbose, device=args.device)
    codec = codecs[key]
    if args.perceptual:
        try:
            codec.perceptual_decoder()  # before decoding: a model without one fails at once
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(f"{src}: {e}") from None
    with t("decode"):
        with coding_bar(args, header.width * header.height, Path(src).name) as progress:
            image = codec.decompress(data, progress, partial=args.partial, seed=args.seed, perceptual=args.perceptual)
    if not complete and not args.quiet:
        say(
            f"{src}: cut short: {len(data)} bytes hold {header.steps_in(len(payload))} of {header.steps} coding steps; the rest is filled in"
        )
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


def cmd_encode(args: argparse.Namespace) -> int:
    sized = args.max_bytes is not None or args.max_bpp is not None
    if sized and (args.quality is not None or args.model or args.model_file):
        raise CLIError("--max-bytes and --max-bpp choose the model: give them without --quality, --model or --model-file")
    if sized and (args.send_steps is not None or args.seed is not None or args.progressive):
        raise CLIError("--max-bytes and --max-bpp choose the steps sent: give them without --send-steps, --seed or --progressive")
    if sized and args.compat:
        raise CLIError("--compat cannot be combined with --max-bytes or --max-bpp")
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
    jobs = batch_jobs(args.input, args.output, is_image, ".pqm")
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


def cmd_info(args: argparse.Namespace) -> None:
    from .. import zoo
    from ..format import unpack_partial

    data = read_input(args.input)
    header, payload, complete = unpack_partial(data)
    px = header.width * header.height
    print(f"model:   {zoo.describe_id(header.model_id).removeprefix('model ')}")
    print(f"image:   {header.width}x{header.height}")
    print(
        f"format:  version {data[3]} ({header.arithmetic} entropy model{'' if header.arithmetic == 'integer' else ', read by pqmim 0.2.0 and later'})"
    )
    print(
        f"steps:   {header.steps}"
        + (
            ""
            if header.sent is None
            else f", {header.sent} sent, the rest filled in with "
            + ("expected code words" if not header.fill else f"codes drawn with seed {header.fill - 1}")
        )
    )
    if header.step_bytes is not None:
        print("preview: progressive; payload bytes per step " + ", ".join(map(str, header.step_bytes)))
    if not complete:
        print(
            f"cut:     the file is cut short (no checksum at its end): it holds {header.steps_in(len(payload))} of {header.steps_sent} steps (decode --partial)"
        )
    extra = sum(len(d) for _, d in header.chunks)  # the extras (profile, EXIF, alpha); SEND and prog count as header
    print(f"bytes:   {len(data)} (payload {len(payload)}, extras {extra}, header and checksum {len(data) - len(payload) - extra})")
    print(f"bpp:     {len(data) * 8 / px:.4f}")
    names = {b"ICCP": "ICC profile", b"EXIF": "EXIF", b"ALPH": "alpha plane"}
    extras = ", ".join(f"{names[t]} ({len(d)} bytes)" for t, d in header.chunks) or "none"
    print(f"extras:  {extras}")


def cmd_models(args: argparse.Namespace) -> None:
    from .. import zoo

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
        print(
            f"{c['name']:<16} {quality.get(c['name'], '-'):>2} {cfg.get('m', '-'):>3} {cfg.get('k', '-'):>5} {f:>3} {size:>5.1f}  "
            f"{num(kodak, 'bpp', '.4f'):>6} {num(kodak, 'psnr', '.2f'):>6} {num(kodak, 'ms_ssim', '.4f'):>7}  {c.get('description', '')}{default}"
        )
    for c in zoo.perceptual_decoders():
        served = ", ".join(s.get("name", "?") for s in c.get("serves", []))
        print(f"\nperceptual decoder {c['name']} ({c['path'].stat().st_size / 1e6:.1f} MB): decode --perceptual, for {served}")


def cmd_compare(args: argparse.Namespace) -> None:
    """One PNG: the same crop from pqmim and from JPEG, WebP and AVIF at the same file size."""
    import io

    from ..compare import comparison_sheet

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
    print(
        f"wrote {out}"
        + ("  (>: that codec cannot make a file as small as pqmim's; this is its smallest)" if any(r["over_budget"] for r in rows) else "")
    )


def cmd_serve(args: argparse.Namespace) -> None:
    """The local comparison page (pqmim/web): needs the web extra."""
    try:
        from ..web.app import Settings, serve
    except ImportError as e:
        raise CLIError(f'pqmim serve needs the web extra ({e.name} is missing): pip install "pqmim[web]"') from None
    if args.lpips_weights and not Path(args.lpips_weights).is_file():
        raise CLIError(f"no such file: {args.lpips_weights}")
    if args.max_upload_mb <= 0:
        raise CLIError("--max-upload-mb must be positive")
    serve(
        args.host,
        args.port,
        Settings(check_device(args.device), Path(args.lpips_weights) if args.lpips_weights else None, int(args.max_upload_mb * 2**20)),
    )
