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

Codes that are not sent (the steps from `sent` on: a file written with --send-steps, or a file
cut short) are filled in by the same loop: at each such step the transformer's integer tables
give a code drawn with the seed `fill - 1` (fill >= 1) or, for fill 0, the most likely code
(`fill_symbols`), so encoder and decoder fill in the very same codes on any machine where they
code the same. With fill 0 those codes are only the context of the later steps: the image is
synthesised from the expected code word under the table (`Decoded.expected`), which gives a
better PSNR than the most likely codes themselves (`python -m bench progressive`, its fill
table).

A progressive file records, for each step s, a number of payload bytes from which the decoder
gets the codes of steps <= s right (`Encoded.step_bytes`): the size of the coder sealed after
that step, checked by decoding that prefix of the payload (`_prefix_lengths`), so the figures
are verified, not estimated.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import constriction
import numpy as np
import torch

from ..models import PQMIM
from ..models.transformer import KVCache
from ..threads import fixed_pieces
from . import pmf
from .schedule import reveal_groups, splitmix64, window_tiles


class CorruptPayloadError(ValueError):
    """The range decoder could not decode the payload."""


class _Stop(Exception):
    """Raised by a step hook to end the replay early (see `sealed_sizes`)."""


@dataclass(frozen=True)
class Decoded:
    codes: torch.Tensor  # (m, h, w)
    filled: torch.Tensor | None = None  # (h, w) bool: positions filled in with fill 0
    expected: torch.Tensor | None = None  # (h, w, m * sub_dim) float32: their expected code words


@dataclass(frozen=True)
class Encoded:
    payload: bytes  # range-coded codes of the steps sent, trailing zero bytes dropped
    shift: int  # the grid shift the tables were built with
    codes: torch.Tensor  # (m, h, w): the codes the decoder will get (filled in past `sent`)
    step_bytes: tuple[int, ...] | None = None  # progressive: payload bytes that give steps <= s


def fill_symbols(weights: np.ndarray, where: list[tuple[int, np.ndarray]], m: int, window: int, fill: int) -> np.ndarray:
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

