"""Interfaces of the compression core: what is lost (Quantizer) and how it is written (Codec).

The split follows GRACE: a :class:`Quantizer` maps a float vector to integer codes plus
the few scalars a receiver needs (:class:`Quantized`); a :class:`Codec` turns that into
self-describing ``bytes`` and back. Only bytes travel; the reported bits are
``8 * len(payload)``.

Implementations are registered by name (as in Bagua or scikit-learn) so that a config
string picks them and the contract suite (``tests/test_compression_contract.py``) runs
over every registered quantizer x codec that fits::

    @register_quantizer("my-quantizer")
    class MyQuantizer(Quantizer):
        unbiased = False
        kinds = frozenset({"signed"})
        ...

    quantizer = make_quantizer("my-quantizer", **kwargs)

A message has a *kind* (:data:`KINDS`): unsigned "levels", "raw" float32, "signed"
levels with a norm, or "sparse" positions + values. A quantizer declares the kinds it
produces and a codec those it writes; :func:`check_compatible` refuses a pair that does
not fit (an algorithm calls it at set-up, :class:`~.memory.PublicCopies` does).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from ..numeric import frozen_at_once


class PayloadError(ValueError):
    """A payload is malformed, truncated, or does not match what the receiver expects."""


MAX_SCALE = 1e30
"""Largest scale (levels' range R, signed scale) a payload may declare: beyond it the
sender's model has diverged (the algorithms' own limit on ``|theta|`` is the same 1e30).
:meth:`Codec.check_envelope` and every ``decode`` refuse more; ``encode`` raises
:class:`ScaleOverflowError`."""


class ScaleOverflowError(FloatingPointError, ValueError):
    """``encode`` of a message whose scale exceeds :data:`MAX_SCALE`: no receiver would
    accept it. A ``FloatingPointError`` (a worker reports it as divergence) and a
    ``ValueError`` (what ``encode`` raises for anything it cannot write)."""


def check_declared_size(declared: int, size: int | None) -> None:
    """``PayloadError`` unless the entry count a header declares is the expected ``size``
    (no check for ``size=None``)."""
    if size is not None and declared != size:
        raise PayloadError(f"payload declares {declared} entries, the receiver expects {size}")


class ScaleLimitError(PayloadError):
    """A header's scale (range R) beyond the receiver's limit: a well-formed payload whose
    sender's model difference is that large, i.e. its model diverged. ``scale``: the
    value (``inf`` once the exception has been pickled)."""

    def __init__(self, message: str, scale: float = math.inf) -> None:
        super().__init__(message)
        self.scale = scale


def check_header_scale(scale: float, max_scale: float, what: str) -> None:
    """``PayloadError`` unless a header's scale is finite, >= 0 and <= ``max_scale``
    (:class:`ScaleLimitError` when it is only too large)."""
    if not math.isfinite(scale):
        raise PayloadError(f"bad header: {what} = {scale:.7g} is not finite")
    if scale < 0:
        raise PayloadError(f"bad header: {what} = {scale:.7g} is negative")
    if scale > max_scale:
        raise ScaleLimitError(f"bad header: {what} = {scale:.7g} exceeds {max_scale:g}", scale)


def payload_view(payload: object) -> memoryview:
    """The bytes of a payload as a flat ``memoryview`` (no copy); ``PayloadError`` for
    anything that is not a contiguous bytes-like object."""
    try:
        view = memoryview(payload)  # type: ignore[arg-type]
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise PayloadError(f"a payload is bytes, got {type(payload).__name__}") from None


KINDS = ("levels", "raw", "signed", "sparse")
"""What a :class:`Quantized` can carry (``Quantized.kind``):

- ``"levels"``: unsigned b-bit levels ``codes`` in ``0..2^b - 1`` over the range
  ``scale = R`` (the Q-GADMM stochastic quantizer); ``bits = b`` in 1..16. Any unsigned
  integer type: the quantizer writes ``uint32``, the fixed-width codec decodes to the
  narrowest type of the width (``uint8`` up to 8 bits, else ``uint16``);
