"""Integer arithmetic for the entropy model: the same logits, bit for bit, on every machine.

Files of bitstream versions 4 and 5 (FORMAT.md) build their probability tables from the logits
of `IntegerTransformer`, a copy of the model's MIM transformer (same weights, same layers, same
coding paths `advance` and `hidden`) whose arithmetic is fixed here instead of left to BLAS:

- every linear layer: each input row is rounded to 7-bit integers under a power-of-two scale
  (`quantize`, int8) and multiplied by the weights rounded to int8 per output channel
  (`quantize_int8`, what int8 model files store), then scaled back in float32. The CPU takes
  the faster of two exact kernels for the same integer sums (`linear_kernel`): int32
  (`torch._int_mm`, fast where the CPU has int8 dot-product instructions, VNNI or AMX) or a
  float32 product (sums below 2**24: exact; about 30 times `_int_mm`'s speed on a CPU with
  AVX2 only, where `_int_mm` has no fast kernel);
- attention: q and k rounded to 9-bit integers per row and head, v per head and channel over
  the keys; the softmax's exp read from a table as integer weights, the probabilities rounded
  to 14 bits; both products are sums of integers below 2**24 (exact in float32, whatever the
  order); a query's own key (block-causal models) is scored beside the shared keys;
- layer norm: the row's sum and sum of squares over 20-bit integers, in float64 (exact), then
  IEEE 754 division and square root; GELU: x * Phi(x), Phi the nearest of a table's entries.

Invariant: non-integer values only go through operations whose result IEEE 754 fixes bit for
bit (+, -, *, /, sqrt, floor, round, max, comparisons, table lookups, multiplication by powers
of two), never through a float sum whose order a library picks, nor through exp or erf; sums
are of integers whose partial sums are exact. So the logits do not depend on the machine, the
BLAS, the SIMD width, the thread count or the batch (and on a GPU the integer products run as
float64 products of the same integers, exact too). The exp table comes from `decimal`
(pmf.exp_table); the Phi table from `math.erf`, rounded to a grid where every entry is checked to
lie far from a rounding boundary, so any libm within a few ulps gives the same table (or the
codec refuses to start).

Activations are float32, as the models were trained. The approximations (7-bit inputs of the
linear layers, 9-bit attention, tables) move the logits by up to about 0.2 nat, yet the rate is
that of the float64 path (-0.0003% on Kodak: FORMAT.md), so a model needs no retraining.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..config import ModelConfig
from ..models.transformer import Block, KVCache, MIMTransformer
from ..models.weights import quantize_int8
from . import pmf

LINEAR_BITS = 7  # linear inputs: int8 (|v| < 2**7; 14 bits in two halves measured the same rate)
QK_BITS = 9  # q, k and v: integers of |v| < 2**9
P_BITS = 14  # attention weights: integers up to 2**14, then probabilities summing to about 2**14
NORM_BITS = 20  # layer norm inputs: integers of |v| < 2**20 (squares summed exactly in float64)
EXP_STEPS = 256  # softmax table: integer weights 2**14 exp(-d) at d = j / 256 ...
EXP_RANGE = 12  # ... up to d = 12 (beyond: weight 0, as 2**14 exp(-d) rounds to 0 from d = 10.4)
PHI_STEPS = 256  # GELU table: Phi(x) at x = -8 + j / 256, j = 0 .. 4096, the nearest entry (outside [-8, 8]: the end's)
PHI_RANGE = 8


# True: every exact product is computed as a float64 matrix product (as on a GPU) instead of
# int8 or float32 kernels; the results must not change (tests, `python -m bench exactness`).
FLOAT64_PRODUCTS = False

# The linear layers' kernel on the CPU: "int8" (torch._int_mm), "float32", or None: the faster
# of the two here, timed once per process (`linear_kernel`). Either gives the same integers.
LINEAR_KERNEL: str | None = None
_TIMED_KERNEL: str | None = None


def linear_kernel() -> str:
    """LINEAR_KERNEL, or (None) whichever of int8 and float32 products of int8 integers is faster
    on this CPU, timed once on a product of a small layer's size (a few ms; the second of two
    calls each, the first warming up). Only speed depends on it: both are exact."""
    global _TIMED_KERNEL
    if LINEAR_KERNEL is not None:
        return LINEAR_KERNEL
    if _TIMED_KERNEL is None:
        a = torch.ones(256, 192, dtype=torch.int8)
        b = torch.ones(192, 192, dtype=torch.int8)
        fa, fb = a.float(), b.float()
        seconds = {}
        for name, run in (("int8", lambda: torch._int_mm(a, b)), ("float32", lambda: fa @ fb)):
            for _ in range(2):
                start = time.perf_counter()
                run()
                seconds[name] = time.perf_counter() - start
        _TIMED_KERNEL = min(seconds, key=seconds.get)
    return _TIMED_KERNEL


def inverse_step(top: torch.Tensor, bits: int) -> torch.Tensor:
    """2**(bits - e) for maxima `top` (float32, >= 0), e the smallest with top < 2**e (maxima
    below 2**-100 count as 2**-100). Exact: the mantissa m of top = m * 2**e, divided by top,
    is exactly 2**-e."""
    top = top.clamp(min=2.0**-100)
    return torch.frexp(top).mantissa / top * 2.0**bits


def quantize(x: torch.Tensor, bits: int, dim: int = -1, inv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) -> (integers v, |v| <= 2**bits - 1 <= 2**24, as float32; step) with x ~ v * step,
    step = 2**(e - bits) shared along `dim` (keepdim), e the smallest with max |x| < 2**e
    (`inverse_step`; or given as `inv` = 1 / step)."""
    if inv is None:
        inv = inverse_step(x.abs().amax(dim, keepdim=True), bits)
    limit = 2**bits - 1
    return torch.round(x * inv).clamp_(-limit, limit), 1 / inv


