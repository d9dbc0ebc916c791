"""Networks of a pqmim model: autoencoder, product quantizer, MIM entropy model."""

from .autoencoder import Decoder, Encoder
from .model import PQMIM
from .weights import ModelFileError
from .quantizer import ProductQuantizer
from .transformer import MIMTransformer
from .warm_start import warm_start

__all__ = ["PQMIM", "ModelFileError", "Encoder", "Decoder", "ProductQuantizer", "MIMTransformer", "warm_start"]