- ``"raw"``: the ``float32`` values themselves (the lossless path); ``bits = 32``;
- ``"signed"``: signed integer levels ``codes`` in ``[-s, s]`` (``int32``) with
  ``levels = s >= 1`` and a float32 scale (the dithered quantizer's norm, the scaled
  sign's ``||x||_1 / d``); the entry is ``scale * code / s`` before any quantizer-specific
  factor; ``bits`` is the width of one dense code, ``ceil(log2(2s + 1))``;
- ``"sparse"``: ``k`` positions ``index`` (strictly increasing, ``< dim``) and their
  ``float32`` values ``codes`` (top-k, random-k); every other entry is 0; ``bits = 32``.
"""


@dataclass(frozen=True)
class Quantized:
    """Everything a receiver needs to rebuild a quantized vector; nothing is kept local.

    The first three fields are the historic ones (``Quantized(codes, scale, bits)`` is a
    "levels" message, or "raw" with ``bits = 32``); the others describe the new kinds
    (see :data:`KINDS`).

    Attributes
    ----------
    codes : np.ndarray
        Integer levels (unsigned for "levels", ``int32`` for "signed"), or ``float32``
        values ("raw": every entry, "sparse": the entries at ``index``).
    scale : float
        The range ``R`` ("levels") or the norm scale ("signed"), a float32 value; 0 for
        "raw" and "sparse".
    bits : int
        Width of one entry in a dense message (1..16 for levels, 32 for raw / sparse
        values, ``ceil(log2(2s + 1))`` for signed levels).
    kind : str
        One of :data:`KINDS`; by default ``"raw"`` if ``bits == 32`` else ``"levels"``.
    levels : int
        "signed" only: the top level s (``|codes| <= s``); 0 otherwise.
    index : np.ndarray or None
        "sparse" only: the positions of ``codes``.
    dim : int
        "sparse" only: the dimension d of the vector (``size``); -1 otherwise.
    """

    codes: np.ndarray
    scale: float
    bits: int
    kind: str = ""
    levels: int = 0
    index: np.ndarray | None = None
    dim: int = -1

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "raw" if self.bits == 32 else "levels")
        elif self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; kinds: {list(KINDS)}")
        if self.kind == "sparse" and (self.index is None or self.dim < 0):
            raise ValueError("a sparse Quantized needs index and dim")

    @property
    def size(self) -> int:
        """Number of entries d of the vector (``dim`` for sparse, else ``len(codes)``)."""
        return int(self.dim) if self.kind == "sparse" else int(self.codes.shape[0])


def dense_quantized(codes: np.ndarray, scale: float, bits: int, kind: str) -> Quantized:
    """``Quantized(codes, scale, bits, kind)`` for ``kind`` "levels" or "raw", built by
    the package's own quantizers and decoders (which know the kind): the fields are set
    at once, without the frozen dataclass's per-field ``__setattr__`` and
    ``__post_init__`` (about 1 us per message; ``__post_init__`` has nothing to fill or
    refuse for these kinds). The same object in every respect (equality, repr,
    pickling)."""
    fields = {"codes": codes, "scale": scale, "bits": bits, "kind": kind}
    return frozen_at_once(Quantized, {**fields, "levels": 0, "index": None, "dim": -1})


class Quantizer(ABC):
    """Maps a float vector to :class:`Quantized` and back. Stateless: the RNG is passed in.

    Every registered quantizer declares, at class level, the properties the contract
    suite checks:

    - ``unbiased`` (required): ``E[dequantize(quantize(x))] == x`` over the RNG (up to
      the float32 rounding of ``x``);
    - ``lossless`` (default False): ``dequantize(quantize(x)) == float32(x)`` exactly;
    - ``kinds`` (default ``{"levels"}``): the :data:`KINDS` of the messages it produces,
      which a codec must be able to write (:func:`check_compatible`).
    """

    unbiased: ClassVar[bool]
    lossless: ClassVar[bool] = False
    kinds: ClassVar[frozenset[str]] = frozenset({"levels"})

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

    def shrink(self, dim: int) -> float:
        """tau >= 1 such that ``E[dequantize(quantize(x))] = x / tau`` for every ``x`` of
        ``dim`` entries: a public copy that receives these messages follows its model by
        1/tau of the residual per round (CHOCO's scaled dithered quantizer: its variance
        scaling; random-k: d / k). 1 for an unbiased quantizer, and for one whose mean is
        not a multiple of ``x`` (top-k, sign). CHOCO / Malcom's automatic consensus step
        is ``min(0.1, 2 / tau)``."""
        return 1.0

    def error_bound(self, q: Quantized) -> float:
        """Largest ``|dequantize(q)_i - x_i|`` over the entries of any ``x`` quantized to ``q``.

        Not counting the float32 rounding of ``x`` (so 0 for lossless quantizers);
        ``math.inf`` where ``q`` does not bound it (random-k: a dropped entry can be
        anything).
        """
        raise NotImplementedError(f"{type(self).__name__} does not declare an error bound")


class Codec(ABC):
    """Writes :class:`Quantized` as bytes and reads it back (raises :class:`PayloadError`).

    Declared at class level:

    - ``kinds``: the :data:`KINDS` it can write (``encode`` raises ``ValueError`` for any
      other; ``decode`` returns the kind the payload carries);
    - ``header_overhead_bits``: the most a payload carries beyond the quantizer's
      :meth:`Quantizer.nominal_bits` (framing such as width and size fields), apart from
      fewer than 8 bits padding the body to whole bytes, for the historic kinds
      ("levels", "raw"); :meth:`overhead_bits` gives the exact count per message (the
      fixed-width codec's size field is a varint: 16 bits of framing for d < 128, up to
      48);
    - ``variable_length``: True if the length depends on the values (an entropy coder),
      not only on the kind, width and size; then only :meth:`payload_length` predicts it.

    :meth:`check_envelope` refuses, in O(1), a payload whose header or length cannot be a
    message for a model of d entries (what a relay checks before forwarding); ``decode``
    runs the same checks before reading the values.
    """

    header_overhead_bits: ClassVar[int]
    kinds: ClassVar[frozenset[str]] = frozenset({"levels", "raw"})
    variable_length: ClassVar[bool] = False

    @abstractmethod
    def encode(self, q: Quantized) -> bytes:
        """Serialize a quantized vector (``ValueError`` if it cannot be written)."""

    @abstractmethod
    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        """Parse a payload; ``size`` (if given) is the length the receiver expects.

        Runs the checks of :meth:`check_envelope` (with ``max_scale =``
        :data:`MAX_SCALE`) first: a decoder never accepts what it refuses.
        """

    def max_payload_bytes(self, size: int) -> int:
        """An upper bound on the length of any payload of ``size`` entries (the relay's
        size check of sealed messages): ``16 + 8 size`` by default, above every message
        of the fixed-width codec (at most 32 bits per entry, or 32 plus an index)."""
        return 16 + 8 * int(size)

    def accepts_all(self, payloads: Sequence[bytes], size: int, max_scale: float) -> bool:
        """True if :meth:`check_envelope` (``size``, ``max_scale``) accepts every one of
        ``payloads``, as far as this codec can tell at a glance; False: check each one
        (the default)."""
        return False

    def check_envelope(self, payload: bytes, size: int, max_scale: float = MAX_SCALE) -> None:
        """Raise :class:`PayloadError` (saying what is wrong) unless ``payload`` can be a
        message of this codec for a model of ``size`` entries; return None otherwise.

        What the relay calls on every payload before forwarding it: the registered
        codecs look only at the header and the total length (O(1) in ``size``, no value
        is unpacked), so a payload it accepts may still carry invalid values that
        ``decode`` refuses; one it refuses, ``decode`` refuses too. ``max_scale`` bounds
        the scale fields (levels' range R, signed scale).

        This default, for codecs that do not override it, decodes the payload (O(d)).
        ``ValueError`` (not PayloadError) for a ``size`` that is not an integer >= 0.
        """
        size = check_expected_size(size)
        q = self.decode(payload, size=size)
        check_declared_size(q.size, size)
        if q.kind in ("levels", "signed"):
            check_header_scale(float(q.scale), max_scale, "scale")

    def supports(self, kind: str) -> bool:
        """Whether :meth:`encode` can write messages of this kind."""
        return kind in type(self).kinds

    def payload_bytes(self, bits: int, size: int) -> int:
        """Exact length of a dense payload of ``size`` entries of ``bits`` bits as the
        built-in quantizers produce it (fixed-length codecs; a levels range that needs
        more than 16 bits makes the fixed-width header 2 bytes longer: see
        :meth:`payload_length` for any message)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no length per width and size; use payload_length(q)"
        )

    def payload_length(self, q: Quantized) -> int:
        """Exact length in bytes of ``encode(q)`` (codecs may compute it without encoding)."""
        return len(self.encode(q))

    def overhead_bits(self, q: Quantized) -> int:
        """Bits of ``encode(q)`` beyond the nominal count of a dense layout of this kind
        (fixed-length codecs); the class's ``header_overhead_bits`` by default."""
        return type(self).header_overhead_bits


def check_expected_size(size: object, caller: str = "check_envelope") -> int:
    """The expected model size given to :meth:`Codec.check_envelope` (or ``decode``) as
    an int >= 0; ``ValueError`` otherwise (a caller's mistake, not a payload's)."""
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"{caller}: size must be an integer >= 0, got {size!r}")
    return int(size)


