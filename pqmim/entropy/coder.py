"""Arithmetic coding of a code grid with the MIM transformer as entropy model.

Encoder and decoder run the very same loop (`_replay`): at step s, for every window, the
transformer sees the codes revealed at steps < s and gives M categorical distributions for each
position of group s; all symbols of the step go through constriction's range coder in one
vectorised call. The probabilities are integer tables computed from float64 logits on a grid
(`pmf.py`), so they are the same on any machine; on top of that, each window is computed on its
own with fixed shapes and single-threaded ops (windows are spread over worker threads), so on
one machine the float64 logits themselves do not depend on the thread count or on how many
windows or images are coded together.
"""

from __future__ import annotations

import contextlib
import copy
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import constriction
import numpy as np
import torch

from ..models import PQMIM
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

StepFn = Callable[[np.ndarray, list[tuple[int, np.ndarray]]], np.ndarray]
Progress = Callable[[int, int], None]  # (calls to the range coder done, calls in all)


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class MIMCoder:
    def __init__(self, model: PQMIM, device: torch.device | str = "cpu") -> None:
        self.cfg = model.cfg
        self.device = torch.device(device)  # a GPU computes the same float64 logits within the margin
        self.entropy = copy.deepcopy(model.entropy).double().eval().to(self.device)  # float64: see pmf.py
        self.family = constriction.stream.model.Categorical(perfect=False)

    @torch.no_grad()
    def _window_weights(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor, idx: np.ndarray, shift: int, check: bool) -> tuple[np.ndarray, float]:
        """Integer weights (len(idx) * m, k), as exact float32, of the codes at flat positions idx
        of one window; and, if `check`, the logits' smallest distance to a grid boundary."""
        d = self.device
        h = self.entropy.hidden(codes.to(d), visible.to(d), valid.to(d), torch.from_numpy(idx).to(d))[0]
        logits = self.entropy.logits(h).reshape(-1, self.cfg.k).cpu()
        weights = pmf.integer_weights(logits, shift).to(torch.float32).numpy()
        return weights, pmf.margin(logits, shift) if check else math.inf

    def _replay(self, h: int, w: int, shift: int, step_fn: StepFn, check: bool = False, progress: Progress | None = None) -> tuple[torch.Tensor, float]:
        """Run the coding steps; returns the codes (m, h, w) and, if `check`, the margin."""
        cfg = self.cfg
        W, m = cfg.window, cfg.m
        tiles = window_tiles(h, w, W)
        n_t = len(tiles)
        buf = torch.zeros(n_t, m, W * W, dtype=torch.long)
        visible = torch.zeros(n_t, W * W, dtype=torch.bool)
        valid = torch.zeros(n_t, W, W, dtype=torch.bool)
        groups = []
        for t, (_, _, hh, ww) in enumerate(tiles):
            valid[t, :hh, :ww] = True
            groups.append(reveal_groups(hh, ww, W, cfg.steps, cfg.alpha))
        workers = max(1, torch.get_num_threads())
        margin = math.inf
        plan = [[(t, groups[t][s]) for t in range(n_t) if len(groups[t][s])] for s in range(cfg.steps)]
        calls = [where[i : i + WINDOWS_PER_CALL] for where in plan for i in range(0, len(where), WINDOWS_PER_CALL)]
        with single_threaded_ops(), ThreadPoolExecutor(workers) as pool:
            for done, chunk in enumerate(calls, 1):
                margin = min(margin, self._step(pool, buf, visible, valid, chunk, shift, step_fn, check))
                if progress is not None:
                    progress(done, len(calls))
        out = torch.zeros(m, h, w, dtype=torch.long)
        for t, (y0, x0, hh, ww) in enumerate(tiles):
            out[:, y0 : y0 + hh, x0 : x0 + ww] = buf[t].view(m, W, W)[:, :hh, :ww]
        return out, margin

    def _step(self, pool, buf, visible, valid, where, shift, step_fn, check) -> float:
        m, W = self.cfg.m, self.cfg.window

        def weights_of(tg: tuple[int, np.ndarray]) -> tuple[np.ndarray, float]:
            t, g = tg
            return self._window_weights(buf[t : t + 1].view(1, m, W, W), visible[t : t + 1].view(1, W, W), valid[t : t + 1], g, shift, check)

        results = list(pool.map(weights_of, where))
        weights = np.concatenate([r[0] for r in results])
        symbols = torch.from_numpy(step_fn(weights, where).astype(np.int64))
        o = 0
        for t, g in where:
            n = len(g) * m
            buf[t][:, torch.from_numpy(g)] = symbols[o : o + n].view(len(g), m).T
            visible[t, torch.from_numpy(g)] = True
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
