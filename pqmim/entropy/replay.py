"""The replay: one pass over the coding steps, the single path of encoding, decoding, counting
bits and sizing prefixes (pqmim.entropy.coder), and of the bench's exactness checks.

At step s, for every window of the grid (`Layout`), the transformer sees the codes revealed at
steps < s and gives M categorical distributions for each position of group s, as integer tables
(`pmf.py`). What happens to the tables is the `CodingPass`'s business: an encoder range-codes
the known codes and returns them, a decoder returns what the range decoder reads, a bit counter
adds up -log2 p. Whatever a pass returns becomes the context of the later steps, so encoder and
decoder replay the same computation as long as they return the same codes.

Invariants:
- Integer arithmetic (exact.py): the logits are the same bits whatever the batch, its padding
  and the thread count, so the windows of a step go in one padded batch (up to WINDOWS_PER_CALL)
  on torch's own threads.
- Float64 arithmetic: the windows are computed in pieces fixed by the grid size alone (`pieces`),
  each with fixed shapes and single-threaded ops (the pieces are spread over worker threads), so
  on one machine the float64 logits do not depend on the thread count or on how many images are
  coded together.
- A step's symbols go to the pass window by window in raster order (the format's order), in
  calls of at most WINDOWS_PER_CALL windows (bounding memory, and how long a bad file runs).
- Steps from `sent` on are filled in (`fill_symbols`) instead of going through the pass: the
  same integer tables give the same codes everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..models import PQMIM
from ..models.transformer import KVCache
from ..threads import fixed_pieces
from . import pmf
from .exact import IntegerTransformer
from .schedule import reveal_groups, splitmix64, window_boxes

# How the entropy model's logits are computed: "integer" (exact.py: the same bits on every
# machine; bitstream versions 4 and 5) or "float64" (versions 2 and 3: within 2**-36 nat across
# machines, made safe by the grid margin in pmf.py).
ARITHMETICS = ("integer", "float64")

# Windows of one step go to the pass in calls of at most this many (the symbol order is unchanged).
WINDOWS_PER_CALL = 64
# Neighbouring windows of one size are computed together, in pieces of at most this many: larger
# matrix products run faster, and the pieces are fixed by the grid size alone (see `pieces`).
PIECE_WINDOWS = 4

Where = list[tuple[int, np.ndarray]]  # per window of a call, in order: (window index, flat positions coded now)
Progress = Callable[[int, int], None]  # (calls done, calls in all)


class StopReplay(Exception):
    """Raised by `CodingPass.step_done` to end the replay after that step."""


class CodingPass:
    """What one replay does with the tables of each step (a subclass per use)."""

    wants_logits = False  # True: `logits` is called with each call's float64 logits

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        """The codes of one call (rows of `tables`: window, position, sub-vector; `tables` are
        integer weights stored as exact float32, (rows, k)), in the same order."""
        raise NotImplementedError

    def step_done(self, step: int) -> None:
        """After every call of `step` (may raise StopReplay)."""

    def logits(self, step: int, logits: torch.Tensor, where: Where) -> None:
        """The float64 logits (rows, k) a call's tables were built from, if `wants_logits`."""


@dataclass(frozen=True)
class Decoded:
    codes: torch.Tensor  # (m, h, w)
    filled: torch.Tensor | None = None  # (h, w) bool: positions filled in with fill 0
    expected: torch.Tensor | None = None  # (h, w, m * sub_dim) float32: their expected code words


