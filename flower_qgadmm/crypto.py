"""End-to-end encryption of peer messages: the relay forwards what it cannot read.

Flower has no peer-to-peer channel, so every peer message crosses the ServerApp. With
``encrypt = true`` each worker seals its payload for the neighbours it is meant for and
the relay only sees sizes.

Construction (all from the ``cryptography`` package):

- **Identity keys**: one X25519 key pair per worker. The deployment kit generates them
  next to the SuperNode keys and writes each device the public keys of every worker
  (a public directory the relay never gets to edit: the files travel out of band). In
  simulation, keys are derived per run from the seed, for testing only: whoever knows
  the seed knows them.
- **Edge keys**: k_ij = HKDF-SHA256(X25519(sk_i, pk_j), salt="flower-qgadmm/edge/v1",
  info=min(i,j)||max(i,j)), the same at both ends of the edge (static-static Diffie-
  Hellman; no handshake message).
- **Broadcast by content key**: the payload is encrypted once with a fresh random 32-byte
  content key K (ChaCha20-Poly1305) and K is wrapped for each recipient under its edge
  key (ChaCha20-Poly1305, 48 bytes). Per-edge encryption would upload the payload once
  per neighbour: with degree c and a payload of P bytes, per-edge costs 2c(P + 16) bytes
  across the relay (up and down), a content key (c + 1)(P + 16 + 50c + h); the content
  key is cheaper from P + 16 > (50c(c + 1) + ...)/(c - 1), about 300 bytes at c = 2, which
  every neural-network payload exceeds (a 1,370-parameter CNN at 4 bits: 692 bytes).
- **Nonces** are derived, never sent: for the content, SHA-256(session || iteration ||
  phase || sender)[:12] under a key used once; for the wrap of receiver r,
  SHA-256(session || iteration || phase || sender || r || SHA-256(ciphertext))[:12], so
  even a repeated (iteration, phase) (a repair redone) never reuses a nonce under an edge
  key, and an altered ciphertext changes the nonce the receiver derives.
- **Associated data** binds the header: session, sender, iteration, phase and the number
  of recipients, and for each wrap its receiver. A relay that alters, redirects (another sender
  label or receiver) or replays a message is detected: the receiver's unwrap or
  decryption fails, or the iteration is not newer than the last one it accepted from
  that sender (stored in the worker's state). The receiver then reports the message as
  forged and the failure policy applies to its (claimed) sender.

Layout of a sealed message (little-endian)::

    magic u8 (0xE1) | iteration u32 | phase length u8 | phase (ASCII) |
    count u8 | count x (recipient u16 | wrapped key 48 B) | ciphertext (P + 16 B)

Threat model and what is out of scope: docs/encryption.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .compression import PayloadError

MAGIC = 0xE1
TAG = 16  # Poly1305 tag
KEY = 32
WRAP = KEY + TAG
ENTRY = 2 + WRAP  # recipient id + wrapped key
_HEAD = struct.Struct("<BIB")


class ForgedMessage(PayloadError):
    """A sealed message that does not open: altered, redirected, replayed or foreign."""


# ---------------------------------------------------------------------- keys
def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY, salt=salt, info=info).derive(secret)


def simulated_private_key(seed: int, node: int) -> X25519PrivateKey:
    """A worker's identity key derived from the run seed (simulation and tests only)."""
    raw = _hkdf(str(int(seed)).encode(), b"flower-qgadmm/simulated-keys/v1", b"%d" % node)
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PublicKey) -> bytes:
    """Raw 32-byte public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Keyring:
    """A worker's identity key and the public keys of every worker of the run."""

    node: int
    private: X25519PrivateKey
    publics: Mapping[int, bytes]

    @classmethod
    def simulated(cls, seed: int, num_workers: int, node: int) -> Keyring:
        """Keys derived from the seed for every worker (simulation; not secret)."""
        return _simulated(int(seed), int(num_workers), int(node))

    @classmethod
    def from_files(cls, node: int, private_path: str | Path, publics_path: str | Path) -> Keyring:
        """Keys written by the deployment kit: this worker's raw private key (32 bytes)
        and a JSON file ``{"<worker>": "<hex public key>", ...}``."""
        private = X25519PrivateKey.from_private_bytes(Path(private_path).read_bytes())
        table = json.loads(Path(publics_path).read_text())
        publics = {int(k): bytes.fromhex(v) for k, v in table.items()}
        if publics.get(int(node)) != public_bytes(private.public_key()):
            raise ValueError(
                f"{publics_path} does not list worker {node}'s own public key: wrong key files"
            )
        return cls(int(node), private, publics)

    def edge_key(self, peer: int) -> bytes:
        """The key this worker shares with ``peer``."""
        return _edge_key(self.private, self.node, int(peer), self.publics.get(int(peer)))


