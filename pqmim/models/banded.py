"""The transforms computed in fixed row bands: the same pixels (and codes) whatever the thread count.

A multi-threaded convolution splits its sums differently for different thread counts (oneDNN
and MKL choose their blocking per thread), so its float result, and now and then a decoded
pixel, changes with `torch.set_num_threads`. Here every layer of a transform is cut into
horizontal bands whose boundaries depend only on the layer's height (`BAND_ROWS`), each band is
computed by one single-threaded call, and the bands run on a pool of threads. Which thread
computes a band, and how many threads there are, then changes nothing: on one machine a code
grid decodes to the same pixels with any thread count, alone or in any batch, and an image
encodes to the same codes (hence the same file).

A band of a 3x3 convolution reads one row above and below it from the (zero-padded) layer
input, so the bands need no overlap beyond the convolution's own reach, and the elementwise
work around a convolution (GELU before and after, the residual sum, the pixel shuffle) is done
in the same pass over the band. Activations are channels-last, which this CPU convolves faster.
The layers are the few kinds defined in `autoencoder.py` and in `taef2.py` (the texture
decoder's autoencoder: ReLU, nearest upsampling, its blocks; a mid block's GroupNorm spans its
whole input, so it is one call between the banded convolutions around it); anything else is
refused rather than computed in another way.

Precision: a transform runs as stored (float32), or `lowered` to bfloat16 on CPUs that multiply
bfloat16 natively (`native_bfloat16`: AVX512-BF16 or AMX-BF16), where its convolutions run about
twice as fast. Lowered, every convolution but the first and the last takes bfloat16 inputs and
weights (oneDNN accumulates in float32); the first and last stay float32, so the pixels read and
written and the latents the quantizer snaps keep float32 resolution. Measured on the 24 Kodak
images with the default model: the same codes decode to pixels at most one level apart (6% of
sub-pixels), PSNR -0.0004 dB. Banding, hence thread and batch invariance, is unchanged.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import Executor
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import ResBlock, Upsample
from .taef2 import Block, Clamp

BAND_ROWS = 16  # rows of a layer's output per band: part of what fixes the decoded pixels

Post = Callable[[torch.Tensor, int, int], torch.Tensor]  # (band output, y0, y1) -> band output


def bfloat16_isa() -> str | None:
    """The bfloat16 instructions this CPU's convolutions run on: "amx_bf16" (AMX tiles, which
    oneDNN prefers where present), "avx512_bf16", or None where neither exists (oneDNN then
    emulates bfloat16, slower than float32). Lowered transforms on two ISAs may round a pixel
    differently, so this names the class a bfloat16 pixel hash belongs to."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.3 on x86
    caps = get() if get is not None else {}
    for isa in ("amx_bf16", "avx512_bf16"):
        if caps.get(isa):
            return isa
    return None


def native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot products (AVX512-BF16 or AMX-BF16): `lowered`
    transforms are for these CPUs only."""
    return bfloat16_isa() is not None


def lowered(net: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    """A copy of `net` whose convolutions, except the first and the last, hold their weights in
    `dtype` (`_conv_stage` feeds each convolution its own dtype)."""
    out = copy.deepcopy(net)
    convs = [m for m in out.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[1:-1]:
        conv.to(dtype)
    return out


def net_in(owner: nn.Module, net: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    """`net` as stored (float32), or `lowered` to `dtype`: a copy made once per state of the
    weights and kept on `owner` (keyed by the parameters' storage and in-place version, so an
    optimiser step or load_state_dict makes a fresh one)."""
    if dtype == torch.float32:
        return net
    stamp = (dtype, tuple((p.data_ptr(), p._version) for p in net.parameters()))
    cache = owner.__dict__.setdefault("_lowered", {})  # not a submodule: no weights in state_dict
    if cache.get(id(net), (None,))[0] != stamp:
        cache[id(net)] = (stamp, lowered(net, dtype))
    return cache[id(net)][1]


def bands(height: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of one layer's output: fixed by its height alone."""
    return [(a, min(a + BAND_ROWS, height)) for a in range(0, height, BAND_ROWS)]


def _conv_stage(
    pool: Executor, conv: nn.Conv2d, x: torch.Tensor, pre: Callable | None = None, post: Post | None = None, autocast: torch.dtype | None = None
) -> torch.Tensor:
    """post(conv(pre(x))) band by band: each band reads the rows of x its output rows need
    (zero rows beyond the edges, as the convolution's own padding; pre must keep zero at zero,
    as GELU and ReLU do), and elementwise work rides along in the same pass."""
    if conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple):
        raise NotImplementedError("banded transforms support plain convolutions only")
    (kh, _), (sh, _), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    height = x.shape[2]
    out_height = (height + 2 * ph - kh) // sh + 1

    def band(rows: tuple[int, int]) -> torch.Tensor:
        a, b = rows
        lo, hi = sh * a - ph, sh * (b - 1) - ph + kh  # input rows read, in unpadded coordinates
        inp = x[:, :, max(0, lo) : min(height, hi)]
        if lo < 0 or hi > height:
            inp = F.pad(inp, (0, 0, max(0, -lo), max(0, hi - height)))
        inp = inp.to(conv.weight.dtype)
        if pre is not None:
            inp = pre(inp)
        y = F.conv2d(inp, conv.weight, conv.bias, stride=conv.stride, padding=(0, pw))
        return y if post is None else post(y, a, b)

    return _gather(pool, band, bands(out_height), autocast)


def _elementwise(pool: Executor, fn: Callable, x: torch.Tensor, autocast: torch.dtype | None = None) -> torch.Tensor:
    """fn band by band, for work that maps rows to rows (an activation, a nearest upsampling)."""
    return _gather(pool, lambda r: fn(x[:, :, r[0] : r[1]]), bands(x.shape[2]), autocast)


