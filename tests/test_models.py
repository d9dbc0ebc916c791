"""Model files, the Python API and the shipped default model."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, kodak_crop, make_tiny_model
from pqmim import Codec, ModelFileError
from pqmim.evaluate import psnr_uint8
from pqmim.models import PQMIM


def test_save_load_keeps_weights_and_id(tmp_path):
    m = make_tiny_model()
    m.save(tmp_path / "m.safetensors")
    m2 = PQMIM.load(tmp_path / "m.safetensors")
    assert m2.cfg == TINY and m2.model_id() == m.model_id()


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
    rgb = kodak_crop(8, 10, 10, 48, 40)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    outs = [codec.compress(x) for x in (rgb, Image.fromarray(rgb), tmp_path / "a.png", str(tmp_path / "a.png"))]
    assert len(set(outs)) == 1
    img = codec.decompress(outs[0])
    assert isinstance(img, Image.Image) and img.size == (48, 40)


def test_shipped_default_model_on_a_kodak_crop():
    codec = Codec.from_pretrained()
    rgb = kodak_crop(19, 200, 300, 192, 128)
    data = codec.compress(rgb)
    header, codes = codec.decode_codes(data)
    assert torch.equal(codes, codec.encode_codes([rgb])[0])
    out = np.asarray(codec.decompress(data))
    bpp = len(data) * 8 / (192 * 128)
    # a trained model: the entropy model beats fixed-length codes and the image is recognisable
    assert bpp < codec.cfg.m * np.log2(codec.cfg.k) / codec.cfg.f**2
    assert psnr_uint8(rgb, out) > 20


def test_unknown_shipped_name():
    with pytest.raises(FileNotFoundError, match="unknown model"):
        Codec.from_pretrained("no-such-model")
