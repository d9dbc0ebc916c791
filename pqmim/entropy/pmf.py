"""Probabilities that encoder and decoder compute bit for bit, on any machine.

The range coder is exact integer arithmetic, so the decoder stays in step exactly when it is
handed the very same probability table as the encoder. A float softmax cannot promise that
across machines: BLAS kernels, SIMD widths and GPUs sum in different orders. So:

1. The transformer runs in float64, where two machines differ by ~1e-13 in a logit.
2. Each logit is snapped to a grid of step 1/16 nat (``floor(16 x + shift/4 + 1/2)``).
3. Everything after that is integer: the softmax is a table of ``exp(-d/16)`` computed with
   Python's ``decimal`` module (correctly rounded, hence the same everywhere), and the integer
   weights (at most 2**24, exact in float32) go to constriction, whose quantiser is
   deterministic for identical input bits.

Two machines snap a logit differently only if it lies within their float difference of a grid
boundary. The encoder measures the distance of every logit it uses to the nearest boundary;
if one is closer than `MARGIN`, it shifts the grid by a quarter step and codes again, and the
header records the shift. A file therefore decodes exactly on any machine whose float64
logits are within `MARGIN` (about 1.5e-11, a hundred times the error seen between backends)
of the encoder's. A 32-bit checksum of the codes catches anything beyond that.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np
import torch

from .grid import GRID_SHIFTS, STEPS_PER_NAT

MAX_DROP = 16 * STEPS_PER_NAT  # logits more than 16 nats below the row's maximum are clamped there
WEIGHT_BITS = 24
MARGIN = 2.0**-36  # in nats: every logit the encoder uses is at least this far from a boundary
MAX_SYMBOL_BITS = 24.0  # constriction gives every symbol at least 2**-24 (its precision)


def exp_table(steps: int, bits: int, count: int, least: int = 0) -> torch.Tensor:
    """max(least, round(2**bits * exp(-j / steps))) for j = 0 .. count - 1, int64, computed with
    `decimal` (correctly rounded, half to even): the same on every machine."""
    with localcontext() as ctx:
        ctx.prec = 50
        scale = Decimal(2**bits)
        values = [(Decimal(-j) / steps).exp() * scale for j in range(count)]
        ints = [max(least, int(v.to_integral_value(rounding=ROUND_HALF_EVEN))) for v in values]
    return torch.tensor(ints, dtype=torch.int64)


EXP_TABLE = exp_table(STEPS_PER_NAT, WEIGHT_BITS, MAX_DROP + 1, least=1)  # the tables' weights by drop d = max(q) - q


def _grid(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """Logits (float64) on the grid, plus 1/2: floor() of this is the snapped logit."""
    if logits.dtype != torch.float64:
        raise TypeError("logits must be float64")
    return logits * STEPS_PER_NAT + (shift / GRID_SHIFTS + 0.5)


def snap(logits: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Float64 logits -> the integers (as float64) the probability tables are built from."""
    return _grid(logits, shift).floor_()


EXP_TABLE_F32 = EXP_TABLE.to(torch.float32)  # exact: every entry is an integer <= 2**24


TABLE_VALUES = np.unique(EXP_TABLE.numpy()).astype(np.float32)  # the distinct weights, ascending (fewer than 256)


def compact(weights: np.ndarray) -> np.ndarray:
    """Integer weights (float32 rows from `integer_weights`) -> uint8 indices into TABLE_VALUES:
    a quarter of the memory, for tables kept after use (`expand` gives them back exactly)."""
    return np.searchsorted(TABLE_VALUES, weights).astype(np.uint8)


def expand(indices: np.ndarray) -> np.ndarray:
    return TABLE_VALUES[indices]


def integer_weights(logits: torch.Tensor, shift: int = 0, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Float64 logits (..., k) -> integer weights (..., k) in [1, 2**24]: the distribution each
    row gives the range coder (it need not be normalised). dtype int64, or float32 (exact,
    what constriction takes)."""
    q = snap(logits, shift)
    drop = q.sub_(q.amax(dim=-1, keepdim=True)).neg_().clamp_(max=MAX_DROP).long()  # max(q) - q, in place
    return (
        (EXP_TABLE_F32 if dtype == torch.float32 else EXP_TABLE).index_select(0, drop.view(-1)).view(drop.shape)
    )  # a gather, faster than [drop]


def margin(logits: torch.Tensor, shift: int) -> float:
    """Smallest distance, in nats, of any logit to a boundary of the grid with this shift."""
    g = _grid(logits, shift)
    frac = g - torch.floor(g)  # floor() changes value at the integers
    return float(torch.minimum(frac, 1 - frac).min()) / STEPS_PER_NAT


def symbol_bits(weights: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """-log2 p(symbol) of each row under its integer weights, capped at constriction's floor."""
    p = weights[np.arange(len(symbols)), symbols].astype(np.float64) / weights.sum(axis=1, dtype=np.float64)
    return np.minimum(-np.log2(p), MAX_SYMBOL_BITS)