def _gather(pool: Executor, band: Callable, rows: list[tuple[int, int]], autocast: torch.dtype | None) -> torch.Tensor:
    """The bands band(rows[i]) stacked along the height (dim 2), as torch.cat would stack them
    (same values, same memory format), but each written into one output by the pool thread that
    computed it: no serial copy of the whole layer after its bands. The first band done makes the
    output: its channels, width, dtype, layout and rows per input row (a band may grow, as a
    pixel shuffle or a nearest upsampling doubles the rows). Autocast is per thread, so it is
    entered in the thread that computes."""
    made: list[tuple[torch.Tensor, int]] = []
    lock = threading.Lock()

    def write(r: tuple[int, int]) -> None:
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            y = band(r)
        with lock:
            if not made:
                scale = y.shape[2] // (r[1] - r[0])
                layout = torch.channels_last if y.shape[1] > 1 and y.stride(1) == 1 else torch.contiguous_format
                made.append((torch.empty((*y.shape[:2], rows[-1][1] * scale, y.shape[3]), dtype=y.dtype, memory_format=layout), scale))
        out, scale = made[0]
        out[:, :, r[0] * scale : r[1] * scale] = y

    for _ in pool.map(write, rows):  # consumed, so that a band's exception is raised here
        pass
    return made[0][0]


def _activation(layer: nn.Module | None) -> Callable | None:
    """The function of an activation layer that rides along with the convolution before it."""
    if isinstance(layer, nn.GELU) and layer.approximate == "none":
        return F.gelu
    if isinstance(layer, nn.ReLU) and not layer.inplace:
        return F.relu
    return None


def _taef2_block(pool: Executor, block: Block, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    """taef2's `Block` in bands; a mid block's GroupNorm needs its whole input, so it runs in
    one call between the banded 1x1 convolutions around it (at 1/8 resolution: cheap)."""
    if block.pool is not None:
        squeeze, norm, _, unsqueeze = block.pool
        p = _conv_stage(pool, squeeze, x, autocast=autocast)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            p = norm(p)
        x = _conv_stage(pool, unsqueeze, p, pre=F.relu, post=lambda y, a, b, x=x: x[:, :, a:b] + y, autocast=autocast)
    c1, _, c2, _, c3 = block.conv
    h = _conv_stage(pool, c1, x, post=lambda y, a, b: F.relu(y), autocast=autocast)
    h = _conv_stage(pool, c2, h, post=lambda y, a, b: F.relu(y), autocast=autocast)
    return _conv_stage(pool, c3, h, post=lambda y, a, b, x=x: F.relu(y + x[:, :, a:b]), autocast=autocast)


def run(net: nn.Sequential, x: torch.Tensor, pool: Executor, autocast: torch.dtype | None = None) -> torch.Tensor:
    """net(x) for a transform of the kinds in `autoencoder.py` (the encoder's or the decoder's
    `net`) or in `taef2.py`, computed image by image in fixed bands (so an image's result does
    not depend on the batch either); call it with torch set to one thread
    (`pqmim.threads.fixed_pieces`), the pool giving the parallelism. `autocast`: run every band
    under CPU autocast to that dtype (the texture decoder's bfloat16 passes; pqmim's own
    transforms are `lowered` instead). An input of 3 channels is convolved in the layout it
    comes in (pqmim's transforms take NCHW images; the texture decoder channels-last ones)."""
    if x.shape[0] != 1:
        return torch.cat([run(net, xi, pool, autocast) for xi in x.split(1)])
    if x.shape[1] >= 8:  # channels-last convolves faster on this CPU, except an RGB input
        x = x.contiguous(memory_format=torch.channels_last)
    layers = list(net)
    i = 0
    while i < len(layers):
        layer = layers[i]
        act = _activation(layers[i + 1]) if i + 1 < len(layers) and isinstance(layer, (nn.Conv2d, Upsample)) else None
        if isinstance(layer, nn.Conv2d):
            x = _conv_stage(pool, layer, x, post=(lambda y, a, b, act=act: act(y)) if act else None, autocast=autocast)
        elif _activation(layer) is not None:
            x = _elementwise(pool, _activation(layer), x, autocast)
        elif type(layer).__name__ == "GDN":  # compressai's (I)GDN: per pixel, across channels only;
            x = _elementwise(pool, lambda t, gdn=layer: gdn(t.float()), x)  # float32 even when lowered
        elif isinstance(layer, ResBlock):
            if not isinstance(layer.act, nn.GELU) or layer.act.approximate != "none":
                raise NotImplementedError("banded transforms expect GELU residual blocks")
            h = _conv_stage(pool, layer.conv1, x, pre=F.gelu, post=lambda y, a, b: F.gelu(y))
            x = _conv_stage(pool, layer.conv2, h, post=lambda y, a, b, x=x: x[:, :, a:b] + y)
        elif isinstance(layer, Upsample):
            shuffle = layer.shuffle
            x = _conv_stage(pool, layer.conv, x, post=(lambda y, a, b: act(shuffle(y))) if act else (lambda y, a, b: shuffle(y)), autocast=autocast)
        elif isinstance(layer, nn.Upsample) and layer.mode == "nearest" and layer.scale_factor in (2, 2.0) and layer.size is None:
            x = _elementwise(pool, layer, x, autocast)  # a row of output is a row of input, repeated
        elif isinstance(layer, Clamp):
            x = _elementwise(pool, layer, x, autocast)
        elif isinstance(layer, Block):
            x = _taef2_block(pool, layer, x, autocast)
        else:
            raise NotImplementedError(f"banded transforms cannot compute a {type(layer).__name__}")
        i += 2 if act else 1
    return x.contiguous()
