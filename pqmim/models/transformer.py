"""The MIM entropy model: a bidirectional transformer that predicts masked codes from visible ones.

It works on windows of at most ``window x window`` latent positions (M2T-style): a latent grid
of any size is tiled into windows, each padded to the full window with positions excluded from
attention. A learned position embedding per window cell therefore covers every grid size.
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, query: torch.Tensor | None = None) -> torch.Tensor:
        """With `query` (flat indices), only those rows are computed and returned: all positions
        still serve as keys and values."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if query is not None:
            q, x = q[:, :, query], x[:, query]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, x.shape[1], d))
        return x + self.mlp(self.ln2(x))


class MIMTransformer(nn.Module):
    """Input: codes (B, m, W, W), which positions are visible (B, W, W) and which are real, not
    padding (B, W, W). Output: logits (B, W*W, m, k) of the m codes at every position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.m, self.k, self.window = cfg.m, cfg.k, cfg.window
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.m * cfg.k, d)  # one table per sub-codebook, stacked
        self.mask_emb = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Parameter(torch.zeros(cfg.window * cfg.window, d))
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.m * cfg.k)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.mask_emb, std=0.02)
        self.register_buffer("offsets", torch.arange(cfg.m) * cfg.k, persistent=False)

    def hidden(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, W*W, d), or (B, len(query), d) for the rows in `query` only
        (the last layer then skips every other row: the coder needs one group at a time)."""
        b = codes.shape[0]
        n = self.window * self.window
        tok = codes.reshape(b, self.m, n).transpose(1, 2) + self.offsets  # B, n, m
        x = self.tok_emb(tok).sum(2)
        x = torch.where(visible.reshape(b, n, 1), x, self.mask_emb.to(x.dtype))
        x = x + self.pos_emb
        # padding positions take no part as keys; every query row keeps at least one real key
        attn_mask = valid.reshape(b, 1, 1, n)
        for i, blk in enumerate(self.blocks):
            x = blk(x, attn_mask, query if i == len(self.blocks) - 1 else None)
        return self.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d) -> logits (..., m, k)."""
        return self.head(h).unflatten(-1, (self.m, self.k))

    def forward(self, codes: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(codes, visible, valid))