StepFn = Callable[[int, np.ndarray, list[tuple[int, np.ndarray]]], np.ndarray]  # (step, tables, windows) -> codes
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
        self.codebooks = model.quantizer.codebooks.detach().double().cpu()  # (m, k, sub_dim): expected code words

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

    def _replay(self, h: int, w: int, shift: int, step_fn: StepFn, sent: int | None = None, fill: int = 0, check: bool = False,
                progress: Progress | None = None, step_done: Callable[[int], None] | None = None) -> tuple[Decoded, float]:
        """Run the coding steps; returns the codes and, if `check`, the margin. In each
        step the symbols go to the range coder window by window in raster order (the format's
        order), in calls of at most WINDOWS_PER_CALL windows. Steps from `sent` on are filled in
        (`fill_symbols`) instead of going through `step_fn`; `step_done(s)` is called after
        step s (it may raise _Stop to end the replay there)."""
        cfg = self.cfg
        W, m = cfg.window, cfg.m
        sent = cfg.steps if sent is None else sent
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

        filled = expected = None
        if sent < cfg.steps and fill == 0:
            filled = torch.zeros(h, w, dtype=torch.bool)
            expected = torch.zeros(h, w, m * self.codebooks.shape[2])

        def fill_fn(s: int, weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            if expected is not None:  # float64 expectation of each sub-vector's code word under its table
                p = torch.from_numpy(weights).double().view(-1, m, cfg.k)
                mean = torch.einsum("njk,jkd->njd", p / p.sum(dim=2, keepdim=True), self.codebooks).reshape(-1, expected.shape[2]).float()
                ys = torch.from_numpy(np.concatenate([tiles[t][0] + g // W for t, g in where]))
                xs = torch.from_numpy(np.concatenate([tiles[t][1] + g % W for t, g in where]))
                expected[ys, xs] = mean
                filled[ys, xs] = True
            return fill_symbols(weights, where, m, W, fill)

        with fixed_pieces() as pool:
            try:
                for s in range(cfg.steps):
                    for done in (i for i, t in enumerate(steps_of_call) if t == s):
                        margin = min(margin, self._step(pool, calls[done], s, shift, step_fn if s < sent else fill_fn, check))
                        if progress is not None:
                            progress(done + 1, len(calls))
                    if step_done is not None:
                        step_done(s)
            except _Stop:
                pass
        out = torch.zeros(m, h, w, dtype=torch.long)
        for p in parts:
            for b, t in enumerate(p.tiles):
                y0, x0, hh, ww = tiles[t]
                out[:, y0 : y0 + hh, x0 : x0 + ww] = p.codes[b].view(m, W, W)[:, :hh, :ww]
        return Decoded(out, filled, expected), margin

    def _step(self, pool, chunk: list[_Piece], s: int, shift, step_fn, check) -> float:
        m = self.cfg.m
        results = list(pool.map(lambda p: self._piece_weights(p, s, shift, check), chunk))
        weights = np.concatenate([r[0] for r in results])
        where = [(t, p.groups[s]) for p in chunk for t in p.tiles]
        symbols = torch.from_numpy(step_fn(s, weights, where).astype(np.int64))
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

    def _sent(self, sent: int | None) -> int:
        steps = self.cfg.steps
        if sent is None:
            return steps
        if not 0 <= sent <= steps:
            raise ValueError(f"steps sent must be 0 to {steps}, got {sent}")
        return sent

    def encode(self, codes: torch.Tensor, progress: Progress | None = None, sent: int | None = None, fill: int = 0,
               progressive: bool = False) -> Encoded:
        """Codes (m, h, w) -> the payload of the first `sent` steps (all by default), the grid
        shift, and the codes the decoder will get (the ones past `sent` filled in with `fill`);
        with `progressive`, also the prefix length that decodes each step sent. The first grid
        shift whose margin is safe is used (almost always 0); if none is, the safest."""
        sent = self._sent(sent)
        padded = self._pad(codes)
        best: tuple[float, Encoded] | None = None
        for shift in range(pmf.GRID_SHIFTS):
            enc = constriction.stream.queue.RangeEncoder()
            steps: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(sent)]  # progressive: (tables, symbols) of each call
            sealed: list[int] = []  # progressive: payload bytes after each step sent

            def step(s: int, weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
                symbols = self._symbols(padded, where)
                enc.encode(symbols.astype(np.int32), self.family, weights)
                if progressive:
                    steps[s].append((pmf.compact(weights), symbols))
                return symbols

            def step_done(s: int) -> None:
                if progressive and s < sent:
                    sealed.append(self._sealed_size(enc))

            replayed, margin = self._replay(codes.shape[1], codes.shape[2], shift, step, sent, fill, check=True, progress=progress, step_done=step_done)
            decoded = replayed.codes
            if sent == self.cfg.steps and not torch.equal(decoded, codes):
                raise RuntimeError("internal error: the coder's replay diverged from the codes it was given")
            payload = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the decoder pads zeros back
            step_bytes = tuple(self._prefix_lengths(payload, sealed, steps)) if progressive else None
            result = Encoded(payload, shift, decoded, step_bytes)
            if margin >= pmf.MARGIN:
                return result
            if best is None or margin > best[0]:
                best = (margin, result)
        assert best is not None
        return best[1]

    def _prefix_lengths(self, payload: bytes, sealed: list[int], steps: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[int]:
        """For each step s, a number of bytes of `payload` from which `decode` gets every code of
        steps <= s right: the size of the coder sealed after step s (what a file sending s + 1
        steps holds), checked by decoding that prefix; where the check fails, the next length
        that passes (the whole payload always does)."""
        out = []
        for s, n in enumerate(sealed):
            if s == len(sealed) - 1:  # the last step sent needs the whole payload
                out.append(len(payload))
                break
            n = max(n, out[-1] if out else 0)
            while n < len(payload) and not self._prefix_decodes(payload[:n], steps[: s + 1]):
                n += 1
            out.append(min(n, len(payload)))
        return out

    def _prefix_decodes(self, prefix: bytes, steps: list[list[tuple[np.ndarray, np.ndarray]]]) -> bool:
        dec = self._decoder(prefix)
        try:
            return all(np.array_equal(np.asarray(dec.decode(self.family, pmf.expand(t))), y) for calls in steps for t, y in calls)
        except Exception:  # constriction refuses some prefixes outright: not this length
            return False

    @staticmethod
    def _sealed_size(enc) -> int:
        """Bytes of the payload if coding ended here (get_compressed seals a copy: coding goes on)."""
        return len(enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0"))

    @staticmethod
    def _decoder(payload: bytes):
        padded = payload + b"\0" * (-len(payload) % 4)
        return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))

    def sealed_sizes(self, codes: torch.Tensor, limit: int | None = None) -> list[int]:
        """Payload bytes of a file that sends the first s steps, for s = 1, 2, ...: the range
        coder sealed after each step (grid shift 0). Stops after the first size over `limit`."""
        padded = self._pad(codes)
        enc = constriction.stream.queue.RangeEncoder()
        sizes: list[int] = []

        def step(s: int, weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            symbols = self._symbols(padded, where)
            enc.encode(symbols.astype(np.int32), self.family, weights)
            return symbols

        def step_done(s: int) -> None:
            sizes.append(self._sealed_size(enc))
            if limit is not None and sizes[-1] > limit:
                raise _Stop

        self._replay(codes.shape[1], codes.shape[2], 0, step, step_done=step_done)
        return sizes

    def information_bits(self, codes: torch.Tensor, shift: int = 0) -> float:
        """Sum of -log2 p(code) under the model: what an ideal entropy coder would spend."""
        padded = self._pad(codes)
        total = [0.0]

        def step(s: int, weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            symbols = self._symbols(padded, where)
            total[0] += float(pmf.symbol_bits(weights, symbols).sum())
            return symbols

        self._replay(codes.shape[1], codes.shape[2], shift, step)
        return total[0]

    def decode(self, payload: bytes, h: int, w: int, shift: int = 0, progress: Progress | None = None, sent: int | None = None,
               fill: int = 0) -> Decoded:
        """Range-coded payload of the first `sent` steps (all by default) -> codes (m, h, w), the
        rest filled in with `fill`. Raises CorruptPayloadError as soon as the decoded codes would
        carry more information than the payload holds."""
        sent = self._sent(sent)
        dec = self._decoder(payload)
        budget = 8 * len(payload) * BUDGET_FACTOR + BUDGET_SLACK_BITS
        spent = [0.0]

        def step(s: int, weights: np.ndarray, where: list[tuple[int, np.ndarray]]) -> np.ndarray:
            try:
                symbols = np.asarray(dec.decode(self.family, weights))
            except Exception as e:  # constriction reports invalid data with various types
                raise CorruptPayloadError(f"payload cannot be decoded: {e}") from None
            spent[0] += float(pmf.symbol_bits(weights, symbols).sum())
            if spent[0] > budget:
                raise CorruptPayloadError(f"payload too short ({len(payload)} bytes) for the image size in the header: the file is corrupted or its header is wrong")
            return symbols

        return self._replay(h, w, shift, step, sent, fill, progress=progress)[0]
