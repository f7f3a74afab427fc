"""Interfaces of the compression core: what is lost (Quantizer) and how it is written (Codec).

The split follows GRACE: a :class:`Quantizer` maps a float vector to integer codes plus
the few scalars a receiver needs (:class:`Quantized`); a :class:`Codec` turns that into
self-describing ``bytes`` and back. Only bytes travel; the reported bits are
``8 * len(payload)``.

Implementations are registered by name (as in Bagua or scikit-learn) so that a config
string picks them and the contract suite (``tests/test_compression_contract.py``) runs
over every registered quantizer x codec::

    @register_quantizer("my-quantizer")
    class MyQuantizer(Quantizer):
        unbiased = False
        ...

    quantizer = make_quantizer("my-quantizer", **kwargs)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np


class PayloadError(ValueError):
    """A payload is malformed, truncated, or does not match what the receiver expects."""


@dataclass(frozen=True)
class Quantized:
    """Everything a receiver needs to rebuild a quantized vector; nothing is kept local.

    Attributes
    ----------
    codes : np.ndarray
        Integer levels (``uint32``) for quantizers, or the raw ``float32`` values for the
        lossless path.
    scale : float
        The range ``R`` (float32-representable) of the stochastic quantizer; 0 for raw.
    bits : int
        Width of one entry in this message (1..16 for levels, 32 for raw floats).
    """

    codes: np.ndarray
    scale: float
    bits: int

    @property
    def size(self) -> int:
        """Number of entries."""
        return int(self.codes.shape[0])


class Quantizer(ABC):
    """Maps a float vector to :class:`Quantized` and back. Stateless: the RNG is passed in.

    Every registered quantizer declares, at class level, the properties the contract
    suite checks:

    - ``unbiased`` (required): ``E[dequantize(quantize(x))] == x`` over the RNG (up to
      the float32 rounding of ``x``);
    - ``lossless`` (default False): ``dequantize(quantize(x)) == float32(x)`` exactly.
    """

    unbiased: ClassVar[bool]
    lossless: ClassVar[bool] = False

    @abstractmethod
    def quantize(
        self, x: np.ndarray, rng: np.random.Generator, bits: int | None = None
    ) -> Quantized:
        """Quantize a 1-D finite float vector (``ValueError`` otherwise).

        ``bits`` overrides the width for this one message; fixed-width quantizers
        ignore it.
        """

    @abstractmethod
    def dequantize(self, q: Quantized) -> np.ndarray:
        """Rebuild the (lossy) float64 vector a receiver sees."""

    @abstractmethod
    def nominal_bits(self, q: Quantized) -> int:
        """The paper's bit count for this message (e.g. ``b*d + 32``)."""

    def error_bound(self, q: Quantized) -> float:
        """Largest ``|dequantize(q)_i - x_i|`` over the entries of any ``x`` quantized to ``q``.

        Not counting the float32 rounding of ``x`` (so 0 for lossless quantizers).
        """
        raise NotImplementedError(f"{type(self).__name__} does not declare an error bound")


class Codec(ABC):
    """Writes :class:`Quantized` as bytes and reads it back (raises :class:`PayloadError`).

    ``header_overhead_bits`` is what a payload carries beyond the quantizer's
    :meth:`Quantizer.nominal_bits` (framing such as width and size fields), apart from
    fewer than 8 bits padding the body to whole bytes.
    """

    header_overhead_bits: ClassVar[int]

    @abstractmethod
    def encode(self, q: Quantized) -> bytes:
        """Serialize a quantized vector (``ValueError`` if it cannot be written)."""

    @abstractmethod
    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        """Parse a payload; ``size`` (if given) is the length the receiver expects."""

    @abstractmethod
    def payload_bytes(self, bits: int, size: int) -> int:
        """Exact length of the payload of ``size`` entries of ``bits`` bits."""


# ---------------------------------------------------------------- registries

QUANTIZERS: dict[str, type[Quantizer]] = {}
CODECS: dict[str, type[Codec]] = {}

Q = TypeVar("Q", bound=type[Quantizer])
C = TypeVar("C", bound=type[Codec])


def _register(
    registry: dict, kind: str, base: type, name: str, cls: type, declared: dict[str, type]
) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{kind} {name!r}: {cls!r} is not a subclass of {base.__name__}")
    for attr, typ in declared.items():
        value = getattr(cls, attr, None)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise TypeError(
                f"{kind} {name!r}: {cls.__qualname__} must declare {attr}: {typ.__name__}"
            )
    if name in registry:
        raise ValueError(
            f"{kind} {name!r} is already registered ({registry[name].__qualname__}); "
            "pick another name"
        )
    registry[name] = cls


def register_quantizer(name: str) -> Callable[[Q], Q]:
    """Class decorator: register a :class:`Quantizer` subclass under ``name``.

    Raises ``ValueError`` for a name already taken and ``TypeError`` for a class that is
    not a Quantizer or does not declare ``unbiased`` / ``lossless`` as booleans.
    """

    def decorator(cls: Q) -> Q:
        declared = {"unbiased": bool, "lossless": bool}
        _register(QUANTIZERS, "quantizer", Quantizer, name, cls, declared)
        return cls

    return decorator


def register_codec(name: str) -> Callable[[C], C]:
    """Class decorator: register a :class:`Codec` subclass under ``name``.

    Raises ``ValueError`` for a name already taken and ``TypeError`` for a class that is
    not a Codec or does not declare ``header_overhead_bits`` as an int.
    """

    def decorator(cls: C) -> C:
        _register(CODECS, "codec", Codec, name, cls, {"header_overhead_bits": int})
        return cls

    return decorator


def make_quantizer(name: str, **kwargs) -> Quantizer:
    """A new instance of the quantizer registered as ``name`` (``KeyError`` if unknown)."""
    try:
        cls = QUANTIZERS[name]
    except KeyError:
        raise KeyError(f"unknown quantizer {name!r}; registered: {sorted(QUANTIZERS)}") from None
    return cls(**kwargs)


def make_codec(name: str, **kwargs) -> Codec:
    """A new instance of the codec registered as ``name`` (``KeyError`` if unknown)."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; registered: {sorted(CODECS)}") from None
    return cls(**kwargs)
