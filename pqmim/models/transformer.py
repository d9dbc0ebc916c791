"""The MIM entropy model: a bidirectional transformer that predicts masked codes from visible ones.

It works on windows of at most ``window x window`` latent positions (M2T-style): a latent grid
of any size is tiled into windows, each padded to the full window with positions excluded from
attention. A learned position embedding per window cell therefore covers every grid size.

Two attention patterns, set by ``ModelConfig.causal``:

- full (the paper's MIM): every position, revealed or masked, attends to every other; at each
  coding step the whole window is computed again.
- block-causal, two streams (M2T's causal variant, XLNet's two-stream attention): the
  *content* stream of a code revealed at step g attends to the content of codes revealed at
  steps <= g; the *query* stream of a position coded at step g (its mask embedding plus its
  position) attends to the content of codes revealed at steps < g and to itself, and gives
  its logits. Content activations never change once a code is revealed, so the coder keeps
  their keys and values (`KVCache`) and each step computes only the rows of one group.
  Training sees both streams of a whole window at once (`two_stream`); the coder's
  incremental path (`advance`, one call per step) computes the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, n, d) -> q, k, v, each (B, n_heads, n, d / n_heads)."""
        b, n, d = x.shape
        return self.qkv(self.ln1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Residual updates from the attention output y (B, n_heads, n, d / n_heads)."""
        b, n, d = x.shape
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, query: torch.Tensor | None = None) -> torch.Tensor:
        """With `query` (flat indices), only those rows are computed and returned: all positions
        still serve as keys and values."""
        q, k, v = self.heads(x)
        if query is not None:
            q, x = q[:, :, query], x[:, query]
        return self.update(x, self.attend(q, k, v, attn_mask))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q (B, h, n, dh) over k, v (B, h, c, dh); mask: True where a row may look."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class KVCache:
    """Keys and values (per layer, (B, n_heads, c, d / n_heads)) of the c codes revealed so far
    in a block-causal model's windows, in the order they were revealed."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.real: torch.Tensor | None = None  # (B, c) bool: which are codes, not padding (entropy/exact.py)

    def with_new(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys and values of `layer` followed by k and v."""
        if self.k[layer] is None:
            return k, v
        return torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)

    @property
    def size(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


class MIMTransformer(nn.Module):
    """Input: codes (B, m, W, W), which positions are visible (B, W, W) and which are real, not
    padding (B, W, W). Output: logits (B, W*W, m, k) of the m codes at every position."""

    block = Block  # the class of the layers (the coder's integer arithmetic has its own)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.m, self.k, self.window = cfg.m, cfg.k, cfg.window
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.m * cfg.k, d)  # one table per sub-codebook, stacked
        self.mask_emb = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Parameter(torch.zeros(cfg.window * cfg.window, d))
        self.blocks = nn.ModuleList(self.block(d, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.m * cfg.k)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.mask_emb, std=0.02)
        self.register_buffer("offsets", torch.tensor([i * cfg.k for i in range(cfg.m)]), persistent=False)  # weights.expected_state

    def embed(self, tok: torch.Tensor) -> torch.Tensor:
        """Codes (..., m), offset into the stacked tables -> the sum of their embeddings (..., d)."""
        return self.tok_emb(tok).sum(-2)

    def hidden(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, W*W, d), or (B, len(query), d) for the rows in `query` only
        (the last layer then skips every other row: the coder needs one group at a time)."""
        b = codes.shape[0]
        n = self.window * self.window
        tok = codes.reshape(b, self.m, n).transpose(1, 2) + self.offsets  # B, n, m
        x = self.embed(tok)
        x = torch.where(visible.reshape(b, n, 1), x, self.mask_emb.to(x.dtype))
        x = x + self.pos_emb
        # padding positions take no part as keys; every query row keeps at least one real key
        attn_mask = valid.reshape(b, 1, 1, n)
        for i, blk in enumerate(self.blocks):
            x = blk(x, attn_mask, query if i == len(self.blocks) - 1 else None)
        return self.ln_f(x)

    # -- block-causal models
    def two_stream(self, codes: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Training path of a block-causal model. codes (B, m, W, W); group (B, W, W): the step
        at which each position is coded; valid (B, W, W). Returns the query stream's logits
        (B, W*W, m, k): those of each position given the codes of earlier groups."""
        b = codes.shape[0]
        n = self.window * self.window
        tok = codes.reshape(b, self.m, n).transpose(1, 2) + self.offsets  # B, n, m
        content = self.embed(tok) + self.pos_emb
        query = (self.mask_emb + self.pos_emb).to(content.dtype).expand(b, n, -1)
        x = torch.cat([content, query], 1)  # B, 2n, d
        mask = self.two_stream_mask(group.reshape(b, n), valid.reshape(b, n))
        for blk in self.blocks:
            x = blk(x, mask)
        return self.logits(self.ln_f(x[:, n:]))

    @staticmethod
    def two_stream_mask(group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Attention mask (B, 1, 2n, 2n) of [content; query] rows over [content; query] keys."""
        b, n = group.shape
        g_row, g_col, key_ok = group[:, :, None], group[:, None, :], valid[:, None, :]
        content_content = (g_col <= g_row) & key_ok  # a row always sees itself (no empty row)
        query_content = (g_col < g_row) & key_ok
        eye = torch.eye(n, dtype=torch.bool, device=group.device).expand(b, n, n)
        top = torch.cat([content_content, torch.zeros_like(eye)], 2)
        bottom = torch.cat([query_content, eye], 2)  # a query sees itself, not other queries
        return torch.cat([top, bottom], 1)[:, None]

    def advance(self, cache: KVCache, codes: torch.Tensor | None, revealed: torch.Tensor | None, query: torch.Tensor, batch: int) -> torch.Tensor:
        """One coding step of a block-causal model, both streams in one pass: the content stream
        of the codes (B, m, r1) just revealed at flat positions `revealed` (r1,), which attend
        to the cache and to each other and whose keys and values join the cache (none at the
        first step); and the query stream of the positions `query` (r2,) coded now, which attend
        to the cache, the new codes and themselves. Returns the query rows' hidden states
        (B, r2, d)."""
        r1, r2, c = (0 if codes is None else codes.shape[2]), len(query), cache.size
        x = (self.mask_emb + self.pos_emb[query]).expand(batch, r2, -1)
        if r1:
            tok = codes.transpose(1, 2) + self.offsets  # B, r1, m
            x = torch.cat([self.embed(tok) + self.pos_emb[revealed], x], 1)
        # rows [new content; queries] over keys [cache; new content; queries]
        mask = torch.zeros(r1 + r2, c + r1 + r2, dtype=torch.bool, device=x.device)
        mask[:, : c + r1] = True
        mask[r1:, c + r1 :] = torch.eye(r2, dtype=torch.bool, device=x.device)
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.heads(x)
            keys, values = cache.with_new(i, k, v)
            if r1:
                cache.k[i], cache.v[i] = keys[:, :, : c + r1], values[:, :, : c + r1]
            if i + 1 == len(self.blocks):  # the new content's last output is never used
                q, x, mask = q[:, :, r1:], x[:, r1:], mask[r1:]
            x = blk.update(x, blk.attend(q, keys, values, mask))
        return self.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d) -> logits (..., m, k)."""
        return self.head(h).unflatten(-1, (self.m, self.k))

    def forward(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(codes, visible, valid))
