"""Arithmetic coding of a code grid with the MIM transformer as entropy model.

Every operation here is one replay of the coding steps (pqmim.entropy.replay) with its own
`CodingPass`: encoding range-codes the known codes with constriction, all symbols of a call in
one vectorised call; decoding reads them back; counting adds up -log2 p; sizing seals the
encoder after each step. The probabilities are integer tables computed from float64 logits on a
grid (`pmf.py`), so they are the same on any machine.

A block-causal model (`ModelConfig.causal`) keeps the keys and values of the revealed codes of
each piece of windows (`KVCache`): a step computes the content stream of the group revealed last
and the query stream of the group coded now, instead of the whole window again.

Codes that are not sent (the steps from `sent` on: a file written with --send-steps, or a file
cut short) are filled in by the same replay: at each such step the transformer's integer tables
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

from dataclasses import dataclass

import constriction
import numpy as np
import torch

from ..models import PQMIM
from . import pmf
from .replay import CodingPass, Decoded, Layout, Progress, Replayer, StopReplay, Where


class CorruptPayloadError(ValueError):
    """The range decoder could not decode the payload."""


class ReplayDivergedError(RuntimeError):
    """The encoder's replay did not reproduce the codes it was given: a bug, never a user's input."""


@dataclass(frozen=True)
class Encoded:
    payload: bytes  # range-coded codes of the steps sent, trailing zero bytes dropped
    shift: int  # the grid shift the tables were built with
    codes: torch.Tensor  # (m, h, w): the codes the decoder will get (filled in past `sent`)
    step_bytes: tuple[int, ...] | None = None  # progressive: payload bytes that give steps <= s
    arithmetic: str = "integer"  # how the tables were computed (replay.ARITHMETICS)


# A payload cannot hold codes carrying more information than its own bits (plus the trailing
# zero bytes dropped on encode and constriction's rounding): decoding stops as soon as it would,
# so a header that lies about the image size costs little time.
BUDGET_FACTOR = 1.02
BUDGET_SLACK_BITS = 256

FAMILY = constriction.stream.model.Categorical(perfect=False)  # tables given per call, as integer weights


def sealed_size(enc) -> int:
    """Bytes of the payload if coding ended here (get_compressed seals a copy: coding goes on)."""
    return len(enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0"))


def range_decoder(payload: bytes):
    padded = payload + b"\0" * (-len(payload) % 4)
    return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))


class _Encode(CodingPass):
    """Range-codes the known codes; with `progressive`, keeps each call's tables and the size of
    the sealed coder after each step (for the prefix lengths)."""

    def __init__(self, padded: torch.Tensor, sent: int, progressive: bool = False, sizes: bool = False, limit: int | None = None) -> None:
        self.padded, self.sent, self.progressive, self.limit = padded, sent, progressive, limit
        self.sizes = sizes or progressive  # record the sealed size after each step
        self.enc = constriction.stream.queue.RangeEncoder()
        self.calls: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(sent)]  # per step: (compact tables, codes)
        self.sealed: list[int] = []  # payload bytes after each step sent (when `sizes`)

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        symbols = Layout.symbols(self.padded, where)
        self.enc.encode(symbols.astype(np.int32), FAMILY, tables)
        if self.progressive:
            self.calls[step].append((pmf.compact(tables), symbols))
        return symbols

    def step_done(self, step: int) -> None:
        if self.sizes and step < self.sent:
            self.sealed.append(sealed_size(self.enc))
            if self.limit is not None and self.sealed[-1] > self.limit:
                raise StopReplay

    def payload(self) -> bytes:
        return self.enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the decoder pads zeros back


class _Decode(CodingPass):
    """Reads the codes back; refuses a payload whose codes would carry more information than
    its bits (a corrupted file, or a header that lies about the image size)."""

    def __init__(self, payload: bytes) -> None:
        self.dec, self.size = range_decoder(payload), len(payload)
        self.budget, self.spent = 8 * len(payload) * BUDGET_FACTOR + BUDGET_SLACK_BITS, 0.0

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        try:
            symbols = np.asarray(self.dec.decode(FAMILY, tables))
        except Exception as e:  # constriction reports invalid data with various types
            raise CorruptPayloadError(f"payload cannot be decoded: {e}") from None
        self.spent += float(pmf.symbol_bits(tables, symbols).sum())
        if self.spent > self.budget:
            raise CorruptPayloadError(
                f"payload too short ({self.size} bytes) for the image size in the header: the file is corrupted or its header is wrong"
            )
        return symbols


class _Count(CodingPass):
    """Adds up -log2 p(code) of the known codes: what an ideal entropy coder would spend."""

    def __init__(self, padded: torch.Tensor) -> None:
        self.padded, self.bits = padded, 0.0

    def symbols(self, step: int, tables: np.ndarray, where: Where) -> np.ndarray:
        symbols = Layout.symbols(self.padded, where)
        self.bits += float(pmf.symbol_bits(tables, symbols).sum())
        return symbols


class MIMCoder:
    def __init__(self, model: PQMIM, device: torch.device | str = "cpu") -> None:
        self.cfg = model.cfg
        self.replayer = Replayer(model, device)

    @property
    def entropy(self) -> torch.nn.Module:
        """The float64 entropy model the tables of version 2 and 3 files come from."""
        return self.replayer.entropy

    def layout(self, h: int, w: int) -> Layout:
        return Layout.of(h, w, self.cfg.window)

    def _sent(self, sent: int | None) -> int:
        steps = self.cfg.steps
        if sent is None:
            return steps
        if not 0 <= sent <= steps:
            raise ValueError(f"steps sent must be 0 to {steps}, got {sent}")
        return sent

    def encode(
        self,
        codes: torch.Tensor,
        progress: Progress | None = None,
        sent: int | None = None,
        fill: int = 0,
        progressive: bool = False,
        arithmetic: str = "integer",
    ) -> Encoded:
        """Codes (m, h, w) -> the payload of the first `sent` steps (all by default), the grid
        shift, and the codes the decoder will get (the ones past `sent` filled in with `fill`);
        with `progressive`, also the prefix length that decodes each step sent. In float64
        arithmetic, the first grid shift whose margin is safe is used (almost always 0; if none
        is, the safest); integer arithmetic needs no margin (its logits are exact): shift 0."""
        sent = self._sent(sent)
        layout = self.layout(codes.shape[1], codes.shape[2])
        padded = layout.pad(codes)
        best: tuple[float, Encoded] | None = None
        check = arithmetic == "float64"
        for shift in range(pmf.GRID_SHIFTS if check else 1):
            coding = _Encode(padded, sent, progressive)
            replayed, margin = self.replayer.run(
                layout, coding, shift=shift, sent=sent, fill=fill, check=check, progress=progress, arithmetic=arithmetic
            )
            if sent == self.cfg.steps and not torch.equal(replayed.codes, codes):
                raise ReplayDivergedError("internal error: the coder's replay diverged from the codes it was given")
            payload = coding.payload()
            step_bytes = tuple(self._prefix_lengths(payload, coding.sealed, coding.calls)) if progressive else None
            result = Encoded(payload, shift, replayed.codes, step_bytes, arithmetic)
            if margin >= pmf.MARGIN:
                return result
            if best is None or margin > best[0]:
                best = (margin, result)
        return best[1]  # GRID_SHIFTS >= 1: the loop ran

    def _prefix_lengths(self, payload: bytes, sealed: list[int], calls: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[int]:
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
            while n < len(payload) and not self._prefix_decodes(payload[:n], calls[: s + 1]):
                n += 1
            out.append(min(n, len(payload)))
        return out

    @staticmethod
    def _prefix_decodes(prefix: bytes, calls: list[list[tuple[np.ndarray, np.ndarray]]]) -> bool:
        dec = range_decoder(prefix)
        try:
            return all(np.array_equal(np.asarray(dec.decode(FAMILY, pmf.expand(t))), y) for step in calls for t, y in step)
        except Exception:  # constriction refuses some prefixes outright: not this length
            return False

    def sealed_sizes(self, codes: torch.Tensor, limit: int | None = None, arithmetic: str = "integer") -> list[int]:
        """Payload bytes of a file that sends the first s steps, for s = 1, 2, ...: the range
        coder sealed after each step (grid shift 0). Stops after the first size over `limit`."""
        layout = self.layout(codes.shape[1], codes.shape[2])
        coding = _Encode(layout.pad(codes), self.cfg.steps, sizes=True, limit=limit)
        self.replayer.run(layout, coding, arithmetic=arithmetic)
        return coding.sealed

    def information_bits(self, codes: torch.Tensor, shift: int = 0, arithmetic: str = "integer") -> float:
        """Sum of -log2 p(code) under the model: what an ideal entropy coder would spend."""
        layout = self.layout(codes.shape[1], codes.shape[2])
        coding = _Count(layout.pad(codes))
        self.replayer.run(layout, coding, shift=shift, arithmetic=arithmetic)
        return coding.bits

    def decode(
        self,
        payload: bytes,
        h: int,
        w: int,
        shift: int = 0,
        progress: Progress | None = None,
        sent: int | None = None,
        fill: int = 0,
        arithmetic: str = "integer",
    ) -> Decoded:
        """Range-coded payload of the first `sent` steps (all by default) -> codes (m, h, w), the
        rest filled in with `fill`. Raises CorruptPayloadError as soon as the decoded codes would
        carry more information than the payload holds."""
        sent = self._sent(sent)
        return self.replayer.run(
            self.layout(h, w), _Decode(payload), shift=shift, sent=sent, fill=fill, progress=progress, arithmetic=arithmetic
        )[0]