@dataclass(frozen=True)
class Layout:
    """The windows of an h x w code grid: boxes (y0, x0, height, width) in raster order."""

    h: int
    w: int
    window: int
    boxes: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def of(cls, h: int, w: int, window: int) -> "Layout":
        return cls(h, w, window, tuple(window_boxes(h, w, window)))

    def pad(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (m, h, w) -> per-window padded codes (windows, m, W*W)."""
        W, m = self.window, codes.shape[0]
        padded = torch.zeros(len(self.boxes), m, W * W, dtype=torch.long)
        for t, (y0, x0, hh, ww) in enumerate(self.boxes):
            padded[t].view(m, W, W)[:, :hh, :ww] = codes[:, y0 : y0 + hh, x0 : x0 + ww]
        return padded

    def valid(self) -> torch.Tensor:
        """(windows, W, W) bool: the real positions of each padded window."""
        valid = torch.zeros(len(self.boxes), self.window, self.window, dtype=torch.bool)
        for t, (_, _, hh, ww) in enumerate(self.boxes):
            valid[t, :hh, :ww] = True
        return valid

    @staticmethod
    def symbols(padded: torch.Tensor, where: Where) -> np.ndarray:
        """The codes of one call, in the order of the tables' rows."""
        return np.concatenate([padded[t][:, torch.from_numpy(g)].T.reshape(-1).numpy() for t, g in where])


def fill_symbols(weights: np.ndarray, where: Where, m: int, window: int, fill: int) -> np.ndarray:
    """Codes for positions that were not sent, one per row of `weights` (integer tables, rows in
    coding order: window, position, sub-vector): the most likely code (fill 0; ties go to the
    lowest index) or, for fill >= 1 (the user's seed + 1), a draw keyed by `fill` and by where
    the code sits in the grid (FORMAT.md). Integer arithmetic only, so the same tables give the
    same codes everywhere."""
    if fill == 0:
        return weights.argmax(axis=1)
    pos = np.concatenate([t * window * window + g for t, g in where]).astype(np.uint64)
    key = (pos[:, None] * np.uint64(m) + np.arange(m, dtype=np.uint64)).reshape(-1)
    draw = splitmix64(key ^ splitmix64(np.full(1, fill, dtype=np.uint64))[0])
    cum = np.cumsum(weights.astype(np.int64), axis=1)
    point = (draw % cum[:, -1].astype(np.uint64)).astype(np.int64)
    return (cum <= point[:, None]).sum(axis=1)


class _Piece:
    """Neighbouring windows computed together in every step: their codes so far, and for a
    block-causal model the keys and values of the revealed ones, plus the groups coded last, not
    yet in the cache. With float64 arithmetic, up to PIECE_WINDOWS windows of one size (they share
    each step's positions); with integer arithmetic, up to WINDOWS_PER_CALL windows of any sizes
    (each step's positions padded to the longest group, which changes no logit: exact.py)."""

    def __init__(self, windows: list[int], sizes: list[tuple[int, int]], cfg) -> None:
        W, b = cfg.window, len(windows)
        self.windows = windows  # window indices, consecutive in raster order
        schedules = {hw: reveal_groups(*hw, W, cfg.steps, cfg.alpha) for hw in set(sizes)}
        self.groups = [schedules[hw] for hw in sizes]  # per window, per step: flat positions coded
        self.codes = torch.zeros(b, cfg.m, W * W, dtype=torch.long)
        self.visible = torch.zeros(b, W * W, dtype=torch.bool)
        self.valid = torch.zeros(b, W, W, dtype=torch.bool)
        for i, (hh, ww) in enumerate(sizes):
            self.valid[i, :hh, :ww] = True
        self.cache = KVCache(cfg.n_layers)
        self.unrevealed: list[np.ndarray] | None = None  # per window

    def at(self, s: int) -> list[np.ndarray]:
        """Per window, the flat positions coded at step s."""
        return [g[s] for g in self.groups]


def padded(groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window position lists -> (positions (B, r), real (B, r) bool), r the longest list."""
    r = max(len(g) for g in groups)
    idx = torch.zeros(len(groups), r, dtype=torch.long)
    real = torch.zeros(len(groups), r, dtype=torch.bool)
    for i, g in enumerate(groups):
        idx[i, : len(g)] = torch.from_numpy(g)
        real[i, : len(g)] = True
    return idx, real


def pieces(layout: Layout, cfg, integer: bool = False) -> list[_Piece]:
    """Float64: runs of consecutive windows of one size, each cut into near-equal pieces of at
    most PIECE_WINDOWS: fixed by the grid size alone, hence the same float results everywhere.
    Integer: consecutive windows of any sizes, WINDOWS_PER_CALL at a time (any cut gives the same
    logits)."""
    boxes, out, t = layout.boxes, [], 0
    while t < len(boxes):
        run = t
        while run < len(boxes) and (integer or boxes[run][2:] == boxes[t][2:]):
            run += 1
        n = run - t
        most = WINDOWS_PER_CALL if integer else PIECE_WINDOWS
        parts = -(-n // most)
        for i in range(parts):
            size = n // parts + (i < n % parts)
            out.append(_Piece(list(range(t, t + size)), [boxes[u][2:] for u in range(t, t + size)], cfg))
            t += size
    return out


class _Fill(CodingPass):
    """Steps not sent: codes from the tables alone; with fill 0, also each position's expected
    code word (float64 expectation under its table), which the decoder synthesises from."""

    def __init__(self, layout: Layout, codebooks: torch.Tensor, cfg, fill: int) -> None:
        self.layout, self.codebooks, self.cfg, self.fill = layout, codebooks, cfg, fill
        self.filled = self.expected = None
        if fill == 0:
            self.filled = torch.zeros(layout.h, layout.w, dtype=torch.bool)
            self.expected = torch.zeros(layout.h, layout.w, cfg.m * codebooks.shape[2])

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        m, W, boxes = self.cfg.m, self.cfg.window, self.layout.boxes
        if self.expected is not None:
            p = torch.from_numpy(tables).double().view(-1, m, self.cfg.k)
            mean = torch.einsum("njk,jkd->njd", p / p.sum(dim=2, keepdim=True), self.codebooks).reshape(-1, self.expected.shape[2]).float()
            ys = torch.from_numpy(np.concatenate([boxes[t][0] + g // W for t, g in where]))
            xs = torch.from_numpy(np.concatenate([boxes[t][1] + g % W for t, g in where]))
            self.expected[ys, xs] = mean
            self.filled[ys, xs] = True
        return fill_symbols(tables, where, m, W, self.fill)


class _Inline:
    """A pool that runs everything in the calling thread."""

    @staticmethod
    def map(fn, items):
        return map(fn, items)


class Replayer:
    """The entropy model in float64 (see pmf.py) and in integer arithmetic (exact.py), and the
    replay loop over either."""

    def __init__(self, model: PQMIM, device: torch.device | str = "cpu") -> None:
        self.cfg = model.cfg
        self.device = torch.device(device)  # a GPU computes the same float64 logits within the margin
        self._source = model.entropy
        self.codebooks = model.quantizer.codebooks.detach().double().cpu()  # (m, k, sub_dim): expected code words
        self._integer: IntegerTransformer | None = None

    @functools.cached_property
    def entropy(self) -> torch.nn.Module:
        """The entropy model in float64 (files of versions 2 and 3), made on first use."""
        return copy.deepcopy(self._source).double().eval().to(self.device)

    def transformer(self, arithmetic: str) -> torch.nn.Module:
        """The entropy model computing in `arithmetic` (one of ARITHMETICS)."""
        if arithmetic == "float64":
            return self.entropy
        if arithmetic != "integer":
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
        if self._integer is None:
            self._integer = IntegerTransformer(self.cfg, self._source).to(self.device)
        return self._integer

    @torch.no_grad()
    def _piece_logits(self, net: torch.nn.Module, piece: _Piece, s: int) -> torch.Tensor:
        """Float64 logits (rows: window, position coded at step s, sub-vector; k) of the piece."""
        d, cfg = self.device, self.cfg
        groups = piece.at(s)
        if isinstance(net, IntegerTransformer):
            query, asked = padded(groups)
            if cfg.causal:  # the groups coded last join the cache as this step's groups are predicted
                codes = revealed = seen = None
                if piece.unrevealed is not None:
                    revealed, seen = padded(piece.unrevealed)
                    codes = piece.codes.gather(2, revealed[:, None, :].expand(-1, cfg.m, -1)).to(d)
                    revealed, seen = revealed.to(d), seen.to(d)
                h = net.advance_padded(piece.cache, codes, revealed, seen, query.to(d), asked.to(d))
            else:  # every row, then the ones coded now (the windows' groups differ)
                W = cfg.window
                h = net.hidden(piece.codes.view(-1, cfg.m, W, W).to(d), piece.visible.view(-1, W, W).to(d), piece.valid.to(d))
                h = h.gather(1, query.to(d)[..., None].expand(-1, -1, h.shape[-1]))
            h = h[asked.to(d)]
        else:  # windows of one size: one group for all
            idx = torch.from_numpy(groups[0]).to(d)
            if cfg.causal:
                new = None if piece.unrevealed is None else torch.from_numpy(piece.unrevealed[0])
                revealed = None if new is None else piece.codes[:, :, new].to(d)
                h = net.advance(piece.cache, revealed, None if new is None else new.to(d), idx, len(piece.windows))
            else:
                W = cfg.window
                h = net.hidden(piece.codes.view(-1, cfg.m, W, W).to(d), piece.visible.view(-1, W, W).to(d), piece.valid.to(d), idx)
        piece.unrevealed = None
        return net.logits(h).reshape(-1, cfg.k).cpu().double()

    def run(
        self,
        layout: Layout,
        coding: CodingPass,
        *,
        shift: int = 0,
        sent: int | None = None,
        fill: int = 0,
        check: bool = False,
        progress: Progress | None = None,
        arithmetic: str = "integer",
    ) -> tuple[Decoded, float]:
        """Replay the coding steps of `layout` with the entropy model in `arithmetic` and tables
        on grid `shift`, `coding` taking the steps before `sent` (all by default) and the rest
        filled in with `fill`. Returns the codes and, if `check`, the logits' smallest distance to
        a grid boundary (else inf)."""
        cfg = self.cfg
        net = self.transformer(arithmetic)
        sent = cfg.steps if sent is None else sent
        integer = arithmetic == "integer"  # exact whatever the batch and threads: big pieces, torch's own threads
        parts = pieces(layout, cfg, integer)
        calls: list[tuple[int, list[_Piece]]] = []  # (step, pieces) of each call, in order
        for s in range(cfg.steps):
            chunk: list[_Piece] = []
            for p in parts:
                if not any(len(g) for g in p.at(s)):
                    continue
                if chunk and sum(len(q.windows) for q in chunk) + len(p.windows) > WINDOWS_PER_CALL:
                    calls.append((s, chunk))
                    chunk = []
                chunk.append(p)
            if chunk:
                calls.append((s, chunk))
        filler = _Fill(layout, self.codebooks, cfg, fill)
        margin = math.inf
        with contextlib.nullcontext(_Inline()) if integer else fixed_pieces() as pool:
            try:
                done = 0
                for s in range(cfg.steps):
                    for _, chunk in (c for c in calls if c[0] == s):
                        margin = min(margin, self._call(pool, net, chunk, s, shift, coding if s < sent else filler, check))
                        done += 1
                        if progress is not None:
                            progress(done, len(calls))
                    coding.step_done(s)
            except StopReplay:
                pass
        out = torch.zeros(cfg.m, layout.h, layout.w, dtype=torch.long)
        W = cfg.window
        for p in parts:
            for b, t in enumerate(p.windows):
                y0, x0, hh, ww = layout.boxes[t]
                out[:, y0 : y0 + hh, x0 : x0 + ww] = p.codes[b].view(cfg.m, W, W)[:, :hh, :ww]
        return Decoded(out, filler.filled, filler.expected), margin

    def _call(self, pool, net: torch.nn.Module, chunk: list[_Piece], s: int, shift: int, coding: CodingPass, check: bool) -> float:
        """One call of step s: the pieces' logits (in the worker threads), their tables, the
        pass's codes written back into the pieces; returns the call's margin."""
        m = self.cfg.m

        def piece(p: _Piece) -> tuple[torch.Tensor, torch.Tensor, float]:  # in a worker thread: the tables too
            logits = self._piece_logits(net, p, s)
            return logits, pmf.integer_weights(logits, shift, torch.float32), pmf.margin(logits, shift) if check else math.inf

        results = list(pool.map(piece, chunk))
        where = [(t, g) for p in chunk for t, g in zip(p.windows, p.at(s)) if len(g)]
        if coding.wants_logits:  # only the bench looks: no copy on the coding path
            coding.logits(s, torch.cat([r[0] for r in results]), where)
        tables = torch.cat([r[1] for r in results]).numpy()
        symbols = torch.from_numpy(np.asarray(coding.symbols(s, tables, where)).astype(np.int64))
        o = 0
        for p in chunk:
            for b, g in enumerate(p.at(s)):
                n, g = len(g) * m, torch.from_numpy(g)
                p.codes[b][:, g] = symbols[o : o + n].view(-1, m).T
                p.visible[b, g] = True
                o += n
            p.unrevealed = p.at(s)
        return min(r[2] for r in results)