def registered_name(obj: object) -> str:
    """The name a quantizer or codec (class or instance) was registered under."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "registered_name", cls.__name__)


def check_compatible(quantizer: Quantizer, codec: Codec) -> None:
    """Raise ``ValueError`` unless ``codec`` can write every kind ``quantizer`` produces.

    E.g. ``codec 'source' cannot write the raw messages of quantizer 'float32' (it
    writes: levels, signed); codecs that can: ['fixed-width']``.
    """
    produced = type(quantizer).kinds
    missing = sorted(produced - type(codec).kinds)
    if missing:
        able = sorted(name for name, cls in CODECS.items() if produced <= cls.kinds)
        raise ValueError(
            f"codec {registered_name(codec)!r} cannot write the {', '.join(missing)} "
            f"messages of quantizer {registered_name(quantizer)!r} (it writes: "
            f"{', '.join(sorted(type(codec).kinds))}); codecs that can: {able}"
        )


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
    kinds = getattr(cls, "kinds", None)
    if not isinstance(kinds, frozenset) or not kinds or not kinds <= set(KINDS):
        raise TypeError(
            f"{kind} {name!r}: {cls.__qualname__} must declare kinds: a non-empty "
            f"frozenset of {list(KINDS)}, got {kinds!r}"
        )
    if name in registry:
        raise ValueError(
            f"{kind} {name!r} is already registered ({registry[name].__qualname__}); "
            "pick another name"
        )
    registry[name] = cls
    cls.registered_name = name


def register_quantizer(name: str) -> Callable[[Q], Q]:
    """Class decorator: register a :class:`Quantizer` subclass under ``name``.

    Raises ``ValueError`` for a name already taken and ``TypeError`` for a class that is
    not a Quantizer or does not declare ``unbiased`` / ``lossless`` as booleans and
    ``kinds`` as a frozenset of :data:`KINDS`.
    """

    def decorator(cls: Q) -> Q:
        declared = {"unbiased": bool, "lossless": bool}
        _register(QUANTIZERS, "quantizer", Quantizer, name, cls, declared)
        return cls

    return decorator


def register_codec(name: str) -> Callable[[C], C]:
    """Class decorator: register a :class:`Codec` subclass under ``name``.

    Raises ``ValueError`` for a name already taken and ``TypeError`` for a class that is
    not a Codec or does not declare ``header_overhead_bits`` as an int and ``kinds`` as a
    frozenset of :data:`KINDS`.
    """

    if name == "auto":  # the codec setting's "auto" is each algorithm's default codec
        raise ValueError("'auto' is the codec setting's default, not a codec name: choose another")

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
