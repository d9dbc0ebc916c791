"""Plots, tables and the README's results section, from the bench's JSON results.

Everything here reads bench/results/*.json only, so `python -m bench report` redraws it all
without measuring anything again."""

from __future__ import annotations

import json
from pathlib import Path

from pqmim import zoo
from pqmim.checkout import SHARED
from pqmim.fileio import atomic_write

from . import bdrate
from .classical import LABELS
from .codecs import PERCEPTUAL

PUBLISHED_DIR = SHARED / "reference" / "kodak"
# CompressAI's published Kodak curves (decoded to 8 bits, like ours) drawn as reference lines
PUBLISHED = {
    "bmshj2018-hyperprior": "8bit-decoded__compressai-bmshj2018-hyperprior_mse_ans_cuda.json",
    "mbt2018-mean": "8bit-decoded__compressai-mbt2018-mean_mse_ans_cuda.json",
}
METRICS = {"psnr": "PSNR (dB, RGB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS-Alex (lower is better)"}
README_BEGIN, README_END = "<!-- bench:begin (python -m bench run writes this section) -->", "<!-- bench:end -->"


def family_label(codec: str) -> str:
    if codec == "pqmim":
        return "pqmim (ours)"
    if codec == PERCEPTUAL:
        return "pqmim, perceptual decoder (ours)"
    if codec in LABELS:
        return f"{LABELS[codec]} (Pillow)"
    return f"{codec} (ours, same data, short budget)"


def style(codec: str, i: int, other: str) -> dict:
    """Plot style of a family: pqmim's two decoders bold and annotated, the others thin."""
    if codec == "pqmim":
        return {"fmt": "o-", "lw": 2.2, "color": "black", "zorder": 5}
    if codec == PERCEPTUAL:
        return {"fmt": "D-", "lw": 2.2, "color": "firebrick", "zorder": 5}
    return {"fmt": other, "lw": 1.2, "color": f"C{i}", "zorder": 3}


def families(points: list[dict]) -> dict[str, list[dict]]:
    """Points grouped by codec, in the order first seen, each sorted by rate."""
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["codec"], []).append(p)
    return {k: sorted(v, key=lambda p: p["bpp"]) for k, v in out.items()}


def published(folder: Path = PUBLISHED_DIR) -> dict[str, dict]:
    """name -> {"bpp": [...], "psnr": [...], "ms_ssim": [...]} of the published curves found."""
    out = {}
    for name, file in PUBLISHED.items():
        path = folder / file
        if path.is_file():
            r = json.loads(path.read_text())["results"]
            out[name] = {"bpp": r["bpp"], "psnr": r["psnr-rgb"], "ms_ssim": r["ms-ssim-rgb"]}
    return out


DEFAULT = zoo.DEFAULT_MODEL.removeprefix("pqmim-")  # the default model's point label, "q3"


def bd_tables(points: list[dict], default: str = DEFAULT) -> dict[str, dict]:
    """BD-rate of the pqmim ladder against every other codec, for PSNR and MS-SSIM, and the
    default model's own rate difference against each codec at its quality."""
    fams = {c: pts for c, pts in families(points).items() if c != PERCEPTUAL}  # a decoder for realism, not for these metrics
    out = {}
    for metric in ("psnr", "ms_ssim"):
        curves = {c: [(p["bpp"], p[metric]) for p in pts if p[metric] is not None] for c, pts in fams.items()}
        if "pqmim" not in curves:
            continue
        out[metric] = bdrate.table(curves)
        d = next((p for p in fams["pqmim"] if p["label"] == default and p[metric] is not None), None)
        for codec, r in out[metric].items():
            r["default_point"] = None if d is None else bdrate.point_saving(d["bpp"], d[metric], curves[codec])
    return out


