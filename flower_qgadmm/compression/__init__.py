"""Compression core: quantizers (what is lost) and codecs (how it is written in bits).

Implementations are registered by name: ``make_quantizer("stochastic", bits=2)``,
``make_codec("fixed-width")``; see :data:`QUANTIZERS` and :data:`CODECS`.
"""

from .base import (
    CODECS,
    QUANTIZERS,
    Codec,
    PayloadError,
    Quantized,
    Quantizer,
    make_codec,
    make_quantizer,
    register_codec,
    register_quantizer,
)
from .codecs import FixedWidthCodec, pack_codes, payload_bytes, unpack_codes
from .quantizers import (
    MAX_LEVEL_BITS,
    Float32Quantizer,
    StochasticQuantizer,
    adaptive_bits,
    check_finite,
    check_level_bits,
)

__all__ = [
    "CODECS",
    "Codec",
    "FixedWidthCodec",
    "Float32Quantizer",
    "MAX_LEVEL_BITS",
    "PayloadError",
    "QUANTIZERS",
    "Quantized",
    "Quantizer",
    "StochasticQuantizer",
    "adaptive_bits",
    "check_finite",
    "check_level_bits",
    "make_codec",
    "make_quantizer",
    "pack_codes",
    "payload_bytes",
    "register_codec",
    "register_quantizer",
    "unpack_codes",
]
