"""pqmim: learned image compression with product-quantized masked image modeling (PQ-MIM).

`Codec` and `ModelFileError` are imported on first use, so that training (``python -m
pqmim.train``, the GPU round) runs where the entropy coder's library (constriction) is not
installed, and so that `import pqmim` (and `pqmim --version`, `info`, `models`) does not wait
for torch. Importing the package registers the .pqm format with Pillow (`Image.open("x.pqm")`,
`im.save("x.pqm")`: pqmim/pillow.py).
"""

from . import pillow as _pillow  # noqa: F401  (registers the .pqm format with Pillow)
from .format import BitstreamError
from .image import UnsupportedImageError

__version__ = "0.13.1"
__all__ = ["Codec", "BitstreamError", "UnsupportedImageError", "ModelFileError", "__version__"]


def __getattr__(name: str):
    if name == "Codec":
        from .codec import Codec

        return Codec
    if name == "ModelFileError":
        from .models import ModelFileError

        return ModelFileError
    raise AttributeError(f"module 'pqmim' has no attribute {name!r}")