def rounded(x: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """x rounded to `bits`-bit integers times a power of two shared along `dim` (`quantize`):
    dot products along `dim` of two such tensors are sums of integers times one power of two,
    exact in float32 while the integer sums stay below 2**24."""
    v, step = quantize(x, bits, dim)
    return v * step


def int_product(a: torch.Tensor, b: torch.Tensor, bound: float) -> torch.Tensor:
    """a @ b (float32) for float32 tensors of integers times powers of two shared by each dot
    product (`rounded`), whose integer partial sums stay within `bound` < 2**24: exact, hence
    the same on every machine. Float32 products on the CPU (full precision unless the user
    lowered torch's float32 matmul precision), float64 elsewhere (a GPU may round float32
    inputs to TF32), rounded back to float32 exactly."""
    if bound >= 2**24:
        raise ValueError("integer product too large to be exact in float32")
    if a.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest" and not FLOAT64_PRODUCTS:
        return torch.matmul(a, b)
    return torch.matmul(a.double(), b.double()).float()


def _checked_table(values: list[float], scale: float, what: str) -> torch.Tensor:
    """round(v * scale) for each value (of a function `decimal` lacks: erf), as float64, refusing if any v * scale lies within
    2**-16 of a rounding boundary (a libm a few ulps off could then round it the other way)."""
    out = []
    for v in values:
        t = v * scale
        if abs(t - math.floor(t) - 0.5) < 2**-16:
            raise RuntimeError(f"the {what} table cannot be built reproducibly on this machine (entry {v!r})")
        out.append(round(t))
    return torch.tensor(out, dtype=torch.float64)


_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _table(name: str, device: torch.device) -> torch.Tensor:
    """The exp table (float32 integer weights round(2**14 exp(-j / EXP_STEPS)), 0 at the end)
    or the Phi table (float32), built once per device."""
    if (name, device) not in _TABLES:
        if name == "exp":  # with pmf's (decimal) table builder, then 0
            t = torch.cat([pmf.exp_table(EXP_STEPS, P_BITS, EXP_RANGE * EXP_STEPS), torch.zeros(1, dtype=torch.int64)]).float()
        else:  # Phi(x) = (1 + erf(x / sqrt 2)) / 2 on a grid of 2**-32
            n = 2 * PHI_RANGE * PHI_STEPS + 1
            t = (
                _checked_table([(1 + math.erf((j / PHI_STEPS - PHI_RANGE) / math.sqrt(2))) / 2 for j in range(n)], 2.0**32, "GELU")
                * 2.0**-32
            )
            t = t.float()
        _TABLES[name, device] = t.to(device)
    return _TABLES[name, device]


def _nearest(name: str, t: torch.Tensor) -> torch.Tensor:
    """The table's entries nearest to positions t (float32, within [0, len - 1]; overwritten):
    index floor(t + 1/2), as int32 (four bytes an element: these tensors are the largest)."""
    return _table(name, t.device).index_select(0, t.add_(0.5).int().view(-1)).view(t.shape)


class IntegerLinear(nn.Module):
    """nn.Linear with int8 weights and int8 (7-bit) inputs, multiplied exactly (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_int8(linear.weight.detach().float().cpu())
        self.register_buffer("weight_t", q.t().contiguous())  # (in, out) int8
        self.register_buffer("weight_tf", self.weight_t.float(), persistent=False)  # the same integers, float32
        self.register_buffer("scale", scale)  # (out,) float32
        self.register_buffer("bias", linear.bias.detach().float().cpu())
        if linear.in_features > 1024:  # 1024 * 127 * 127 < 2**24
            raise ValueError("integer linear layers take at most 1024 inputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        v, step = quantize(x.reshape(-1, shape[-1]), LINEAR_BITS)  # integers |v| <= 127, float32
        if v.device.type == "cpu" and not FLOAT64_PRODUCTS and linear_kernel() == "int8":
            acc = torch._int_mm(v.to(torch.int8), self.weight_t).float()  # int32 sums, below 2**24: exact in float32
        else:  # float32 on the CPU, float64 elsewhere: the same integer sums
            acc = int_product(v, self.weight_tf, self.weight_t.shape[0] * 127 * 127)
        return (acc * step * self.scale + self.bias).reshape(*shape[:-1], -1)


class IntegerLayerNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.register_buffer("weight", norm.weight.detach().float().cpu())
        self.register_buffer("bias", norm.bias.detach().float().cpu())
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, step = quantize(x, NORM_BITS)
        n, v64 = x.shape[-1], v.double()
        mean = v64.sum(-1, keepdim=True) / n  # sums of integers below 2**48 in float64: exact in any order
        var = (v64 * v64).sum(-1, keepdim=True) / n - mean * mean
        rstd = (1 / torch.sqrt(var.clamp_(min=0) + self.eps / (step.double() * step))).float()  # eps in units of step**2
        return (v - mean.float()) * rstd * self.weight + self.bias


class IntegerGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _nearest("phi", ((x + PHI_RANGE) * PHI_STEPS).clamp_(0, 2 * PHI_RANGE * PHI_STEPS))


class IntegerBlock(Block):
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Softmax attention on integers: q (B, h, n, dh) over the keys k, v (B, h, c, dh) that
        `mask` (broadcast to (B, h, n, c); None: all) lets each row see, and, with `own` = (k, v
        (B, h, n, dh), ok (n,) or (B, 1, n, 1) bool), over each row's own key where ok: the
        keys a row sees beside the shared ones (block-causal queries see themselves), without
        a score matrix for them. Scores and probabilities are float32, each value exact or
        rounded by one IEEE operation; the values share one scale per head and channel over
        every key given (own ones included)."""
        dh, c = q.shape[-1], k.shape[-2]
        qi = rounded(q, QK_BITS)
        scale = torch.tensor(EXP_STEPS / math.sqrt(dh), dtype=torch.float32)  # table steps per unit of q.k
        s = top = top_v = s_own = None
        if c:
            top_v = v.abs().amax(-2, keepdim=True)
            s = int_product(qi, rounded(k, QK_BITS).transpose(-1, -2), dh * (2**QK_BITS - 1) ** 2)
            if mask is not None:
                s.masked_fill_(~mask, -math.inf)
            top = s.amax(-1, keepdim=True)
        if own is not None:
            k_own, v_own, ok = own
            s_own = (qi * rounded(k_own, QK_BITS)).sum(-1, keepdim=True)  # integer sums below 2**24: exact
            s_own = s_own.masked_fill(~ok[:, None], -math.inf)
            top = s_own if top is None else torch.maximum(top, s_own)  # every row sees a key
            top_own_v = v_own.abs().amax(-2, keepdim=True)
            top_v = top_own_v if top_v is None else torch.maximum(top_v, top_own_v)
        inv = inverse_step(top_v, QK_BITS)
        out = total = None
        if c:  # d = top - s >= 0, inf where masked
            w = _nearest("exp", (top - s).mul_(scale).clamp_(max=EXP_RANGE * EXP_STEPS))  # integers <= 2**14
            total = w.sum(-1, keepdim=True, dtype=torch.float32 if c < 1023 else torch.float64)  # integers: exact (below 2**24 in float32)
        if own is not None:
            w_own = _nearest("exp", (top - s_own).mul_(scale).clamp_(max=EXP_RANGE * EXP_STEPS))
            total = w_own if total is None else total + w_own  # exact: integers below 2**24 (float32) or 2**53
        norm = 2.0**P_BITS / total.float()  # total is exact below 2**24 (up to 1023 keys)
        step = 2.0**-P_BITS / inv  # values as integers times 2**(e - 9 - 14)
        if c:
            values = quantize(v, QK_BITS, -2, inv)[0] * step
            out = int_product(torch.round(w * norm), values, (2**P_BITS + c + 1) * (2**QK_BITS - 1))
        if own is not None:
            own_out = torch.round(w_own * norm) * (quantize(v_own, QK_BITS, -2, inv)[0] * step)
            out = own_out if out is None else out + own_out  # both integers times one power of two: exact
        return out


class IntegerTransformer(MIMTransformer):
    """The coder's copy of a MIM transformer in integer arithmetic (float64 elsewhere)."""

    block = IntegerBlock

    def __init__(self, cfg: ModelConfig, entropy: MIMTransformer) -> None:
        super().__init__(cfg)
        self.load_state_dict(entropy.state_dict())
        self.float()
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, IntegerLinear(child))
                elif isinstance(child, nn.LayerNorm):
                    setattr(parent, name, IntegerLayerNorm(child))
                elif isinstance(child, nn.GELU):
                    setattr(parent, name, IntegerGELU())
        self.eval()

    def advance_padded(
        self,
        cache: KVCache,
        codes: torch.Tensor | None,
        revealed: torch.Tensor | None,
        seen: torch.Tensor | None,
        query: torch.Tensor,
        asked: torch.Tensor,
    ) -> torch.Tensor:
        """`advance` for windows whose groups differ (windows of several sizes in one batch): the
        codes (B, m, r1) revealed at flat positions `revealed` (B, r1), of which `seen` (B, r1) are
        real and the rest padding, and the queries at `query` (B, r2), real where `asked`. Padding
        rows are seen by no real row, and their values are zero (so they leave the values' scale
        alone): the real rows' hidden states are those of `advance` on each window alone.
        Returns (B, r2, d)."""
        b, r2 = query.shape
        r1 = 0 if codes is None else codes.shape[2]
        x = self.mask_emb + self.pos_emb[query]
        real = asked
        if r1:
            tok = codes.transpose(1, 2) + self.offsets  # B, r1, m
            x = torch.cat([self.embed(tok) + self.pos_emb[revealed], x], 1)
            real = torch.cat([seen, asked], 1)
        known = seen if cache.real is None else torch.cat([cache.real, seen], 1) if r1 else cache.real  # (B, c + r1)
        key_mask = None if known is None or bool(known.all()) else known[:, None, None, :]
        keep = real[:, None, :, None].to(x.dtype)  # zero values for padding rows
        asks = torch.arange(r1 + r2, device=x.device) >= r1  # rows that see their own key: the queries
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.heads(x)
            v = v * keep
            keys, values = cache.with_new(i, k[:, :, :r1], v[:, :, :r1])  # [cache; new content]: seen by every row
            if r1:
                cache.k[i], cache.v[i] = keys, values
            own = (k, v, asks)
            if i + 1 == len(self.blocks):  # the new content's last output is never used
                q, x, own = q[:, :, r1:], x[:, r1:], (k[:, :, r1:], v[:, :, r1:], asks[r1:])
            x = blk.update(x, blk.attend(q, keys, values, key_mask, own))
        if r1:
            cache.real = known
        return self.ln_f(x)

    def embed(self, tok: torch.Tensor) -> torch.Tensor:
        emb = self.tok_emb(tok)  # (..., m, d): added one by one, in a fixed order
        out = emb[..., 0, :]
        for j in range(1, emb.shape[-2]):
            out = out + emb[..., j, :]
        return out
