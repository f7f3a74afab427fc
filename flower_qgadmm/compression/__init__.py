"""Compression core: quantizers (what is lost) and codecs (how it is written in bits)."""

from .base import Codec, PayloadError, Quantized, Quantizer
from .codecs import FixedWidthCodec, pack_codes, payload_bytes, unpack_codes
from .quantizers import Float32Quantizer, StochasticQuantizer, adaptive_bits, check_finite

__all__ = [
    "Codec",
    "FixedWidthCodec",
    "Float32Quantizer",
    "PayloadError",
    "Quantized",
    "Quantizer",
    "StochasticQuantizer",
    "adaptive_bits",
    "check_finite",
    "pack_codes",
    "payload_bytes",
    "unpack_codes",
]
