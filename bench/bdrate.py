"""BD-rate (bjontegaard package, Akima interpolation) of pqmim against the other codecs.

A BD-rate is the mean rate difference at equal quality over the quality range both curves
cover; negative means pqmim needs fewer bits. It is only an average over that overlap, so each
figure comes with the overlap, and is flagged when the overlap is under MIN_OVERLAP of the
shorter curve's quality range (or missing when the curves do not overlap at all)."""

from __future__ import annotations

import warnings

import numpy as np

MIN_OVERLAP = 0.5


def monotone(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (rate, quality) points that form a rising curve: sorted by rate, each better than all
    before it (interpolation needs quality to grow with rate; e.g. JPEG's lowest settings do not)."""
    out: list[tuple[float, float]] = []
    for r, q in sorted(points):
        if not out or (q > out[-1][1] and r > out[-1][0]):
            out.append((r, q))
    return out


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> dict:
    """BD-rate in % of `test` against `anchor` (lists of (bpp, quality)), with the overlap."""
    import bjontegaard as bd

    a, t = monotone(anchor), monotone(test)
    if len(a) < 2 or len(t) < 2:
        return {"bd_rate": None, "overlap": 0.0, "meaningful": False, "why": "fewer than 2 points on a curve"}
    qa, qt = [q for _, q in a], [q for _, q in t]
    lo, hi = max(min(qa), min(qt)), min(max(qa), max(qt))
    overlap = max(0.0, hi - lo) / min(max(qt) - min(qt), max(qa) - min(qa))
    if hi <= lo:
        return {"bd_rate": None, "overlap": 0.0, "meaningful": False, "why": "the quality ranges do not overlap"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns on small overlaps: we report them ourselves
        value = bd.bd_rate([r for r, _ in a], qa, [r for r, _ in t], qt, method="akima", require_matching_points=False)
    ok = overlap >= MIN_OVERLAP
    return {
        "bd_rate": float(value),
        "overlap": round(overlap, 3),
        "range": [round(lo, 4), round(hi, 4)],
        "meaningful": ok,
        "why": None if ok else f"overlap is {overlap:.0%} of the shorter curve's quality range (< {MIN_OVERLAP:.0%})",
    }


def rate_at(points: list[tuple[float, float]], quality: float) -> float | None:
    """The rate a curve needs for `quality`: log-rate interpolated linearly between the two
    points that bracket it; None outside the curve's range."""
    pts = monotone(points)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if q0 <= quality <= q1:
            t = (quality - q0) / (q1 - q0)
            return float(np.exp(np.log(r0) + t * (np.log(r1) - np.log(r0))))
    return None


def point_saving(rate: float, quality: float, points: list[tuple[float, float]]) -> float | None:
    """One operating point's rate difference in % against a curve at the same quality (negative:
    the point needs fewer bits); None when the curve does not reach that quality."""
    other = rate_at(points, quality)
    return None if other is None else 100.0 * (rate / other - 1.0)


def table(curves: dict[str, list[tuple[float, float]]], test: str = "pqmim") -> dict[str, dict]:
    """BD-rate of `test` against every other curve (name -> (bpp, quality) points)."""
    return {name: bd_rate(pts, curves[test]) for name, pts in curves.items() if name != test and np.isfinite([q for _, q in pts]).all()}
