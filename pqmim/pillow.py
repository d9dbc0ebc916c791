"""A Pillow plugin for .pqm files, registered by `import pqmim` (or `import pqmim.pillow`).

    Image.open("photo.pqm")                       # size, mode and ICC profile from the header
    im.load()                                     # decodes (lazily: on first use of the pixels)
    im.save("photo.pqm", quality=3)               # a quality level 1..5 (default: the default model)
    im.save("photo.pqm", max_bytes=2000)          # the best level within 2000 bytes
    im.save("photo.pqm", model="pqmim-q2", exif=im.getexif())

Opening reads and checks the whole file (CRC-32) and its chunks, but runs no model: decoding
waits until the pixels are needed, as Pillow's other formats do. The decoder is the shipped
model the file names (loaded once per process). Mode is RGBA when the file has an alpha plane,
else RGB. Saving keeps the ICC profile (`icc_profile=` or the image's own) and writes EXIF only
when `exif=` is given, as Pillow's PNG and WebP writers do.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from . import format as fmt
from .extras import Extras

FORMAT = "PQM"
MIME = "image/x-pqm"


def _accept(prefix: bytes) -> bool:
    return prefix[:3] == fmt.MAGIC


class PqmImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "pqmim learned image codec"

    def _open(self) -> None:
        self._pqm = self.fp.read()
        try:
            header, _ = fmt.unpack(self._pqm)
        except fmt.BitstreamError as e:
            raise SyntaxError(str(e)) from None  # Pillow's signal for "not this format / broken"
        extras = Extras.from_chunks(header.chunks, header.width, header.height, alpha=False)
        has_alpha = header.chunk(b"ALPH") is not None
        self._size = (header.width, header.height)
        self._mode = "RGBA" if has_alpha else "RGB"
        if extras.icc:
            self.info["icc_profile"] = extras.icc
        if extras.exif:
            self.info["exif"] = extras.exif
        self.info["pqmim_model"] = header.model_id.hex()
        self.tile = [ImageFile._Tile("pqm", (0, 0) + self.size, 0, None)]


class PqmDecoder(ImageFile.PyDecoder):
    _pulls_fd = True

    def decode(self, buffer) -> tuple[int, int]:
        from .codec import codec_for

        data = self.fd.read()
        im = codec_for(data).decompress(data)
        self.set_as_raw(im.tobytes(), im.mode)
        return -1, 0


def _save(im: Image.Image, fp, filename) -> None:
    import dataclasses

    from . import zoo
    from .codec import shipped_codec
    from .image import read_picture
    from .sizing import compress_to_size

    info = im.encoderinfo
    pic = read_picture(im)
    exif = info.get("exif")
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    pic = dataclasses.replace(pic, icc=info.get("icc_profile", pic.icc) or None, exif=exif or None)
    quality, model, max_bytes = info.get("quality"), info.get("model"), info.get("max_bytes")
    if max_bytes is not None:
        if quality is not None or model is not None:
            raise ValueError("give max_bytes, or a quality or model, not both")
        data, _ = compress_to_size(pic, int(max_bytes), keep_metadata=True)
    else:
        if quality is not None and model is not None:
            raise ValueError("give a quality or a model, not both")
        data = shipped_codec(zoo.model_for_quality(int(quality)) if quality is not None else model).compress(pic, keep_metadata=True)
    fp.write(data)


def register() -> None:
    Image.register_open(FORMAT, PqmImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".pqm")
    Image.register_mime(FORMAT, MIME)
    Image.register_decoder("pqm", PqmDecoder)


register()
