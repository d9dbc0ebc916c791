"""The pictures, plots and README section of `python -m bench progressive` (measured in
bench/progressive.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pqmim import Codec
from pqmim import format as fmt
from pqmim.classical import LABELS
from pqmim.compare import tile_sheet
from pqmim.evaluate import psnr_uint8
from pqmim.image import load_image
from pqmim.sizing import best_within

from . import report


# ----------------------------------------------------------------------------- pictures
def shrink(rgb: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // k, rgb.shape[0] // k), Image.LANCZOS))


def stacked(sheets: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets) + 6 * (len(sheets) - 1)), "white")
    y = 0
    for s in sheets:
        out.paste(s, (0, y))
        y += s.height + 6
    return out


def progressive_picture(image: Path, name: str, out: Path, k: int = 3) -> None:
    """A progressive file of `image` decoded from the prefix that holds s steps, s = 1..S: filled
    in with expected code words (top) and with codes drawn with seed 0 (bottom)."""
    codec = Codec.from_pretrained(name)
    rgb = load_image(image)
    data = codec.compress(rgb, progressive=True)
    header, payload = fmt.unpack(data)
    head = len(data) - len(payload) - 4
    rows = []
    for seed in (None, 0):
        tiles = [(shrink(rgb, k), f"original\n{len(data)} B file ({name})")]
        for s in range(1, codec.cfg.steps + 1):
            n = head + header.step_bytes[s - 1]
            dec = np.asarray(codec.decompress(data[:n], partial=True, seed=seed).convert("RGB"))
            fill = "expected" if seed is None else "drawn, seed 0"
            tiles.append((shrink(dec, k), f"first {n} B: {s} of {codec.cfg.steps} steps\n{fill}\nPSNR {psnr_uint8(rgb, dec):.2f} dB"))
        rows.append(tile_sheet(tiles))
    stacked(rows).save(out)


def tiny_picture(image: Path, budgets: tuple[int, ...], out: Path, k: int = 2) -> list[dict]:
    """pqmim (--max-bytes) and JPEG, WebP, AVIF at their best within each budget, whole image."""
    from .progressive import classical_in  # the measurement (a module-level import would be circular)

    rgb = load_image(image)
    sheets, rows = [], []
    for n in budgets:
        best = best_within(rgb, n)
        codec = Codec.from_pretrained(best.name)
        dec = np.asarray(codec.decompress(best.data))
        tiles = [
            (shrink(rgb, k), f"original {rgb.shape[1]}x{rgb.shape[0]}\nbudget {n} bytes"),
            (
                shrink(dec, k),
                f"pqmim {best.name.removeprefix('pqmim-')}, {best.sent} of {codec.cfg.steps} steps\n{len(best.data)} B\nPSNR {psnr_uint8(rgb, dec):.2f} dB",
            ),
        ]
        rows.append(
            {"budget": n, "codec": "pqmim", "model": best.name, "sent": best.sent, "bytes": len(best.data), "psnr": psnr_uint8(rgb, dec)}
        )
        for c in ("jpeg420", "webp", "avif"):
            r = classical_in(c, rgb, n)
            im = r.pop("image")
            rows.append({"budget": n, **r})
            if im is None:
                tiles.append((None, f"{LABELS[c]}: cannot\nits smallest file is\n{r['smallest']} B"))
            else:
                size = "full size" if r["scale"] == 1 else f"at 1/{r['scale']} size, enlarged"
                tiles.append((shrink(im, k), f"{LABELS[c]} q={r['quality']} {size}\n{r['bytes']} B\nPSNR {r['psnr']:.2f} dB"))
        sheets.append(tile_sheet(tiles))
    stacked(sheets).save(out)
    return rows


# ----------------------------------------------------------------------------- plots
def plot(res: dict, kod: dict | None, fid: dict | None, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ladder = [p for p in (kod or {}).get("points", []) if p["codec"] == "pqmim"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110)
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR (dB, RGB)"), (axes[1], "lpips", "LPIPS-Alex (lower is better)")):
        for i, (model, pts) in enumerate(by_model(res["send"]).items()):
            whole = next((p for p in ladder if p.get("model") == model), None)
            xs = [p["bpp"] for p in pts] + ([whole["bpp"]] if whole else [])
            ys = [p[key] for p in pts] + ([whole[key]] if whole else [])
            ax.plot(xs, ys, ".-", color=f"C{i}", label=f"{model}: s = 1..{pts[0]['steps']} steps sent")
        if ladder:
            ax.plot([p["bpp"] for p in ladder], [p[key] for p in ladder], "o-", color="black", lw=2, label="pqmim ladder (every step sent)")
        for c, style in (("avif", "s--"), ("webp", "^--")):
            pts = sorted((p for p in (kod or {}).get("points", []) if p["codec"] == c), key=lambda p: p["bpp"])
            if pts:
                ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], style, color="grey", lw=1, label=f"{LABELS[c]} (Pillow)")
        report.rate_axes(ax, "", ylabel)
    fig.suptitle(
        f"Kodak ({res['images']} images): files that send the first s coding steps, the rest filled in (expected code words)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out / "progressive_psnr.png")
    plt.close(fig)
    paths.append(out / "progressive_psnr.png")
    if res.get("fid"):
        fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
        for i, (codec, pts) in enumerate(report.families(res["fid"]).items()):
            for j, (model, mp) in enumerate(by_model(pts).items()):
                ax.plot(
                    [p["bpp"] for p in mp],
                    [p["fid"] for p in mp],
                    ".-" if "expected" in codec else "x:",
                    color=f"C{j}",
                    label=f"{model} s = {', '.join(str(p['sent']) for p in mp)}, {'expected code words' if 'expected' in codec else 'drawn codes'}",
                )
        for c, pts in report.families(list((fid or {}).get("points", []))).items():
            if c in ("pqmim", "webp", "avif"):
                ax.plot(
                    [p["bpp"] for p in pts],
                    [p["fid"] for p in pts],
                    {"pqmim": "o-", "avif": "s--", "webp": "^--"}[c],
                    color="black" if c == "pqmim" else "grey",
                    lw=2 if c == "pqmim" else 1,
                    label=report.family_label(c),
                )
        report.rate_axes(
            ax, f"FID on {res['fid'][0]['patches']} 256x256 patches of {res['fid'][0]['images']} val images", "FID (lower is better)"
        )
        fig.tight_layout()
        fig.savefig(out / "progressive_fid.png")
        plt.close(fig)
        paths.append(out / "progressive_fid.png")
    return paths


def by_model(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in sorted(points, key=lambda p: p["bpp"]):
        out.setdefault(p["model"], []).append(p)
    return out


# ----------------------------------------------------------------------------- README
def markdown(res: dict, command: str) -> str:
    lines = [
        f"Measured with `{command}` on {res['date'][:10]} ({res['machine']}; commit {report.short_commit(res['git_commit'])}); "
        f"Kodak, {res['images']} images, means over images; raw numbers in `bench/results/progressive.json`.",
        "",
        "![send-steps curves](bench/results/progressive_psnr.png)",
        "",
        "**Files that send the first s of the 8 steps** (`--send-steps s`; the rest filled in with expected code words), and "
        "**prefixes of progressive files** (`--progressive`, then `decode --partial`: the same pixels as the file that sends "
        "s steps, from the prefix's bytes):",
        "",
        "| model | s | send-steps file bpp | prefix bpp | PSNR | LPIPS |",
        "|---|---|---|---|---|---|",
    ]
    pref = {r["model"]: r for r in res["prefix"]}
    for model, pts in by_model(res["send"]).items():
        for p in sorted(pts, key=lambda p: p["sent"]):
            lines.append(
                f"| {model} | {p['sent']} | {p['bpp']:.4f} | {pref[model]['prefix_bpp'][p['sent']]:.4f} | {p['psnr']:.2f} | {p['lpips']:.3f} |"
            )
    lines += [
        "",
        "The progressive table costs "
        + ", ".join(f"{r['model']} {r['table_bytes']:.0f} B" for r in res["prefix"])
        + " per file on average (`--progressive` is off by default).",
    ]
    lines += [
        "",
        "**`--max-bytes N`** (the rung and the steps sent with the best PSNR; never over):",
        "",
        "| N bytes | files within N | mean bytes | PSNR | LPIPS | encode s (wall) | rungs chosen (steps sent) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["max_bytes"]:
        chosen = {}
        for row in r["rows"]:
            key = f"{row['model'].removeprefix('pqmim-')} ({row['sent']})"
            chosen[key] = chosen.get(key, 0) + 1
        lines.append(
            f"| {r['budget']} | {r['within']} of {len(r['rows'])} | {r['mean_bytes']:.0f} | {r['psnr']:.2f} | {r['lpips']:.3f} | {r['encode_s']:.1f} | "
            + ", ".join(f"{k} x{v}" for k, v in sorted(chosen.items()))
            + " |"
        )
    t = res["tiny"]
    lines += [
        "",
        f"**{t['budget']} bytes, against the classical codecs** (each at its best PSNR within the budget, at full size or "
        "shrunk by 2, 4, ... 32 and enlarged back, as a user could do):",
        "",
        "| codec | files within budget | mean bytes | PSNR | LPIPS | sizes used |",
        "|---|---|---|---|---|---|",
    ]
    mb = next((r for r in res["max_bytes"] if r["budget"] == t["budget"]), None)
    if mb:
        lines.append(
            f"| pqmim (`--max-bytes {t['budget']}`) | {mb['within']} of {len(mb['rows'])} | {mb['mean_bytes']:.0f} | {mb['psnr']:.2f} | {mb['lpips']:.3f} | full |"
        )
    for c, r in t["codecs"].items():
        if not r["fits"]:
            lines.append(f"| {LABELS[c]} | 0 of {r['images']}: its smallest file is {r['smallest']} B | - | - | - | - |")
        else:
            lines.append(
                f"| {LABELS[c]} | {r['fits']} of {r['images']} | {r['mean_bytes']:.0f} | {r['psnr']:.2f} | {r['lpips']:.3f} | "
                + ", ".join("full" if k == 1 else f"1/{k}" for k in r["scales"])
                + " |"
            )
    lines += [
        "",
        "![200 and 1000 bytes](bench/results/tiny.png)",
        "",
        "A progressive file's prefixes (top: expected code words; bottom: codes drawn with seed 0):",
        "",
        "![prefixes of a progressive file](bench/results/progressive.png)",
    ]
    if res.get("fill"):
        lines += [
            "",
            f"**Filling in: expected code words against the most likely codes** (the same files, fill 0; Kodak "
            f"{', '.join(n.removesuffix('.png') for n in res['fill'][0]['images'])}):",
            "",
            "| model | s | PSNR expected | PSNR most likely | LPIPS expected | LPIPS most likely |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["fill"]:
            lines.append(
                f"| {r['model']} | {r['sent']} | {r['expected_psnr']:.2f} | {r['likely_psnr']:.2f} | {r['expected_lpips']:.3f} | {r['likely_lpips']:.3f} |"
            )
    if res.get("fid"):
        lines += [
            "",
            "![FID of send-steps files](bench/results/progressive_fid.png)",
            "",
            "| fill | model | s | bpp | FID | KID x 1000 |",
            "|---|---|---|---|---|---|",
        ]
        for p in sorted(res["fid"], key=lambda p: (p["codec"], p["label"])):
            lines.append(
                f"| {p['codec'].removeprefix('pqmim-send-')} | {p['label'].split(' ')[0]} | {p['label'].split('=')[1]} | {p['bpp']:.4f} | {p['fid']:.1f} | {1000 * p['kid']:.1f} |"
            )
    return "\n".join(lines)
