"""Public copies: the "reference copy" memory every compressed algorithm shares.

Worker n keeps its model theta_n and a public copy theta_hat_n that each neighbour also
holds, plus its copies theta_hat_m of the neighbours. A transmission quantizes the
change v = theta_n - theta_hat_n; the sender decodes its own payload (GRACE's
sender-side decompress), so it adds exactly what the receivers rebuild from the same
bytes, and both ends stay bit-for-bit identical. For the fixed-width codec with the
stochastic or the float32 quantizer, whose round trip is exact by construction (the
codes and the float32 range or values are written as they are), the sender dequantizes
its message instead: the same floats without parsing the bytes
(``tests/test_sender_copy.py`` holds both pairs to it).

In one process (the reference runner) every payload is decoded once: the workers of a
run may share a :attr:`PublicCopies.memo` of what each payload decoded to; and the
members of a phase encode and receive together (:func:`encode_rows`,
:func:`receive_rows`), their vectors as the rows of one array: the same floats as one
call per worker, in a few numpy calls per phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..numeric import rows_beyond, within
from .base import Codec, PayloadError, Quantized, Quantizer, check_compatible, registered_name
from .codecs import FixedWidthCodec
from .quantizers import FLOAT32_MAX, Float32Quantizer, StochasticQuantizer

# (quantizer, codec) pairs whose decode of encode(q) is dequantize(q), bit for bit
EXACT_ROUND_TRIP = {(StochasticQuantizer, FixedWidthCodec), (Float32Quantizer, FixedWidthCodec)}

MAX_COPY = 1e30  # a neighbour's copy beyond this (or non-finite) means a bad payload


class DecodeMemo(dict):
    """A :attr:`PublicCopies.memo` (payload bytes -> the change it decodes to, read-only)
    that also holds, in :attr:`published`, each sender's public copy before and after
    the change (payload -> (before, after), read-only), put by :meth:`PublicCopies.commit`
    and :func:`commit_rows` when the new copy is within :data:`MAX_COPY`.

    A receiver whose copy of the sender *is* ``before`` (the same object) gets ``after``
    for ``before + change``: the same floats, computed once by the sender (the receivers
    add the same change to the same vector). A receiver whose copy is another object
    adds the change and then takes ``after`` if the sum equals it, so that from the
    next payload on it holds the same object as the sender. Copies are never written in
    place (every change makes a new vector), so sharing one is safe; a shared copy is
    read-only, which would show a violation at once. :meth:`clear` empties both."""

    def __init__(self) -> None:
        super().__init__()
        self.published: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def clear(self) -> None:
        super().clear()
        self.published.clear()


class PublicCopies:
    """theta_hat of one worker and of its neighbours, with the quantizer and codec.

    Parameters
    ----------
    node : int
        The owner.
    neighbours : sequence of int
        Whose copies it keeps.
    start : np.ndarray
        The shared initial model theta^0: every copy starts there.
    quantizer, codec : Quantizer, Codec
        How a change is quantized and written; ``ValueError`` if the codec cannot write
        what the quantizer produces (:func:`~.base.check_compatible`).
    """

    #: Payload bytes -> the change they decode to, shared by the workers of one in-process
    #: run (:class:`~flower_qgadmm.reference.InProcessTransport` sets it and drops old
    #: entries; None elsewhere, e.g. in a Flower ClientApp). The sender puts what its
    #: own payload decoded to; a receiver of the same bytes takes it instead of decoding
    #: them again. Decoding is a function of the bytes, the size and the quantizer, which
    #: are the same on every worker of a run, so a hit is exactly what decoding would give
    #: (the entries are read-only).
    memo: dict[bytes, np.ndarray] | None = None

    def __init__(
        self,
        node: int,
        neighbours: Sequence[int],
        start: np.ndarray,
        quantizer: Quantizer,
        codec: Codec,
    ) -> None:
        check_compatible(quantizer, codec)
        self.node = int(node)
        self.quantizer = quantizer
        self.codec = codec
        self.dim = int(start.size)
        self.hat = {m: start.copy() for m in (self.node, *neighbours)}
        # the sender's change is dequantize(q), not a decode of its payload (same floats)
        self.exact = (type(quantizer), type(codec)) in EXACT_ROUND_TRIP

    @property
    def own(self) -> np.ndarray:
        """theta_hat_n: this worker's copy as its neighbours hold it."""
        return self.hat[self.node]

    def __getitem__(self, m: int) -> np.ndarray:
        return self.hat[m]

    def decode(self, payload: bytes, where: str) -> np.ndarray:
        """The change a payload carries (raises PayloadError if malformed or foreign)."""
        fast = getattr(self.codec, "decode_values", None)  # same floats, fewer passes
        if fast is not None:
            return self.checked(fast(payload, self.dim, self.quantizer, where))
        q = self.codec.decode(payload, size=self.dim)
        kinds = type(self.quantizer).kinds
        if q.kind not in kinds:
            raise PayloadError(
                f"payload {where} carries a {q.kind} message, quantizer "
                f"{registered_name(self.quantizer)!r} expects {', '.join(sorted(kinds))}"
            )
        return self.dequantized(q)

    def dequantized(self, q: Quantized) -> np.ndarray:
        """``quantizer.dequantize(q)``, :meth:`checked`."""
        return self.checked(self.quantizer.dequantize(q))

    def checked(self, change: np.ndarray) -> np.ndarray:
        """``change``, refused (TypeError naming the quantizer) unless it is a float vector
        of the model's size (a custom quantizer's mistake)."""
        if not (
            isinstance(change, np.ndarray)
            and change.shape == (self.dim,)
            and change.dtype.kind == "f"
        ):
            got = (
                f"shape {change.shape}, dtype {change.dtype}"
                if isinstance(change, np.ndarray)
                else type(change).__name__
            )
            raise TypeError(
                f"quantizer {registered_name(self.quantizer)!r}: dequantize returned {got}; "
                f"expected a float vector of the model's {self.dim} entries"
            )
        return change

    def receive(self, src: int, payload: bytes) -> None:
        """Apply a neighbour's payload to its copy; a payload that would make the copy
        non-finite or larger than :data:`MAX_COPY` is refused (PayloadError), the copy
        kept."""
        if src == self.node or src not in self.hat:
            raise PayloadError(f"worker {self.node} got a payload from non-neighbour {src}")
        memo = self.memo
        change = memo.get(payload) if memo is not None and type(payload) is bytes else None
        if change is None:
            change = self.decode(payload, f"from worker {src}")
        copy = self.hat[src] + change
        if not within(copy, MAX_COPY):  # also catches NaN
            size = float(np.abs(copy).max()) if copy.size else 0.0
            raise PayloadError(
                f"payload from worker {src} would put its copy at max |x| = {size:.3g} "
                f"(> {MAX_COPY:g}): refused"
            )
        self.hat[src] = copy

    def encode(
        self, theta: np.ndarray, rng: np.random.Generator | None, bits: int | None = None
    ) -> tuple[bytes, np.ndarray, Quantized]:
        """(payload, decoded change, quantized) of theta - theta_hat_n; nothing is
        committed until :meth:`commit` (a censored change is dropped)."""
        v = theta - self.own
        q = self.quantizer.quantize(v, rng, bits=bits)
        if self.exact:  # the built-in pairs: q is what the quantizer has just built
            payload = self.codec.encode_built(q)  # without checking it again
            # what decoding the payload gives, without reading it back: a float vector
            # of v's shape, (dim,) (quantize refuses any other)
            change = self.quantizer.dequantize(q)
        else:
            if not isinstance(q, Quantized):  # a quantizer of yours
                raise TypeError(
                    f"{type(self.quantizer).__name__}.quantize returned a {type(q).__name__}; "
                    "it must return a Quantized"
                )
            payload = self.codec.encode(q)
            change = self.decode(payload, "of its own")
        if self.memo is not None:
            change.flags.writeable = False  # shared with the receivers of the payload
            self.memo[payload] = change
        return payload, change, q

    def commit(self, change: np.ndarray, payload: bytes | None = None) -> None:
        """theta_hat_n += change (after ``payload``, which carries it, was sent); with a
        :class:`DecodeMemo` holding ``change`` itself for ``payload`` (what :meth:`encode`
        put), the copy before and after are published for the receivers."""
        before = self.hat[self.node]
        self.hat[self.node] = after = before + change
        published = getattr(self.memo, "published", None)
        if (
            published is not None
            and payload is not None
            and self.memo.get(payload) is change  # what the receivers would add
            and within(after, MAX_COPY)
        ):
            after.flags.writeable = False  # shared with the receivers
            published[payload] = (before, after)

    def rewire(self, neighbours: Sequence[int], copies: Mapping[int, np.ndarray]) -> None:
        """Keep the copies of remaining neighbours; a new neighbour starts from its
        current public copy (``copies``), which both ends then hold."""
        missing = [m for m in neighbours if m not in self.hat and m not in copies]
        if missing:
            raise ValueError(
                f"worker {self.node}: no public copy given for new neighbours {missing}"
            )
        self.hat = {
            self.node: self.own,
            **{
                int(m): self.hat[m] if m in self.hat else np.asarray(copies[m], np.float64)
                for m in neighbours
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """``hat.<m>`` arrays for a state dict."""
        return {f"hat.{m}": v for m, v in self.hat.items()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`arrays`."""
        self.hat = {m: np.array(arrays[f"hat.{m}"], dtype=np.float64) for m in self.hat}


def lossless_rows(copies: Sequence[PublicCopies]) -> bool:
    """Every one of ``copies`` sends the float32 path with the fixed-width codec (the
    pair :func:`encode_rows` writes at once)."""
    return all(
        [type(c.quantizer) is Float32Quantizer and type(c.codec) is FixedWidthCodec for c in copies]
    )


def encode_rows(
    copies: Sequence[PublicCopies], thetas: np.ndarray, owns: np.ndarray
) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """``[c.encode(t, None) for c, t in zip(copies, thetas)]`` of copies that send the
    float32 path (:func:`lossless_rows`; ``owns``: their own copies as rows, see
    :func:`own_rows`), as (payloads, changes as the rows of one read-only array, the
    float32 values sent as rows): the same bytes and floats, with the differences, their
    float32 casts and the changes computed for all rows at once. A row out of the float32
    range (or NaN/Inf) raises the error its quantizer raises."""
    v = thetas - owns
    for i in rows_beyond(v, FLOAT32_MAX):
        copies[i].quantizer.quantize(v[i])  # raises what a worker's encode would
    codes = v.astype(np.float32)
    changes = codes.astype(np.float64)  # Float32Quantizer.dequantize of every row
    payloads = copies[0].codec.encode_raw_rows(codes)
    memo = copies[0].memo
    if memo is not None:  # one run's workers share one memo (InProcessTransport)
        changes.flags.writeable = False  # shared with the receivers of each payload
        memo.update(zip(payloads, changes, strict=True))
    return payloads, changes, codes


def own_rows(copies: Sequence[PublicCopies]) -> np.ndarray:
    """The own copies theta_hat_n of ``copies`` as the rows of a new array."""
    return np.array([c.hat[c.node] for c in copies])  # c.own of each; rows, as np.stack


def commit_rows(
    copies: Sequence[PublicCopies],
    changes: np.ndarray,
    owns: np.ndarray,
    payloads: Sequence[bytes] | None = None,
) -> np.ndarray:
    """``c.commit(change, payload)`` for every one of ``copies``, row of ``changes`` and
    one of ``payloads``, given ``owns``, their own copies (:func:`own_rows`, which this
    updates); returns the new own copies (``owns``, whose rows the copies now hold)."""
    owns += changes
    published = getattr(copies[0].memo, "published", None) if copies else None
    sharing = published is not None and payloads is not None
    if sharing:
        owns.flags.writeable = False  # shared with the receivers (its rows: made below)
    rows = list(owns)
    if sharing:
        befores = [c.hat[c.node] for c in copies]
        published.update(zip(payloads, zip(befores, rows, strict=True), strict=True))
        for k in rows_beyond(owns, MAX_COPY):  # not published: the receivers refuse them
            published.pop(payloads[k], None)
    for c, row in zip(copies, rows, strict=True):
        c.hat[c.node] = row
    return owns


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Float64 vectors ``a`` and ``b`` hold the same bits (signed zeros told apart)."""
    return a.dtype == b.dtype == np.float64 and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def receive_rows(
    copies: Sequence[PublicCopies], inboxes: Sequence[Mapping[int, bytes]]
) -> list[dict[int, str]] | None:
    """``c.receive(src, payload)`` of every payload in each copies' inbox, the payloads a
    shared :attr:`PublicCopies.memo` holds added at once (the same floats); the others
    one by one. Returns ``{sender: reason}`` per copies (what ``Worker.receive_all``
    returns), or None (nothing received) when the copies share no memo."""
    memo = copies[0].memo if copies else None
    if memo is None:
        return None
    published = getattr(memo, "published", None) or {}
    blamed: list[dict[int, str]] = [{} for _ in copies]
    held, alone = [], []  # (copies index, sender, payload[, change]): memo hits, the rest
    for i, (c, inbox) in enumerate(zip(copies, inboxes, strict=True)):
        hat = c.hat
        for src, payload in inbox.items():
            if type(payload) is not bytes or src == c.node:  # receive's errors
                alone.append((i, src, payload))
                continue
            copy = published.get(payload)
            if copy is not None and hat.get(src) is copy[0]:
                hat[src] = copy[1]  # copy[0] + the payload's change: the sender's sum
                continue
            change = memo.get(payload)
            if change is None or src not in hat:
                alone.append((i, src, payload))
            else:
                held.append((i, src, payload, change))
    if held:
        hats = [c.hat for c in copies]
        olds = [hats[i][src] for i, src, _, _ in held]
        updated = np.array(olds)  # rows, as np.stack
        updated += np.array([change for _, _, _, change in held])
        refused = rows_beyond(updated, MAX_COPY)
        for k, ((i, src, payload, _), row) in enumerate(zip(held, updated, strict=True)):
            if refused and k in refused:  # the copy kept, receive's reason
                alone.append((i, src, payload))
                continue
            copy = published.get(payload)
            # the sender's copy itself when bit for bit the same: shared from now on
            hats[i][src] = copy[1] if copy is not None and _same_bits(row, copy[1]) else row
    for i, src, payload in alone:
        try:
            copies[i].receive(src, payload)
        except PayloadError as exc:
            blamed[i][int(src)] = str(exc)
    return blamed
