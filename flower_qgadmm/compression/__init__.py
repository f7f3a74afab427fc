"""Compression core: quantizers (what is lost) and codecs (how it is written in bits).

Implementations are registered by name: ``make_quantizer("stochastic", bits=2)``,
``make_codec("fixed-width")``; see :data:`QUANTIZERS` and :data:`CODECS`.

Quantizers: "stochastic" (Q-GADMM, kind "levels"), "float32" ("raw"), "dithered"
(QSGD, "signed"; ``variance_scaling=True`` for CHOCO's Q/tau), "sign" (scaled sign,
"signed"), "top-k" and "random-k" ("sparse"). Codecs: "fixed-width" (all four kinds)
and "source" (Malcom-PSGD's vector source coder: "signed" and "levels").
:func:`check_compatible` refuses a pair whose codec cannot write the quantizer's kinds,
e.g. Malcom-PSGD's ``make_quantizer("dithered", levels=1)`` with ``make_codec("source")``
is fine, ``make_quantizer("top-k", fraction=0.01)`` with it is not.
"""

from .base import (
    CODECS,
    KINDS,
    QUANTIZERS,
    Codec,
    PayloadError,
    Quantized,
    Quantizer,
    ScaleLimitError,
    check_compatible,
    make_codec,
    make_quantizer,
    register_codec,
    register_quantizer,
    registered_name,
)
from .codecs import FixedWidthCodec, pack_codes, payload_bytes, unpack_codes
from .compressors import (
    MAX_SIGNED_LEVEL,
    DitheredQuantizer,
    RandomKQuantizer,
    ScaledDitheredQuantizer,
    SignQuantizer,
    TopKQuantizer,
)
from .quantizers import (
    MAX_LEVEL_BITS,
    Float32Quantizer,
    StochasticQuantizer,
    adaptive_bits,
    check_finite,
    check_level_bits,
)
from .source import SourceCodec

__all__ = [
    "CODECS",
    "Codec",
    "DitheredQuantizer",
    "FixedWidthCodec",
    "Float32Quantizer",
    "KINDS",
    "MAX_LEVEL_BITS",
    "MAX_SIGNED_LEVEL",
    "PayloadError",
    "ScaleLimitError",
    "QUANTIZERS",
    "Quantized",
    "Quantizer",
    "RandomKQuantizer",
    "ScaledDitheredQuantizer",
    "SignQuantizer",
    "SourceCodec",
    "StochasticQuantizer",
    "TopKQuantizer",
    "adaptive_bits",
    "check_compatible",
    "check_finite",
    "check_level_bits",
    "make_codec",
    "make_quantizer",
    "pack_codes",
    "payload_bytes",
    "register_codec",
    "register_quantizer",
    "registered_name",
    "unpack_codes",
]