def rate_axes(ax, title: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2]
    lo, hi = ax.get_xlim()
    shown = [t for t in ticks if lo <= t <= hi]
    ax.set_xticks(shown, [f"{t:g}" for t in shown])
    ax.set_xlabel("bits per pixel (real file sizes)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="best")


def plot_metric(points: list[dict], key: str, path: Path, title: str, refs: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for i, (codec, pts) in enumerate(families(points).items()):
        pts = [p for p in pts if p.get(key) is not None]
        if not pts:
            continue
        st = style(codec, i, ".--")
        ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], st.pop("fmt"), **st, label=family_label(codec))
        if codec in ("pqmim", PERCEPTUAL):
            for p in pts:
                ax.annotate(p["label"], (p["bpp"], p[key]), textcoords="offset points", xytext=(4, -11), fontsize=8)
    for j, (name, r) in enumerate((refs or {}).items()):
        xs = [(b, v) for b, v in zip(r["bpp"], r[key]) if b <= 2.5]
        ax.plot(
            [b for b, _ in xs],
            [v for _, v in xs],
            ":",
            color=f"C{6 + j}",
            lw=1.2,
            alpha=0.8,
            label=f"{name} (published, trained for millions of steps)",
        )
    rate_axes(ax, title, METRICS.get(key, key))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_fid(fid: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for i, (codec, pts) in enumerate(families(list(fid["points"])).items()):
        st = style(codec, i, "s--")
        ax.plot([p["bpp"] for p in pts], [p["fid"] for p in pts], st.pop("fmt"), **st, label=family_label(codec))
    rate_axes(ax, title, "FID (lower is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(kodak: dict, fid: dict | None, out: Path) -> list[Path]:
    title = f"Kodak ({kodak['images']} images), mean over images"
    refs = published()
    paths = []
    for key, name in (("psnr", "kodak_psnr.png"), ("ms_ssim", "kodak_msssim.png"), ("lpips", "kodak_lpips.png")):
        plot_metric(kodak["points"], key, out / name, title, refs if key != "lpips" else None)
        paths.append(out / name)
    if fid and fid.get("points"):
        plot_fid(fid, out / "fid.png", f"FID on {fid['patches']} 256x256 patches of {fid['images']} val images")
        paths.append(out / "fid.png")
    return paths


# ----------------------------------------------------------------------------- README section
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _bd_cell(r: dict) -> str:
    if r["bd_rate"] is None:
        return f"n/a ({r['why']})"
    cell = f"{r['bd_rate']:+.1f}% over {r['range'][0]:.4g}-{r['range'][1]:.4g}"
    return cell if r["meaningful"] else f"{cell} (overlap {r['overlap']:.0%}: too small to be meaningful)"


def _point_cell(r: dict) -> str:
    v = r.get("default_point")
    return "out of range" if v is None else f"{v:+.1f}%"


def short_commit(commit: str | None) -> str:
    c = str(commit)
    return c[:7] + ("+changes" if c.endswith("+changes") else "")


def markdown(kodak: dict, fid: dict | None, bd: dict, command: str) -> str:
    fams = families(kodak["points"])
    lines = [
        f"Measured with `{command}` on {kodak['date'][:10]} ({kodak['machine']}; commit {short_commit(kodak['git_commit'])}). "
        f"Kodak: {kodak['images']} images; every rate is a real file's size, every quality figure is measured on "
        "the decoded 8-bit image; means over images. Raw numbers: `bench/results/*.json`.",
        "",
    ]
    lines += [
        "![Kodak PSNR vs bpp](bench/results/kodak_psnr.png)",
        "",
        "![Kodak MS-SSIM vs bpp](bench/results/kodak_msssim.png) ![Kodak LPIPS vs bpp](bench/results/kodak_lpips.png)",
        "",
    ]
    lines += [
        "**Learned codecs on Kodak** (encode / decode: seconds per image, this machine):",
        "",
        "| codec | point | bpp | PSNR | MS-SSIM | LPIPS | encode s | decode s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for codec, pts in fams.items():
        if codec in LABELS:
            continue
        for p in pts:
            lines.append(
                f"| {family_label(codec)} | {p['label']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {_fmt(p['ms_ssim'], '.4f')} | "
                f"{_fmt(p['lpips'], '.3f')} | {p['encode_s']:.2f} | {p['decode_s']:.2f} |"
            )
    lines += [
        "",
        "**BD-rate of the pqmim ladder** (all shipped models, the default q3 among them) against each codec "
        "(negative: pqmim needs fewer bits for the same quality; Akima interpolation over the overlapping quality range):",
        "",
        f"| against | BD-rate (PSNR) | BD-rate (MS-SSIM) | {DEFAULT} (default) alone, PSNR | {DEFAULT} alone, MS-SSIM |",
        "|---|---|---|---|---|",
    ]
    for codec in bd.get("psnr", {}):
        ps, ms = bd["psnr"][codec], bd["ms_ssim"][codec]
        lines.append(f"| {family_label(codec)} | {_bd_cell(ps)} | {_bd_cell(ms)} | {_point_cell(ps)} | {_point_cell(ms)} |")
    lines += [
        "",
        "The last two columns: the default model's rate against the codec's rate at the same quality "
        "(log-rate interpolated between its two nearest points; 'out of range' where the codec's curve does not reach that quality).",
    ]
    lines += [
        "",
        "**Speed** (mean seconds per Kodak image over a codec's points, this machine; Pillow codecs in C, "
        "pqmim and the baselines in PyTorch on the CPU):",
        "",
        "| codec | encode s | decode s |",
        "|---|---|---|",
    ]
    for codec, pts in fams.items():
        enc = sum(p["encode_s"] for p in pts) / len(pts)
        dec = sum(p["decode_s"] for p in pts) / len(pts)
        lines.append(f"| {family_label(codec)} | {enc:.3f} | {dec:.3f} |")
    if fid and fid.get("points"):
        lines += [
            "",
            f"**Perceptual quality**: FID and KID (torch-fidelity, Inception weights from `../shared/weights`) on "
            f"{fid['patches']} 256x256 patches of the {fid['images']} val images (a grid plus the grid shifted by 128 px, "
            "HiFiC's protocol); bpp is the mean over those images. Classical codecs at the settings nearest pqmim's rates.",
            "",
            "![FID vs bpp](bench/results/fid.png)",
            "",
            "| codec | point | bpp | FID | KID x 1000 |",
            "|---|---|---|---|---|",
        ]
        for codec, pts in families(list(fid["points"])).items():
            for p in pts:
                lines.append(f"| {family_label(codec)} | {p['label']} | {p['bpp']:.4f} | {p['fid']:.1f} | {1000 * p['kid']:.1f} |")
    visuals = {
        "visual.png": "The same crop from each codec at about the default model's rate",
        "visual_low.png": "The same crop at about q1's rate (each codec at its point nearest that rate)",
    }
    for name, title in visuals.items():
        if (Path(__file__).parent / "results" / name).exists():
            lines += ["", f"**{title}** (`bench/results/{name}`):", "", f"![{title}](bench/results/{name})"]
    return "\n".join(lines)


def update_readme(readme: Path, section: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Replace what lies between the markers `begin` and `end` in the README with `section`."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no section markers ({begin} ... {end})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write(readme, f"{head}{begin}\n{section}\n{end}{tail}")
