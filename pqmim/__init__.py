"""pqmim: learned image compression with product-quantized masked image modeling (PQ-MIM)."""

from .codec import Codec
from .format import BitstreamError
from .image import UnsupportedImageError
from .models import ModelFileError

__version__ = "0.1.0"
__all__ = ["Codec", "BitstreamError", "UnsupportedImageError", "ModelFileError", "__version__"]
