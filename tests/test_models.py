"""Model files, the Python API and the shipped default model."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_tiny_model, photo_crop
from pqmim import Codec, ModelFileError, zoo
from pqmim.evaluate import psnr_uint8
from pqmim.models import PQMIM, warm_start


def test_save_load_keeps_weights_and_id(tmp_path):
    m = make_tiny_model()
    m.save(tmp_path / "m.safetensors")
    m2 = PQMIM.load(tmp_path / "m.safetensors")
    assert m2.cfg == TINY and m2.model_id() == m.model_id()
    from pqmim.fileio import current_umask

    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as any file the user makes


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        PQMIM.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError):
        PQMIM.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="not a pqmim model"):
        PQMIM.load(tmp_path / "foreign.safetensors")


def test_api_accepts_path_pil_and_array(tmp_path):
    codec = Codec(make_tiny_model(), name="tiny")
    rgb = photo_crop(10, 10, 48, 40, variant=5)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    outs = [codec.compress(x) for x in (rgb, Image.fromarray(rgb), tmp_path / "a.png", str(tmp_path / "a.png"))]
    assert len(set(outs)) == 1
    img = codec.decompress(outs[0])
    assert isinstance(img, Image.Image) and img.size == (48, 40)


def test_shipped_default_model_on_a_photo_crop():
    codec = Codec.from_pretrained()
    assert codec.name == zoo.DEFAULT_MODEL
    rgb = photo_crop(200, 300, 192, 128)
    data = codec.compress(rgb)
    header, codes = codec.read_codes(data)
    assert torch.equal(codes, codec.encode_codes([rgb])[0])
    out = np.asarray(codec.decompress(data))
    bpp = len(data) * 8 / (192 * 128)
    # a trained model: the entropy model beats fixed-length codes and the image is recognisable
    assert bpp < codec.cfg.m * np.log2(codec.cfg.k) / codec.cfg.f**2
    assert psnr_uint8(rgb, out) > 20


def test_unknown_shipped_name():
    with pytest.raises(FileNotFoundError, match="unknown model"):
        Codec.from_pretrained("no-such-model")


def test_ladder_cards_are_measured_and_ordered():
    """Every quality level ships with a card measured on all of Kodak; rate and PSNR rise with
    the level, and the levels span the range the ladder promises."""
    levels = zoo.quality_levels()
    assert list(levels) == list(range(1, len(levels) + 1)) and len(levels) >= 5
    cards = {c["name"]: c for c in zoo.list_models()}
    kodak = [cards[name]["kodak"] for name in levels.values()]
    assert all(k["images"] == 24 and k["all_exact"] and 0 < k["ms_ssim"] < 1 for k in kodak)
    bpp, psnr = [k["bpp"] for k in kodak], [k["psnr"] for k in kodak]
    assert bpp == sorted(bpp) and psnr == sorted(psnr)
    assert bpp[0] < 0.08 and bpp[-1] > 0.7
    assert sum(zoo.model_path(n).stat().st_size for n in levels.values()) < 100e6


def test_models_folder_within_its_budget():
    """Every clone carries models/: weights, cards, the baselines and the perceptual decoder
    together stay within 64 MB (README, "The shipped models")."""
    from conftest import ROOT

    assert sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file()) <= 64e6


@pytest.mark.parametrize("quality", [1, 2, 4, 5])
def test_shipped_ladder_model_round_trip(quality):
    codec = Codec.from_pretrained(quality=quality)
    assert codec.name == f"pqmim-q{quality}"
    rgb = photo_crop(100, 50, 160, 96)
    data = codec.compress(rgb)
    _, codes = codec.read_codes(data)
    assert torch.equal(codes, codec.encode_codes([rgb])[0])
    assert psnr_uint8(rgb, np.asarray(codec.decompress(data))) > 18


def test_quality_and_name_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        Codec.from_pretrained("pqmim-q1", quality=1)
    with pytest.raises(ValueError, match="no model for quality"):
        Codec.from_pretrained(quality=99)


def test_warm_start_copies_what_fits():
    """A model one stage shallower, with another (m, k), inherits the layers that fit."""
    src = make_tiny_model(1)
    cfg = TINY.__class__(**{**TINY.to_dict(), "widths": (8, 8, 16), "m": 2, "sub_dim": 3, "k": 16})
    torch.manual_seed(0)
    dst = PQMIM(cfg)
    copied = warm_start(dst, src)
    assert "encoder.net.0" in copied and "entropy.blocks.0.qkv" in copied
    assert torch.equal(dst.encoder.net[0].weight, src.encoder.net[0].weight)
    assert torch.equal(dst.entropy.blocks[1].mlp[0].weight, src.entropy.blocks[1].mlp[0].weight)
    assert not any(n.startswith("quantizer") or n == "entropy.head" for n in copied)


def test_hostile_model_files_are_refused_before_use(tmp_path):
    """Pickles are never loaded; configs are bounded; shapes and values are checked."""
    import json

    from safetensors.torch import save_file

    from pqmim.models.model import FORMAT_TAG

    torch.save({"x": torch.zeros(2)}, tmp_path / "pickle.pt")  # a pickle could run code on load
    with pytest.raises(ModelFileError, match="cannot read"):
        PQMIM.load(tmp_path / "pickle.pt")
    state = {k: v.contiguous() for k, v in make_tiny_model().state_dict().items()}

    def write(name, tensors, config):
        save_file(tensors, str(tmp_path / name), metadata={"format": FORMAT_TAG, "config": json.dumps(config)})
        return tmp_path / name

    huge = {**TINY.to_dict(), "d_model": 10**7, "n_heads": 1}
    with pytest.raises(ModelFileError, match="bad config"):
        PQMIM.load(write("huge.safetensors", state, huge))
    with pytest.raises(ModelFileError, match="bad config"):
        PQMIM.load(write("str.safetensors", state, {**TINY.to_dict(), "m": "3"}))
    big = {**TINY.to_dict(), "d_model": 8192, "n_heads": 8, "n_layers": 64}  # ~200 GB if built for real
    with pytest.raises(ModelFileError, match="do not match|shape"):
        PQMIM.load(write("big.safetensors", state, big))
    wrong = {**state, "entropy.head.bias": torch.zeros(7)}
    with pytest.raises(ModelFileError, match="shape"):
        PQMIM.load(write("shape.safetensors", wrong, TINY.to_dict()))
    nan = {**state, "decoder.net.0.weight": torch.full_like(state["decoder.net.0.weight"], float("nan"))}
    with pytest.raises(ModelFileError, match="non-finite"):
        PQMIM.load(write("nan.safetensors", nan, TINY.to_dict()))
    missing = {k: v for k, v in state.items() if k != "entropy.pos_emb"}
    with pytest.raises(ModelFileError, match="do not match"):
        PQMIM.load(write("missing.safetensors", missing, TINY.to_dict()))


def test_expected_state_is_the_built_models_state():
    """The meta-device build that checks a file against its config (initialisers skipped) has
    the names, shapes and dtypes of a model built for real."""
    from pqmim.models.weights import expected_state

    real = make_tiny_model().state_dict()
    expected = expected_state(lambda: PQMIM(TINY))
    assert real.keys() == expected.keys()
    assert all(expected[k].is_meta and (expected[k].shape, expected[k].dtype) == (v.shape, v.dtype) for k, v in real.items())


def test_loading_the_shipped_models_imports_no_compiler():
    """Every command loads a model: its meta-device build must not run one of torch's Python
    decompositions (a meta normal_, arithmetic on a meta tensor), whose first call imports
    torch._dynamo or sympy, 1.4 s more for each command than the load itself."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys\n"
        "from pqmim import zoo\n"
        "from pqmim.codec import shipped_codec\n"
        "served = {s['name'] for c in zoo.perceptual_decoders() for s in c['serves']}\n"
        "for card in zoo.list_models():\n"
        "    codec = shipped_codec(card['name'])\n"
        "    if card['name'] in served:\n"
        "        codec.perceptual_decoder()\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_gdn_model_files_and_banded_transforms(tmp_path):
    """A GDN model (the yardstick's trial architecture) saves and loads, its id differs from the
    GELU model's, and the banded transforms compute what its modules compute."""
    import dataclasses

    from pqmim.models import banded
    from pqmim.threads import fixed_pieces

    cfg = dataclasses.replace(TINY, gdn=True)
    assert "gdn" not in TINY.to_dict() and cfg.to_dict()["gdn"] is True  # old models' ids unchanged
    m = make_tiny_model(cfg=cfg)
    m.save(tmp_path / "gdn.safetensors", storage="float32")
    m2 = PQMIM.load(tmp_path / "gdn.safetensors")
    assert m2.cfg == cfg and m2.model_id() == m.model_id() != make_tiny_model().model_id()
    x = torch.from_numpy(photo_crop(0, 0, 80, 64)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad(), fixed_pieces() as pool:
        z = m2.encoder(x - 0.5)
        assert torch.allclose(banded.run(m2.encoder.net, x - 0.5, pool), z, atol=1e-5)
        assert torch.allclose(banded.run(m2.decoder.net, z, pool), m2.decoder(z), atol=1e-5)
    for transforms in ("float32", "bfloat16"):  # lowered transforms keep (I)GDN in float32
        codec = Codec(m2, transforms=transforms)
        assert codec.decompress(codec.compress(photo_crop(0, 0, 40, 30))).size == (40, 30)
