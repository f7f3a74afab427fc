"""Interfaces of the compression core: what is lost (Quantizer) and how it is written (Codec).

The split follows GRACE: a :class:`Quantizer` maps a float vector to integer codes plus
the few scalars a receiver needs (:class:`Quantized`); a :class:`Codec` turns that into
self-describing ``bytes`` and back. Only bytes travel; the reported bits are
``8 * len(payload)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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
    """Maps a float vector to :class:`Quantized` and back. Stateless: the RNG is passed in."""

    @abstractmethod
    def quantize(self, x: np.ndarray, rng: np.random.Generator) -> Quantized:
        """Quantize a 1-D float vector."""

    @abstractmethod
    def dequantize(self, q: Quantized) -> np.ndarray:
        """Rebuild the (lossy) float64 vector a receiver sees."""

    @abstractmethod
    def nominal_bits(self, q: Quantized) -> int:
        """The paper's bit count for this message (e.g. ``b*d + 32``)."""


class Codec(ABC):
    """Writes :class:`Quantized` as bytes and reads it back (raises :class:`PayloadError`)."""

    @abstractmethod
    def encode(self, q: Quantized) -> bytes:
        """Serialize a quantized vector."""

    @abstractmethod
    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        """Parse a payload; ``size`` (if given) is the length the receiver expects."""
