"""Large images go through the transforms tile by tile: same codes, same pixels, bounded memory."""

import numpy as np
import torch

from conftest import make_tiny_model, photo_crop
from pqmim import tiling
from pqmim.codec import Codec


def test_context_radius_covers_what_a_pixel_influences():
    """Change one input position: no output farther than the computed radius may move."""
    model = make_tiny_model()
    f = model.cfg.f
    r_enc, r_dec = tiling.context_radius(model.encoder), tiling.context_radius(model.decoder)
    with torch.no_grad():
        x = torch.rand(1, 3, 16 * f, 16 * f)
        y = x.clone()
        y[..., 8 * f, 8 * f] += 1
        moved = (model.encoder(x) - model.encoder(y)).abs().sum(1)[0] > 0
        rows, cols = torch.nonzero(moved, as_tuple=True)
        assert len(rows) and max((rows * f - 8 * f).abs().max(), (cols * f - 8 * f).abs().max()) <= r_enc + f
        z = torch.randn(1, model.cfg.latent_dim, 16, 16)
        z2 = z.clone()
        z2[..., 8, 8] += 1
        moved = (model.decoder(z) - model.decoder(z2)).abs().sum(1)[0] > 0
        rows, cols = torch.nonzero(moved, as_tuple=True)
        assert len(rows) and max((rows // f - 8).abs().max(), (cols // f - 8).abs().max()) <= r_dec


def test_tiles_give_the_same_codes_and_pixels():
    rgb = photo_crop(10, 20, 700, 410)
    whole, tiled = Codec(make_tiny_model(), name="t"), Codec(make_tiny_model(), name="t")
    tiled.tile_pixels = 128  # 3 x 6 tiles for this image
    a, b = whole.compress(rgb), tiled.compress(rgb)
    codes_a, codes_b = whole.read_codes(a)[1], tiled.read_codes(b)[1]
    assert (codes_a != codes_b).float().mean() < 1e-3  # float rounding may flip a near tie, no more
    assert torch.equal(tiled.read_codes(b)[1], tiled.encode_codes([rgb])[0])
    pa = np.asarray(whole.decode_image(codes_b, 700, 410)).astype(int)
    pb = np.asarray(tiled.decode_image(codes_b, 700, 410)).astype(int)
    assert np.abs(pa - pb).max() <= 1
