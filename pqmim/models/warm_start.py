"""Warm starts: a new model inherits every layer of a trained one that still fits.

Training a ladder of rate points from one trained model is far cheaper than training each from
scratch: the convolutions of the autoencoder and the body of the transformer carry over, only
the parts whose shapes change (codebooks, latent projections, code embeddings) start fresh.
"""

from __future__ import annotations

import torch

from .model import PQMIM


def _own_tensors(mod: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's own parameters and saved buffers (not its children's)."""
    bufs = [(n, b) for n, b in mod.named_buffers(recurse=False) if n not in mod._non_persistent_buffers_set]
    return list(mod.named_parameters(recurse=False)) + bufs


def _signature(mod: torch.nn.Module) -> tuple:
    return tuple((n, tuple(t.shape)) for n, t in _own_tensors(mod))


@torch.no_grad()
def warm_start(model: PQMIM, source: PQMIM) -> list[str]:
    """Copy weights from a trained model of another configuration, module by module.

    Within each part (encoder, quantizer, decoder, entropy model), modules are walked in order
    and each is copied from the next source module with exactly the same tensors (names and
    shapes), so a model with one stage fewer (f/2), fewer residual blocks, or another (m, k)
    inherits every layer that still fits; the rest keeps its fresh initialisation. Returns the
    names of the copied modules.
    """
    copied = []
    for part in ("encoder", "quantizer", "decoder", "entropy"):
        src = [(n, m) for n, m in getattr(source, part).named_modules() if _signature(m)]
        j = 0
        for name, mod in getattr(model, part).named_modules():
            sig = _signature(mod)
            if not sig:
                continue
            for jj in range(j, len(src)):
                if _signature(src[jj][1]) == sig:
                    for (_, t), (_, u) in zip(_own_tensors(mod), _own_tensors(src[jj][1])):
                        t.copy_(u)
                    copied.append(f"{part}.{name}" if name else part)
                    j = jj + 1
                    break
    return copied