@lru_cache(maxsize=64)
def _simulated(seed: int, num_workers: int, node: int) -> Keyring:
    publics = {
        n: public_bytes(simulated_private_key(seed, n).public_key()) for n in range(num_workers)
    }
    return Keyring(node, simulated_private_key(seed, node), publics)


@lru_cache(maxsize=4096)
def _edge_key(private: X25519PrivateKey, node: int, peer: int, public: bytes | None) -> bytes:
    if public is None:
        raise ForgedMessage(f"worker {node} has no public key of worker {peer}")
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    lo, hi = sorted((node, peer))
    return _hkdf(shared, b"flower-qgadmm/edge/v1", struct.pack("<II", lo, hi))


def write_keys(directory: str | Path, num_workers: int) -> list[Path]:
    """Generate identity keys for ``num_workers`` workers: ``worker-<i>.key`` (raw private
    key, mode 0600: copy it to device i only) and ``workers.pub.json`` (every public key;
    copy it to every device)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, publics = [], {}
    for n in range(num_workers):
        key = X25519PrivateKey.generate()
        path = directory / f"worker-{n}.key"
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        publics[str(n)] = public_bytes(key.public_key()).hex()
        paths.append(path)
    table = directory / "workers.pub.json"
    table.write_text(json.dumps(publics, indent=1))
    return [*paths, table]


# ---------------------------------------------------------------------- messages
def _nonce(session: bytes, iteration: int, phase: str, sender: int, receiver: int, what: bytes):
    data = session + struct.pack("<IIi", iteration, sender, receiver) + phase.encode() + what
    return hashlib.sha256(data).digest()[:12]


def _head_aad(session: bytes, sender: int, receiver: int, head: bytes) -> bytes:
    return session + struct.pack("<Ii", sender, receiver) + head


@dataclass(frozen=True)
class Sealed:
    """The parsed header of a sealed message."""

    iteration: int
    phase: str
    wraps: Mapping[int, bytes]  # recipient -> wrapped content key
    header: bytes  # the bytes before the ciphertext (bound as associated data)
    ciphertext: bytes


def parse(blob: bytes) -> Sealed:
    """The header of a sealed message (PayloadError if it is not one)."""
    if len(blob) < _HEAD.size + 1 + TAG or blob[0] != MAGIC:
        raise PayloadError("not a sealed message (encrypt = true expects one)")
    _, iteration, plen = _HEAD.unpack_from(blob)
    at = _HEAD.size
    phase_bytes = bytes(blob[at : at + plen])
    at += plen
    if len(blob) < at + 1:
        raise PayloadError("sealed message truncated in its header")
    count = blob[at]
    at += 1
    end = at + count * ENTRY
    if len(blob) < end + TAG:
        raise PayloadError("sealed message truncated in its recipient list")
    wraps = {}
    for i in range(count):
        (recipient,) = struct.unpack_from("<H", blob, at + i * ENTRY)
        wraps[recipient] = bytes(blob[at + i * ENTRY + 2 : at + (i + 1) * ENTRY])
    try:
        phase = phase_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("sealed message has a non-ASCII phase") from None
    return Sealed(iteration, phase, wraps, bytes(blob[:end]), bytes(blob[end:]))


def overhead(blob: bytes) -> int:
    """Bytes a sealed message adds to its payload (header, wrapped keys, tag)."""
    sealed = parse(blob)
    return len(sealed.header) + TAG


def check_sealed(blob: bytes, recipients: Iterable[int], max_plaintext: int | None = None) -> None:
    """The relay's check of a sealed message, without any key: a well-formed header whose
    recipients are exactly the sender's neighbours, and a ciphertext no longer than the
    largest payload allowed (PayloadError otherwise)."""
    sealed = parse(blob)
    want = sorted(int(r) for r in recipients)
    if sorted(sealed.wraps) != want:
        raise PayloadError(
            f"sealed for workers {sorted(sealed.wraps)}, the sender's neighbours are {want}"
        )
    if max_plaintext is not None and len(sealed.ciphertext) > max_plaintext + TAG:
        raise PayloadError(
            f"sealed payload of {len(sealed.ciphertext) - TAG} bytes exceeds the largest "
            f"possible ({max_plaintext})"
        )


class Channel:
    """A worker's sealing and opening of peer messages (see the module docstring)."""

    def __init__(self, keyring: Keyring, session: bytes) -> None:
        self.keyring = keyring
        self.node = keyring.node
        self.session = bytes(session)

    def seal(self, plaintext: bytes, iteration: int, phase: str, recipients: Iterable[int]):
        """The sealed message of ``plaintext`` for ``recipients``."""
        recipients = sorted(int(r) for r in recipients)
        check_recipients(len(recipients), self.node)
        phase_bytes = phase.encode("ascii")
        head = _HEAD.pack(MAGIC, int(iteration), len(phase_bytes)) + phase_bytes
        head += bytes([len(recipients)])
        content_key = os.urandom(KEY)
        nonce = _nonce(self.session, iteration, phase, self.node, -1, b"content")
        aad = _head_aad(self.session, self.node, -1, head)
        ciphertext = ChaCha20Poly1305(content_key).encrypt(nonce, bytes(plaintext), aad)
        digest = hashlib.sha256(ciphertext).digest()
        entries = []
        for r in recipients:
            nonce = _nonce(self.session, iteration, phase, self.node, r, digest)
            aad = _head_aad(self.session, self.node, r, head)
            wrapped = ChaCha20Poly1305(self.keyring.edge_key(r)).encrypt(nonce, content_key, aad)
            entries.append(struct.pack("<H", r) + wrapped)
        return head + b"".join(entries) + ciphertext

    def open(
        self, blob: bytes, sender: int, after: int, up_to: int, copy: bool = False
    ) -> tuple[bytes, int]:
        """(plaintext, iteration) of a message ``sender`` sealed for this worker; its
        iteration must be in ``(after, up_to]`` (no replay, no reordering), and it must be
        a repair copy (phase ``"copy"``) exactly when ``copy``. Raises
        :class:`ForgedMessage` otherwise."""
        if not 0 <= int(sender) <= 0xFFFF:  # worker ids travel as 16 bits
            raise ForgedMessage(f"forged message: {sender} is not a worker id")
        try:
            sealed = parse(blob)
        except PayloadError as exc:
            raise ForgedMessage(f"forged message from worker {sender}: {exc}") from None
        where = f"message from worker {sender} (iteration {sealed.iteration})"
        if (sealed.phase == COPY_PHASE) != copy:
            what = "a repair copy" if copy else "a peer message"
            raise ForgedMessage(f"forged {where}: a {sealed.phase!r} message given as {what}")
        if self.node not in sealed.wraps:
            raise ForgedMessage(f"forged {where}: not sealed for worker {self.node}")
        if not after < sealed.iteration <= up_to:
            raise ForgedMessage(
                f"replayed or reordered {where}: expected an iteration in ({after}, {up_to}]"
            )
        phase, head_end = sealed.phase, len(sealed.header) - ENTRY * len(sealed.wraps)
        head = sealed.header[:head_end]
        digest = hashlib.sha256(sealed.ciphertext).digest()
        nonce = _nonce(self.session, sealed.iteration, phase, sender, self.node, digest)
        aad = _head_aad(self.session, sender, self.node, head)
        try:
            key = self.keyring.edge_key(sender)
            content_key = ChaCha20Poly1305(key).decrypt(nonce, sealed.wraps[self.node], aad)
            nonce = _nonce(self.session, sealed.iteration, phase, sender, -1, b"content")
            aad = _head_aad(self.session, sender, -1, head)
            plain = ChaCha20Poly1305(content_key).decrypt(nonce, sealed.ciphertext, aad)
        except (InvalidTag, ValueError):
            raise ForgedMessage(
                f"forged {where}: it does not authenticate (altered, redirected or not "
                f"from worker {sender})"
            ) from None
        return plain, sealed.iteration


COPY_PHASE = "copy"
"""The phase name of a public copy sealed for new neighbours after a repair."""

MAX_RECIPIENTS = 255
"""Recipients of one sealed message: their count is one byte of the header."""


def check_recipients(count: int, node: int) -> None:
    """ValueError if worker ``node`` has more neighbours than a sealed message can name."""
    if count > MAX_RECIPIENTS:
        raise ValueError(
            f"encrypt = true seals a message for at most {MAX_RECIPIENTS} neighbours; worker "
            f"{node} has {count} (use a sparser topology or encrypt = false)"
        )


def session_of(seed: int, algorithm: str) -> bytes:
    """The run's session id bound into every message (from the run's seed and algorithm)."""
    return hashlib.sha256(f"flower-qgadmm/{algorithm}/{int(seed)}".encode()).digest()[:16]
