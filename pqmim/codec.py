"""The user-facing codec: images in, .pqm bytes out, and back.

The model codes the RGB image; its ICC profile (always), EXIF block (with keep_metadata) and
alpha plane (lossless) travel beside it as chunks of the file (pqmim/extras.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import format as fmt
from . import tiling, zoo
from .entropy.coder import CorruptPayloadError, MIMCoder
from .entropy.replay import Decoded, Progress
from .extras import Extras
from .image import ImageLike, Picture, picture_to_pil, read_picture, to_tensor
from .models import PQMIM, banded
from .models.perceptual import Refiner, load_decoder
from .models.texture import LatentTexture


class Codec:
    """A pqmim model ready to compress and decompress images.

    >>> codec = Codec.from_pretrained()          # the default shipped model
    >>> data = codec.compress("photo.png")       # bytes of a .pqm file
    >>> image = codec.decompress(data)           # PIL.Image, RGB, original size
    """

    def __init__(self, model: PQMIM, name: str | None = None, device: torch.device | str = "cpu", transforms: str = "auto") -> None:
        self.model_id: bytes = model.model_id()
        self.device = torch.device(device)  # "cuda": transforms and entropy model on a GPU; files are the same format
        self.transform_dtype = transform_dtype(transforms, self.device)
        self.model = model.eval().to(self.device)
        self.name = name
        self.cfg = model.cfg
        self.coder = MIMCoder(model, self.device)
        self.tile_pixels = tiling.TILE_PIXELS  # larger images are transformed tile by tile
        self.perceptual: Refiner | LatentTexture | None = None  # loaded by perceptual_decoder() on first use
        # how new files' entropy model computes: "integer" (bitstream versions 4 and 5: the same
        # tables on every machine by construction), or "float64" (versions 2 and 3, which pqmim
        # before 0.7.0 reads). Decoding follows each file's version. Integer for block-causal
        # models (1.6-1.8x faster here); float64 for full-attention ones (pqmim-q5, the -full
        # models), whose whole windows are recomputed at every step, where fused float64
        # attention beats integer attention's separate passes (q5 on kodim01: 3.0 s vs 5.2 s).
        self.arithmetic = "integer" if model.cfg.causal else "float64"

    @classmethod
    def from_pretrained(
        cls, name: str | None = None, quality: int | None = None, device: torch.device | str = "cpu", transforms: str = "auto"
    ) -> "Codec":
        """Load a shipped model by name ("pqmim-q2") or by quality level (1 = smallest files);
        with neither, the default model. `pqmim models` lists them with their Kodak figures.
        transforms: "auto" (bfloat16 convolutions where the CPU multiplies bfloat16 natively,
        else float32), "float32" or "bfloat16" (see pqmim/models/banded.py)."""
        if name is not None and quality is not None:
            raise ValueError("give a model name or a quality, not both")
        if quality is not None:
            name = zoo.model_for_quality(quality)
        name = zoo.resolve(name)
        return cls(PQMIM.load(zoo.model_path(name)), name=name, device=device, transforms=transforms)

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu", transforms: str = "auto") -> "Codec":
        """Load a model from a .safetensors file written by `pqmim train`."""
        return cls(PQMIM.load(path), name=Path(path).stem, device=device, transforms=transforms)

    # -- codes
    @property
    def _tile(self) -> int:
        return max(1, self.tile_pixels // self.cfg.f)  # in latent positions

    def _padded(self, rgb: np.ndarray) -> np.ndarray:
        """Pad (repeating the last row and column) to multiples of f."""
        f = self.cfg.f
        h, w = rgb.shape[:2]
        return np.pad(rgb, ((0, -h % f), (0, -w % f), (0, 0)), mode="edge")

    def encode_codes(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """RGB uint8 arrays -> code grids (m, h, w). Images of equal size that fit in one tile
        share a batch; larger ones are encoded tile by tile."""
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        for i, im in enumerate(images):
            padded = self._padded(im)
            if max(padded.shape[:2]) > self._tile * self.cfg.f:
                out[i] = tiling.encode_tiled(self.model, padded, self._tile, self.transform_dtype)
            else:
                by_size.setdefault(im.shape[:2], []).append((i, padded))
        for group in by_size.values():
            x = to_tensor(np.stack([p for _, p in group])).to(self.device)
            for (i, _), codes in zip(group, self.model.encode_codes(x, self.transform_dtype).cpu()):
                out[i] = codes
        return out  # type: ignore[return-value]

    def decode_image(self, codes: torch.Tensor, width: int, height: int) -> Image.Image:
        """Code grid (m, h, w) -> RGB image of width x height."""
        rgb = tiling.decode_tiled(self.model, self.latents(Decoded(codes)), self._tile, width, height, self.transform_dtype)
        return Image.fromarray(rgb, "RGB")

    # -- bitstreams
    def compress(self, image: ImageLike, keep_metadata: bool = False, progress: Progress | None = None, **options) -> bytes:
        """Compress an image (path, PIL.Image, HxWx3 or HxWx4 uint8 array, Picture) into .pqm
        bytes: the ICC profile and any transparency are kept; EXIF too with keep_metadata.
        `progress(done, total)` is called as the entropy coder works through the image. The
        keyword options (send_steps, seed, progressive, arithmetic) are `compress_batch`'s."""
        return self.compress_batch([image], keep_metadata, progress, **options)[0]

    def compress_batch(
        self,
        images: Sequence[ImageLike],
        keep_metadata: bool = False,
        progress: Progress | None = None,
        *,
        send_steps: int | None = None,
        seed: int | None = None,
        progressive: bool = False,
        arithmetic: str | None = None,
    ) -> list[bytes]:
        """Compress several images (see `compress`); the bytes are identical to compressing them
        one by one (on the CPU the analysis runs image by image in fixed bands: see
        pqmim/models/banded.py).

        send_steps: write only the first s of the model's steps; the decoder fills in the rest
        with the transformer (the code words it expects, or codes drawn with `seed`), the same
        on every machine. progressive: add a table (about a byte per step) with which any prefix
        of the file decodes to a full image (`decompress(..., partial=True)`). arithmetic: the
        entropy model's, "integer" (bitstream versions 4 and 5) or "float64" (versions 2 and 3,
        which pqmim before 0.7.0 reads); default: the attribute `arithmetic`."""
        sent = None if send_steps is None or send_steps == self.cfg.steps else send_steps
        if sent is not None and not 1 <= sent < self.cfg.steps:
            raise ValueError(f"send_steps must be 1 to {self.cfg.steps} (the model's steps), got {send_steps}")
        fill = fill_of(seed)
        if fill and sent is None:
            raise ValueError("a seed fills in the steps not sent: give it with send_steps below the model's steps")
        pictures = [read_picture(im) for im in images]
        for p in pictures:
            fmt.check_dimensions(p.rgb.shape[1], p.rgb.shape[0])
        out = []
        for p, codes in zip(pictures, self.encode_codes([p.rgb for p in pictures])):
            coded = self.coder.encode(codes, progress, sent, fill, progressive, arithmetic or self.arithmetic)
            chunks = Extras(p.icc, p.exif if keep_metadata else None, p.alpha).to_chunks()
            header = fmt.Header(
                self.model_id,
                p.rgb.shape[1],
                p.rgb.shape[0],
                self.cfg.steps,
                coded.shift,
                fmt.codes_checksum(coded.codes.numpy()),
                chunks,
                sent,
                fill,
                coded.step_bytes,
                coded.arithmetic,
            )
            out.append(fmt.pack(header, coded.payload))
        return out

    def read_codes(
        self, data: bytes, progress: Progress | None = None, *, partial: bool = False, seed: int | None = None
    ) -> tuple[fmt.Header, torch.Tensor]:
        """Parse, verify and entropy-decode a bitstream -> (header, codes (m, h, w)). With
        `partial`, `data` may be the start of a progressive file: the steps it holds are decoded
        and the rest filled in (see `compress`; the codes returned for fill 0 are the most likely
        ones, the context of the later steps, while the image uses their expected code words)."""
        header, decoded = self._decode(data, progress, partial, seed)
        return header, decoded.codes

    def _decode(self, data: bytes, progress: Progress | None, partial: bool, seed: int | None) -> tuple[fmt.Header, Decoded]:
        header, payload, complete = fmt.unpack_partial(data) if partial else (*fmt.unpack(data), True)
        if header.model_id != self.model_id:
            raise fmt.BitstreamError(
                f"this file was encoded with {zoo.describe_id(header.model_id)}, not with {self.name or 'this model'} (id {self.model_id.hex()})"
            )
        if header.steps != self.cfg.steps:
            raise fmt.BitstreamError(f"file coded with {header.steps} steps, model uses {self.cfg.steps}")
        sent, fill = header.steps_sent, header.fill
        if not complete:
            sent = header.steps_in(len(payload))
            payload = payload[: header.step_bytes[sent - 1]]  # unpack_partial: at least the first step
            fill = header.fill if header.sent is not None else fill_of(seed)
        f = self.cfg.f
        h, w = -(-header.height // f), -(-header.width // f)
        try:
            decoded = self.coder.decode(payload, h, w, header.shift, progress, sent, fill, header.arithmetic)
        except CorruptPayloadError as e:
            raise fmt.BitstreamError(str(e)) from None
        if complete and fmt.codes_checksum(decoded.codes.numpy()) != header.codes_crc:
            raise fmt.BitstreamError(
                "decoded codes fail their checksum: the file was crafted or corrupted, or this machine computes the entropy model differently from the encoder's"
            )
        return header, decoded

    def latents(self, decoded: Decoded) -> torch.Tensor:
        """The synthesis input (m*sub_dim, h, w): the code words of the codes, and where codes
        were filled in with fill 0, their expected code words."""
        z = self.model.quantizer.latents_for(decoded.codes[None].to(self.device))[0].cpu()
        if decoded.filled is not None:
            z[:, decoded.filled] = decoded.expected[decoded.filled].T
        return z

    def decompress(
        self, data: bytes, progress: Progress | None = None, *, partial: bool = False, seed: int | None = None, perceptual: bool = False
    ) -> Image.Image:
        """Decode .pqm bytes into a PIL.Image of the original size: RGB, or RGBA when the file
        has an alpha plane; `info` holds the ICC profile and EXIF block the file carries.
        partial: `data` may be a progressive file cut short (see `read_codes`). perceptual: the
        same codes through the perceptual decoder (sharper, realistic texture, lower PSNR; see
        `perceptual_decoder`)."""
        header, decoded = self._decode(data, progress, partial, seed)
        extras = Extras.from_chunks(header.chunks, header.width, header.height)
        rgb = tiling.decode_tiled(self.model, self.latents(decoded), self._tile, header.width, header.height, self.transform_dtype)
        if perceptual:
            rgb = tiling.refine_tiled(self.perceptual_decoder(), rgb, self.tile_pixels, self.transform_dtype)
        return picture_to_pil(Picture(rgb, extras.alpha, extras.icc, extras.exif))

    def perceptual_decoder(self) -> Refiner | LatentTexture:
        """The shipped perceptual decoder for this model (a `Refiner`, pqmim/models/perceptual.py,
        or a `LatentTexture`, pqmim/models/texture.py), loaded on first use; FileNotFoundError
        naming the models that have one. Set the attribute `perceptual` to another to use it (it
        must list this model's id)."""
        if self.perceptual is None:
            self.perceptual = load_decoder(zoo.perceptual_path(self.model_id), self.model_id.hex()).to(self.device)
        if self.model_id.hex() not in self.perceptual.serves:
            raise ValueError(f"this perceptual decoder was not trained for {self.name or 'this model'} (id {self.model_id.hex()})")
        return self.perceptual


TRANSFORMS = ("auto", "float32", "bfloat16")


def transform_dtype(transforms: str, device: torch.device) -> torch.dtype:
    """The dtype of the CPU transforms' convolutions for a `transforms` setting (TRANSFORMS).
    On a GPU the transforms run unbanded in float32, so only auto and float32 apply there."""
    if transforms not in TRANSFORMS:
        raise ValueError(f"transforms must be one of {', '.join(TRANSFORMS)}, got {transforms!r}")
    if device.type != "cpu":
        if transforms == "bfloat16":
            raise ValueError("transforms='bfloat16' is for the CPU: on a GPU the transforms run in float32")
        return torch.float32
    if transforms == "auto":
        return torch.bfloat16 if banded.native_bfloat16() else torch.float32
    return getattr(torch, transforms)


def fill_of(seed: int | None) -> int:
    """The format's fill field for a seed: 0 (expected code words) for None, else seed + 1."""
    if seed is None:
        return 0
    if not 0 <= seed < fmt.MAX_FILL:
        raise ValueError(f"seed must be 0 to {fmt.MAX_FILL - 1}, got {seed}")
    return seed + 1


def shipped_codec(name: str | None = None, device: str = "cpu") -> Codec:
    """The Codec of a shipped model (None: the default) on a device, loaded once per process
    (for the CLI, the Pillow plugin and target-size coding)."""
    return _shipped(zoo.resolve(name), str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _shipped(name: str, device: str) -> Codec:
    return Codec.from_pretrained(name, device=device)


def codec_for(data: bytes, device: str = "cpu") -> Codec:
    """The shipped model whose id a bitstream names; BitstreamError if none is (saying which
    model made it, and for a retired one the release that decodes it)."""
    header, _, _ = fmt.unpack_partial(data)  # a progressive file cut short names its model too
    name = zoo.name_for_id(header.model_id)
    if name is None:
        what = zoo.describe_id(header.model_id)
        raise fmt.BitstreamError(
            f"file encoded with {what}"
            + ("" if zoo.retired(header.model_id) else ", not a shipped one: load its model file (Codec.from_file, or --model-file)")
        )
    return shipped_codec(name, device)
