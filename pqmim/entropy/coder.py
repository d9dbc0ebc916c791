"""Arithmetic coding of a code grid with the MIM transformer as entropy model.

Encoder and decoder run the very same loop (`_replay`): at step s, for every window, the
transformer sees the codes revealed at steps < s and gives M categorical distributions for each
position of group s; all symbols of the step go through constriction's range coder in one
vectorised call. Each window is computed on its own, with fixed shapes, so the probabilities do
not depend on how many windows or images are coded together; and every torch op runs
single-threaded (windows are spread over worker threads instead), because a multi-threaded
kernel may sum in another order and desynchronise the decoder by one ulp.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import constriction
import numpy as np
import torch

from ..models import PQMIM
from .schedule import reveal_groups, window_tiles


class CorruptPayloadError(ValueError):
    """The range decoder could not decode the payload."""


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class MIMCoder:
    def __init__(self, model: PQMIM) -> None:
        self.model = model
        self.cfg = model.cfg
        self.family = constriction.stream.model.Categorical(perfect=False)

    @torch.no_grad()
    def _window_probs(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor, idx: np.ndarray) -> np.ndarray:
        """Probabilities (len(idx) * m, k), float32, of the codes at flat positions idx of one window."""
        ent = self.model.entropy
        h = ent.hidden(codes, visible, valid, torch.from_numpy(idx))[0]
        probs = torch.softmax(ent.logits(h).float(), dim=-1)
        return probs.reshape(-1, self.cfg.k).numpy()

    def _replay(self, h: int, w: int, step_fn: Callable[[np.ndarray, list[tuple[int, np.ndarray]]], np.ndarray]) -> torch.Tensor:
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
        with single_threaded_ops(), ThreadPoolExecutor(workers) as pool:
            for s in range(cfg.steps):
                where = [(t, groups[t][s]) for t in range(n_t) if len(groups[t][s])]
                if where:
                    self._step(pool, buf, visible, valid, where, step_fn)
        out = torch.zeros(m, h, w, dtype=torch.long)
        for t, (y0, x0, hh, ww) in enumerate(tiles):
            out[:, y0 : y0 + hh, x0 : x0 + ww] = buf[t].view(m, W, W)[:, :hh, :ww]
        return out

    def _step(self, pool, buf, visible, valid, where, step_fn) -> None:
        m, W = self.cfg.m, self.cfg.window

        def probs_of(tg: tuple[int, np.ndarray]) -> np.ndarray:
            t, g = tg
            return self._window_probs(buf[t : t + 1].view(1, m, W, W), visible[t : t + 1].view(1, W, W), valid[t : t + 1], g)

        probs = np.concatenate(list(pool.map(probs_of, where)))
        symbols = torch.from_numpy(step_fn(probs, where).astype(np.int64))
        o = 0
        for t, g in where:
            n = len(g) * m
            buf[t][:, torch.from_numpy(g)] = symbols[o : o + n].view(len(g), m).T
            visible[t, torch.from_numpy(g)] = True
            o += n

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

    def encode(self, codes: torch.Tensor) -> bytes:
        """Codes (m, h, w) -> range-coded payload."""
        padded = self._pad(codes)
        enc = constriction.stream.queue.RangeEncoder()

        def step(probs: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            symbols = self._symbols(padded, where)
            enc.encode(symbols.astype(np.int32), self.family, probs)
            return symbols

        decoded = self._replay(codes.shape[1], codes.shape[2], step)
        assert torch.equal(decoded, codes), "internal error: replay diverged from the codes"
        words = enc.get_compressed()
        return words.astype("<u4").tobytes().rstrip(b"\0")  # trailing zero bytes are restored on decode

    def information_bits(self, codes: torch.Tensor) -> float:
        """Sum of -log2 p(code) under the model: what an ideal entropy coder would spend."""
        padded = self._pad(codes)
        total = [0.0]

        def step(probs: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            symbols = self._symbols(padded, where)
            p = probs[np.arange(len(symbols)), symbols] / probs.sum(1)
            total[0] += float(-np.log2(p.astype(np.float64)).sum())
            return symbols

        self._replay(codes.shape[1], codes.shape[2], step)
        return total[0]

    def decode(self, payload: bytes, h: int, w: int) -> torch.Tensor:
        """Range-coded payload -> codes (m, h, w)."""
        padded = payload + b"\0" * (-len(payload) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        dec = constriction.stream.queue.RangeDecoder(words)

        def step(probs: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            try:
                return np.asarray(dec.decode(self.family, probs))
            except Exception as e:  # constriction reports invalid data with various types
                raise CorruptPayloadError(f"payload cannot be decoded: {e}") from None

        return self._replay(h, w, step)
