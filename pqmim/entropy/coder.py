"""Arithmetic coding of a code grid with the MIM transformer as entropy model.

Encoder and decoder run the very same loop (`_replay`): at step s, for every window, the
transformer sees the codes revealed at steps < s and gives M categorical distributions for each
position of group s; all symbols of the step go through constriction's range coder in one
vectorised call. The probabilities are integer tables computed from float64 logits on a grid
(`pmf.py`), so they are the same on any machine; on top of that, the windows are computed in
pieces fixed by the grid size (`pieces`), each with fixed shapes and single-threaded ops (the
pieces are spread over worker threads), so on one machine the float64 logits themselves do not
depend on the thread count or on how many images are coded together.

A block-causal model (`ModelConfig.causal`) keeps the keys and values of the revealed codes of
each piece (`KVCache`): a step computes the content stream of the group revealed last and the
query stream of the group coded now, instead of the whole window again.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import constriction
import numpy as np
import torch

from ..models import PQMIM
from ..models.transformer import KVCache
from ..threads import fixed_pieces
from . import pmf
from .schedule import reveal_groups, window_tiles


class CorruptPayloadError(ValueError):
    """The range decoder could not decode the payload."""


# A payload cannot hold codes carrying more information than its own bits (plus the trailing
# zero bytes dropped on encode and constriction's rounding): decoding stops as soon as it would,
# so a header that lies about the image size costs little time.
BUDGET_FACTOR = 1.02
BUDGET_SLACK_BITS = 256

# Windows of one step go to the range coder in chunks (the symbol order is unchanged): this bounds
# the memory of a step's probability tables and how long a bad file runs before it is caught.
WINDOWS_PER_CALL = 64
# Neighbouring windows of one size are computed together, in pieces of at most this many: larger
# matrix products run faster, and the pieces are fixed by the grid size alone (see `pieces`).
PIECE_WINDOWS = 4

StepFn = Callable[[np.ndarray, list[tuple[int, np.ndarray]]], np.ndarray]
Progress = Callable[[int, int], None]  # (calls to the range coder done, calls in all)


class _Piece:
    """Up to PIECE_WINDOWS neighbouring windows of the same size, computed together in every step
    (they share each step's positions): their codes so far, and for a block-causal model the
    keys and values of the revealed ones, plus the group coded last, not yet in the cache."""

    def __init__(self, tiles: list[int], hh: int, ww: int, cfg) -> None:
        W, b = cfg.window, len(tiles)
        self.tiles = tiles  # window indices, consecutive in raster order
        self.groups = reveal_groups(hh, ww, W, cfg.steps, cfg.alpha)
        self.codes = torch.zeros(b, cfg.m, W * W, dtype=torch.long)
        self.visible = torch.zeros(b, W * W, dtype=torch.bool)
        self.valid = torch.zeros(b, W, W, dtype=torch.bool)
        self.valid[:, :hh, :ww] = True
        self.cache = KVCache(cfg.n_layers)
        self.unrevealed: np.ndarray | None = None


def pieces(tiles: list[tuple[int, int, int, int]], cfg) -> list[_Piece]:
    """Runs of consecutive windows of one size, each cut into near-equal pieces of at most
    PIECE_WINDOWS: fixed by the grid size alone, hence the same float results everywhere."""
    out, t = [], 0
    while t < len(tiles):
        run = t
        while run < len(tiles) and tiles[run][2:] == tiles[t][2:]:
            run += 1
        n = run - t
        parts = -(-n // PIECE_WINDOWS)
        sizes = [n // parts + (i < n % parts) for i in range(parts)]
        for size in sizes:
            out.append(_Piece(list(range(t, t + size)), *tiles[t][2:], cfg))
            t += size
    return out


class MIMCoder:
    def __init__(self, model: PQMIM, device: torch.device | str = "cpu") -> None:
        self.cfg = model.cfg
        self.device = torch.device(device)  # a GPU computes the same float64 logits within the margin
        self.entropy = copy.deepcopy(model.entropy).double().eval().to(self.device)  # float64: see pmf.py
        self.family = constriction.stream.model.Categorical(perfect=False)

    @torch.no_grad()
    def _piece_weights(self, piece: _Piece, s: int, shift: int, check: bool) -> tuple[np.ndarray, float]:
        """Integer weights (windows * len(group) * m, k), as exact float32, of the piece's codes
        coded at step s, window by window; and, if `check`, the logits' smallest distance to a
        grid boundary."""
        d, cfg = self.device, self.cfg
        idx = torch.from_numpy(piece.groups[s]).to(d)
        if cfg.causal:  # the group coded last joins the cache as this step's group is predicted
            new = None if piece.unrevealed is None else torch.from_numpy(piece.unrevealed)
            h = self.entropy.advance(piece.cache, None if new is None else piece.codes[:, :, new].to(d), None if new is None else new.to(d), idx, len(piece.tiles))
            piece.unrevealed = None
        else:
            W = cfg.window
            h = self.entropy.hidden(piece.codes.view(-1, cfg.m, W, W).to(d), piece.visible.view(-1, W, W).to(d), piece.valid.to(d), idx)
        logits = self.entropy.logits(h).reshape(-1, cfg.k).cpu()  # rows: window, position, sub-vector
        weights = pmf.integer_weights(logits, shift, torch.float32).numpy()
        return weights, pmf.margin(logits, shift) if check else math.inf

    def _replay(self, h: int, w: int, shift: int, step_fn: StepFn, check: bool = False, progress: Progress | None = None) -> tuple[torch.Tensor, float]:
        """Run the coding steps; returns the codes (m, h, w) and, if `check`, the margin. In each
        step the symbols go to the range coder window by window in raster order (the format's
        order), in calls of at most WINDOWS_PER_CALL windows."""
        cfg = self.cfg
        W, m = cfg.window, cfg.m
        tiles = window_tiles(h, w, W)
        parts = pieces(tiles, cfg)
        calls: list[list[_Piece]] = []
        steps_of_call: list[int] = []
        for s in range(cfg.steps):
            chunk: list[_Piece] = []
            for p in parts:
                if not len(p.groups[s]):
                    continue
                if chunk and sum(len(q.tiles) for q in chunk) + len(p.tiles) > WINDOWS_PER_CALL:
                    calls.append(chunk)
                    steps_of_call.append(s)
                    chunk = []
                chunk.append(p)
            if chunk:
                calls.append(chunk)
                steps_of_call.append(s)
        margin = math.inf
        with fixed_pieces() as pool:
            for done, (chunk, s) in enumerate(zip(calls, steps_of_call), 1):
                margin = min(margin, self._step(pool, chunk, s, shift, step_fn, check))
                if progress is not None:
                    progress(done, len(calls))
        out = torch.zeros(m, h, w, dtype=torch.long)
        for p in parts:
            for b, t in enumerate(p.tiles):
                y0, x0, hh, ww = tiles[t]
                out[:, y0 : y0 + hh, x0 : x0 + ww] = p.codes[b].view(m, W, W)[:, :hh, :ww]
        return out, margin

    def _step(self, pool, chunk: list[_Piece], s: int, shift, step_fn, check) -> float:
        m = self.cfg.m
        results = list(pool.map(lambda p: self._piece_weights(p, s, shift, check), chunk))
        weights = np.concatenate([r[0] for r in results])
        where = [(t, p.groups[s]) for p in chunk for t in p.tiles]
        symbols = torch.from_numpy(step_fn(weights, where).astype(np.int64))
        o = 0
        for p in chunk:
            g = p.groups[s]
            n = len(p.tiles) * len(g) * m
            p.codes[:, :, torch.from_numpy(g)] = symbols[o : o + n].view(len(p.tiles), len(g), m).transpose(1, 2)
            p.visible[:, torch.from_numpy(g)] = True
            p.unrevealed = g
            o += n
        return min(r[1] for r in results)

    def _pad(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (m, h, w) -> per-window padded codes (n_windows, m, W*W)."""
        m, h, w = codes.shape
        W = self.cfg.window
        tiles = window_tiles(h, w, W)
        padded = torch.zeros(len(tiles), m, W * W, dtype=torch.long)
        for t, (y0, x0, hh, ww) in enumerate(tiles):
            padded[t].view(m, W, W)[:, :hh, :ww] = codes[:, y0 : y0 + hh, x0 : x0 + ww]
        return padded

    @staticmethod
    def _symbols(padded: torch.Tensor, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """The symbols of one step, in the order of the probability rows."""
        return np.concatenate([padded[t][:, torch.from_numpy(g)].T.reshape(-1).numpy() for t, g in where])

    def encode(self, codes: torch.Tensor, progress: Progress | None = None) -> tuple[bytes, int]:
        """Codes (m, h, w) -> (range-coded payload, grid shift). The first grid shift whose
        margin is safe is used (almost always 0); if none is, the safest."""
        padded = self._pad(codes)
        best: tuple[float, bytes, int] | None = None
        for shift in range(pmf.GRID_SHIFTS):
            enc = constriction.stream.queue.RangeEncoder()

            def step(weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
                symbols = self._symbols(padded, where)
                enc.encode(symbols.astype(np.int32), self.family, weights)
                return symbols

            decoded, margin = self._replay(codes.shape[1], codes.shape[2], shift, step, check=True, progress=progress)
            assert torch.equal(decoded, codes), "internal error: replay diverged from the codes"
            payload = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the decoder pads zeros back
            if margin >= pmf.MARGIN:
                return payload, shift
            if best is None or margin > best[0]:
                best = (margin, payload, shift)
        assert best is not None
        return best[1], best[2]

    def information_bits(self, codes: torch.Tensor, shift: int = 0) -> float:
        """Sum of -log2 p(code) under the model: what an ideal entropy coder would spend."""
        padded = self._pad(codes)
        total = [0.0]

        def step(weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            symbols = self._symbols(padded, where)
            total[0] += float(pmf.symbol_bits(weights, symbols).sum())
            return symbols

        self._replay(codes.shape[1], codes.shape[2], shift, step)
        return total[0]

    def decode(self, payload: bytes, h: int, w: int, shift: int = 0, progress: Progress | None = None) -> torch.Tensor:
        """Range-coded payload -> codes (m, h, w). Raises CorruptPayloadError as soon as the
        decoded codes would carry more information than the payload holds."""
        padded = payload + b"\0" * (-len(payload) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        dec = constriction.stream.queue.RangeDecoder(words)
        budget = 8 * len(payload) * BUDGET_FACTOR + BUDGET_SLACK_BITS
        spent = [0.0]

        def step(weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            try:
                symbols = np.asarray(dec.decode(self.family, weights))
            except Exception as e:  # constriction reports invalid data with various types
                raise CorruptPayloadError(f"payload cannot be decoded: {e}") from None
            spent[0] += float(pmf.symbol_bits(weights, symbols).sum())
            if spent[0] > budget:
                raise CorruptPayloadError(f"payload too short ({len(payload)} bytes) for the image size in the header: the file is corrupted or its header is wrong")
            return symbols

        return self._replay(h, w, shift, step, progress=progress)[0]
