"""Integer arithmetic of the entropy model (bitstream versions 4 and 5): its logits must be the
same bits whatever computes them (backend, thread count, how windows are batched), and cost no
rate against the float64 model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pqmim.entropy.replay as replay
import pqmim.format as fmt
from pqmim.codec import shipped_codec
from pqmim.entropy import exact
from pqmim.entropy.coder import _Count
from pqmim.entropy.replay import Layout
from conftest import photo_crop


class _Logits(_Count):
    """Counts bits and keeps every call's float64 logits."""

    wants_logits = True

    def __init__(self, padded):
        super().__init__(padded)
        self.seen = []

    def logits(self, step, logits, where):
        self.seen.append(logits.clone())


def _logits(codec, codes, arithmetic="integer") -> tuple[torch.Tensor, float]:
    layout = Layout.of(codes.shape[1], codes.shape[2], codec.cfg.window)
    coding = _Logits(layout.pad(codes))
    codec.coder.replayer.run(layout, coding, arithmetic=arithmetic)
    return torch.cat(coding.seen), coding.bits


@pytest.fixture(scope="module")
def q3():
    return shipped_codec("pqmim-q3")


# a crop whose 38 x 22 code grid has windows of four sizes (16 and 6 positions wide and high)
CROP = (40, 60, 600, 344)


@pytest.mark.parametrize("which", ["q3", "tiny"])  # block-causal (advance_padded) and full attention (hidden)
def test_logits_do_not_depend_on_threads_or_batching(which, q3, tiny_codec, monkeypatch):
    codec = q3 if which == "q3" else tiny_codec
    codes = codec.encode_codes([photo_crop(*CROP)])[0]
    torch.set_num_threads(2)
    together, _ = _logits(codec, codes)  # every window of a step in one padded batch, 2 threads
    monkeypatch.setattr(replay, "WINDOWS_PER_CALL", 1)  # one window per call: no padding at all
    torch.set_num_threads(1)
    alone, _ = _logits(codec, codes)
    assert torch.equal(together, alone)


@pytest.mark.parametrize("kernel", ["int8", "float32"])
def test_logits_do_not_depend_on_the_backend(kernel, q3, monkeypatch):
    """Another machine's kernels, simulated: int8 products and float32 products of integers
    computed as float64 matrix products instead (any exact method must give the same bits),
    against each of the linear layers' two CPU kernels (`exact.linear_kernel`)."""
    codes = q3.encode_codes([photo_crop(*CROP)])[0]
    monkeypatch.setattr(exact, "LINEAR_KERNEL", kernel)
    ours, _ = _logits(q3, codes)
    calls = []

    def int_mm(a, b):
        calls.append(a.shape)
        return (a.double() @ b.double()).to(torch.int32)

    monkeypatch.setattr(torch, "_int_mm", int_mm)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # int_product's float64 path
    theirs, _ = _logits(q3, codes)
    assert bool(calls) == (kernel == "int8") and torch.equal(ours, theirs)


def test_linear_kernel_is_timed_once(monkeypatch):
    monkeypatch.setattr(exact, "LINEAR_KERNEL", None)
    monkeypatch.setattr(exact, "_TIMED_KERNEL", None)
    first = exact.linear_kernel()
    assert first in ("int8", "float32") and exact._TIMED_KERNEL == first
    monkeypatch.setattr(torch, "_int_mm", None)  # not timed again: the choice stays
    assert exact.linear_kernel() == first


def test_integer_arithmetic_costs_no_rate(q3):
    codes = q3.encode_codes([photo_crop(0, 0, 768, 512)])[0]
    logits, bits = _logits(q3, codes)
    logits64, bits64 = _logits(q3, codes, "float64")
    assert not torch.equal(logits, logits64)  # a different function ...
    assert abs(bits / bits64 - 1) < 1e-3  # ... at the same rate (measured: +0.005% on Kodak)
    assert float((logits - logits64).abs().max()) < 0.5  # 7-bit inputs of the linear layers: up to 0.2 nat here


def test_versions_say_the_arithmetic(q3):
    """The same codes, two files: version 4 (integer) and version 2 (float64). A version byte
    rewritten (and the file checksum recomputed) makes the decoder build other tables: refused."""
    rgb = photo_crop(100, 100, 256, 192)
    data = q3.compress(rgb)
    q3.arithmetic = "float64"
    try:
        legacy = q3.compress(rgb)
    finally:
        q3.arithmetic = "integer"
    assert (data[3], legacy[3]) == (4, 2) and data != legacy
    assert torch.equal(q3.read_codes(data)[1], q3.read_codes(legacy)[1])
    forged = bytearray(data[:-4])
    forged[3] = 2
    forged += fmt.zlib.crc32(forged).to_bytes(4, "little")
    with pytest.raises(fmt.BitstreamError):
        q3.decompress(bytes(forged))


def test_layers_follow_the_float_model():
    torch.manual_seed(0)
    x = torch.linspace(-12, 12, 20001)
    assert float((exact.IntegerGELU()(x) - F.gelu(x)).abs().max()) < 1e-3  # nearest of 4097 entries
    norm = torch.nn.LayerNorm(64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    rows = torch.randn(50, 64) * torch.logspace(-3, 3, 50)[:, None]
    assert torch.allclose(exact.IntegerLayerNorm(norm)(rows), norm(rows), atol=1e-4)
    q, k, v = (torch.randn(2, 3, 40, 32) for _ in range(3))
    mask = torch.rand(40, 40) < 0.5
    mask |= torch.eye(40, dtype=torch.bool)
    ours = exact.IntegerBlock(96, 3).attend(q, k, v, mask)
    assert float((ours - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max()) < 0.02


def test_quantize_is_exact_and_bounded():
    x = torch.tensor([[3.0, -0.75, 0.1], [0.0, 0.0, 0.0], [1.0, 0.5, -1.0]])
    v, step = exact.quantize(x, 7)
    assert step.flatten().tolist() == [2.0**-5, 2.0**-100 * 2.0**-6, 2.0**-6]  # max |x| < 2**e: e = 2, -99 (floor), 1
    assert v.abs().max() <= 127 and torch.equal(v, torch.round(v))
    assert torch.allclose(v * step, x, atol=2.0**-6)


def test_tables_refuse_entries_at_a_rounding_boundary():
    with pytest.raises(RuntimeError, match="reproducibly"):
        exact._checked_table([0.5 + 2**-30], 1.0, "test")
    assert exact._checked_table([0.25, 3.75], 4.0, "test").tolist() == [1.0, 15.0]


def test_arithmetic_follows_the_attention(q3, tiny_codec):
    """Block-causal models write integer files; full-attention ones (pqmim-q5, the -full models,
    the tiny test model) float64 files, faster for them; either decodes both."""
    assert q3.arithmetic == "integer" and tiny_codec.arithmetic == "float64"
    rgb = photo_crop(10, 20, 64, 48)
    for arithmetic, version in (("integer", 4), ("float64", 2)):
        data = tiny_codec.compress(rgb, arithmetic=arithmetic)
        assert data[3] == version and torch.equal(tiny_codec.read_codes(data)[1], tiny_codec.encode_codes([rgb])[0])


def test_default_model_file_round_trip_uses_integer_arithmetic(q3):
    rgb = photo_crop(0, 0, 300, 200)
    data = q3.compress(rgb)
    header, _ = fmt.unpack(data)
    assert header.arithmetic == "integer" and header.shift == 0
    assert np.asarray(q3.decompress(data)).shape == (200, 300, 3)
