"""The fixed, seeded schedule that says which latent positions are coded at which step.

A latent grid is cut into windows; within a window the positions are put in a pseudo-random
order (splitmix64 hash of the position index with a fixed seed: no RNG library whose stream
could change between versions), and revealed in S groups whose cumulative size grows like
(s/S)**alpha: few positions first, while the context is poor, many at the end.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SCHEDULE_SEED = 0x5EED_0F_C0DE5  # part of the bitstream format: changing it breaks old files


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each uint64 (arithmetic mod 2**64): a stream that no library
    update can change (the schedule and the seeded fill of codes not sent both hash with it)."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_boxes(h: int, w: int, window: int) -> list[tuple[int, int, int, int]]:
    """The transformer's windows over an h x w code grid, in raster order: boxes (y0, x0, height,
    width), the last row and column cut to the grid. ("Tiles" are the encoder's image tiles of
    large images, pqmim.tiling: another thing.)"""
    return [(y, x, min(window, h - y), min(window, w - x)) for y in range(0, h, window) for x in range(0, w, window)]


@lru_cache(maxsize=1024)
def reveal_groups(hh: int, ww: int, window: int, steps: int, alpha: float) -> tuple[np.ndarray, ...]:
    """For a window with hh x ww real positions, the flat indices (into window*window) coded at
    each of the `steps` steps. Every position appears exactly once; groups may be empty."""
    n = hh * ww
    keys = splitmix64(np.uint64(SCHEDULE_SEED) ^ (np.arange(n, dtype=np.uint64) * np.uint64(0x100000001B3)))
    order = np.argsort(keys, kind="stable")
    flat = (order // ww) * window + order % ww
    bounds = [0] + cumulative_counts(n, steps, alpha)
    return tuple(flat[bounds[s] : bounds[s + 1]] for s in range(steps))


def cumulative_counts(n: int, steps: int, alpha: float) -> list[int]:
    """How many of n positions are revealed after each of the steps (the last: all n)."""
    # the small epsilon keeps exact products (e.g. n * 1.0) from rounding up
    cum = [max(math.ceil(n * (s / steps) ** alpha - 1e-9), min(s, n)) for s in range(1, steps + 1)]
    cum[-1] = n
    return cum
