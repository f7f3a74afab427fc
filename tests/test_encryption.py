"""End-to-end encrypted peer messages: the relay forwards what it cannot read, and a
relay that tampers, replays, reorders or redirects is caught by the receiver."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from clients.experiment.client_app import app
from flower_qgadmm.compression import PayloadError, make_codec
from flower_qgadmm.config import RunConfig
from flower_qgadmm.crypto import Channel, ForgedMessage, Keyring, session_of, write_keys
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.flower.records import inbox_record, record_inbox
from flower_qgadmm.reference import least_squares_solvers, run_from_config
from flower_qgadmm.testing import FakeGrid

SMALL = {"num-workers": 5, "samples-per-worker": 20, "dim": 6, "num-iterations": 12, "rho": 5.0}
MODEL_KEYS = ("objective", "objective_gap", "train_loss", "edge_disagreement", "consensus_error")


def config(**extra) -> RunConfig:
    return RunConfig.from_run_config({**SMALL, "evaluate-every": 1, **extra})


def reference(cfg: RunConfig):
    return run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)))


@pytest.mark.parametrize(
    "settings",
    [
        {"algorithm": "q-gadmm", "bits": 3},
        {"algorithm": "gadmm"},
        {"algorithm": "d-psgd", "topology": "ring"},
        {"algorithm": "choco-sgd", "topology": "ring"},
        {"algorithm": "malcom-psgd", "topology": "ring"},
    ],
)
def test_encrypted_run_has_the_same_models_and_counts_the_overhead(settings) -> None:
    plain = reference(config(**settings))
    sealed = reference(config(**settings, encrypt=True))
    np.testing.assert_array_equal(sealed.models, plain.models)
    for p, s in zip(plain.history, sealed.history, strict=True):
        assert {k: s[k] for k in MODEL_KEYS} == {k: p[k] for k in MODEL_KEYS}
        assert s["bits"] - p["bits"] == 8 * s["encryption_overhead_bytes"]
        assert s["nominal_bits"] == p["nominal_bits"]


class CuriousGrid(FakeGrid):
    """A relay that tries to read every payload it forwards, and may attack them."""

    def __init__(self, *args, dim: int, attack=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dim = dim
        self.attack = attack
        self.seen = self.decoded = 0
        self.kept: dict[tuple[int, int], bytes] = {}  # (src, iteration) -> an old payload

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        messages = list(messages)
        for msg in messages:
            if msg.metadata.message_type != "train.step" or "inbox" not in msg.content:
                continue
            k = int(msg.content["round"]["iteration"])
            inbox = record_inbox(msg.content["inbox"])
            for payload in inbox.values():
                self.seen += 1
                for codec in ("fixed-width", "source"):
                    try:
                        make_codec(codec).decode(payload, size=self.dim)
                        self.decoded += 1
                    except PayloadError:
                        pass
            if self.attack is not None:
                inbox = self.attack(self, k, inbox)
                msg.content["inbox"] = inbox_record(inbox)
        return super().send_and_receive(messages, timeout=timeout)


def flower(cfg: RunConfig, attack=None):
    grid = CuriousGrid(app, cfg.num_workers, cfg.to_run_config(), dim=cfg.dim, attack=attack)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    return strategy, grid


@pytest.mark.parametrize("algorithm", ["q-gadmm", "malcom-psgd"])
def test_the_relay_cannot_decode_any_payload_and_flower_equals_the_reference(algorithm) -> None:
    extra = {"topology": "ring"} if algorithm == "malcom-psgd" else {}
    cfg = config(algorithm=algorithm, encrypt=True, **extra)
    strategy, grid = flower(cfg)
    assert grid.seen > 0 and grid.decoded == 0
    assert strategy.history == [
        {**row, **{k: v for k, v in got.items() if k.startswith("flower_")}}
        for row, got in zip(reference(cfg).history, strategy.history, strict=True)
    ]
    # ... whereas without encryption every payload decodes
    _, clear = flower(config(algorithm=algorithm, **extra))
    assert clear.decoded == clear.seen > 0


def tamper(grid, k, inbox):
    if k == 5 and 1 in inbox:
        payload = bytearray(inbox[1])
        payload[-1] ^= 0x01  # one bit of the ciphertext
        inbox[1] = bytes(payload)
    return inbox


def replay(grid, k, inbox):
    if 1 in inbox:
        if k == 3:
            grid.kept[(1, k)] = inbox[1]
        if k == 6:
            inbox[1] = grid.kept[(1, 3)]  # an old message of worker 1 again
    return inbox


def redirect(grid, k, inbox):
    if k == 5 and 1 in inbox and 3 in inbox:
        inbox[1], inbox[3] = inbox[3], inbox[1]  # worker 3's message labelled as worker 1's
    return inbox


def reorder(grid, k, inbox):
    if 1 in inbox:
        grid.kept[(1, k)] = inbox[1]
        if k == 7:
            inbox[1] = grid.kept[(1, 6)]  # the previous one instead of the newest
    return inbox


@pytest.mark.parametrize("attack", [tamper, replay, redirect, reorder])
def test_an_attacking_relay_is_caught_and_the_message_attributed(attack, caplog) -> None:
    cfg = config(algorithm="q-gadmm", encrypt=True, topology="chain")
    strategy, _ = flower(cfg, attack)
    # the receiver refused the message and named its (claimed) sender: it left the run
    assert 1 not in strategy.graph.active
    assert "could not decode" in caplog.text
    assert any(w in caplog.text for w in ("forged", "replayed or reordered"))


def channels(folder, count: int) -> tuple[list[Keyring], bytes, Channel, Channel]:
    """Keys of ``count`` workers written to ``folder`` and read back: (keyrings, session,
    worker 0's channel, worker 1's channel)."""
    write_keys(folder, count)
    rings = [
        Keyring.from_files(n, folder / f"worker-{n}.key", folder / "workers.pub.json")
        for n in range(count)
    ]
    session = session_of(0, "Gadmm")
    return rings, session, Channel(rings[0], session), Channel(rings[1], session)


def test_keys_from_files_and_a_substituted_public_key(tmp_path) -> None:
    rings, session, sender, receiver = channels(tmp_path, 3)
    blob = sender.seal(b"payload", 4, "head", [1, 2])
    assert receiver.open(blob, 0, 3, 5) == (b"payload", 4)
    # a relay that swapped worker 0's public key for its own: nothing opens
    forged = Keyring(1, rings[1].private, {**rings[1].publics, 0: rings[2].publics[2]})
    with pytest.raises(ForgedMessage, match="does not authenticate"):
        Channel(forged, session).open(blob, 0, 3, 5)
    with pytest.raises(ValueError, match="does not list worker 2's own public key"):
        Keyring.from_files(2, tmp_path / "worker-1.key", tmp_path / "workers.pub.json")
    assert oct((tmp_path / "worker-0.key").stat().st_mode & 0o777) == "0o600"


def test_a_repair_sends_sealed_copies() -> None:
    cfg = config(algorithm="q-gadmm", encrypt=True, **{"num-iterations": 10})

    def silent(pid: int, msg: Message) -> bool:
        return pid == 2 and "round" in msg.content and int(msg.content["round"]["iteration"]) >= 4

    grid = FakeGrid(app, 5, cfg.to_run_config(), fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    strategy.start(grid, num_rounds=10, timeout=1.0)
    repairs = [m for m in grid.sent if m.metadata.message_type == "query.repair"]
    copies = [a for m in repairs for a in m.content["copies"].values()]
    assert copies and all(a.dtype == "uint8" for a in copies)  # sealed bytes, no model
    assert strategy.history[-1]["objective_gap"] < strategy.history[3]["objective_gap"]


class DeployedGrid(FakeGrid):
    """A FakeGrid standing for a deployment (not Flower's simulation)."""

    simulation = False


def test_a_deployed_worker_without_key_files_refuses_to_encrypt() -> None:
    # Without the kit's key files the keys would come from the seed, which the relay
    # knows: the workers refuse at set-up instead of sealing with them
    cfg = config(algorithm="q-gadmm", encrypt=True, **{"on-failure": "stop"})
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    with pytest.raises(Exception, match="needs its key files"):
        strategy.start(DeployedGrid(app, 5, cfg.to_run_config()), num_rounds=2, timeout=5.0)
    # in a simulation the seed-derived keys are allowed (and protect nothing)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    strategy.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=2, timeout=5.0)
    assert len(strategy.history) == 2


def test_a_message_labelled_with_an_impossible_sender_is_blamed_not_a_crash() -> None:
    from flower_qgadmm.reference import build_workers

    cfg = config(algorithm="q-gadmm", encrypt=True)
    workers = build_workers(
        "q-gadmm", least_squares_solvers(experiment_datasets(cfg)), settings=cfg.algo
    )
    blob = workers[0].send(1, "head")
    for label in (-1, 2**40):
        blame = workers[1].receive_all({label: blob})
        assert list(blame) == [label] and "worker" in blame[label]


def test_more_neighbours_than_a_sealed_message_can_name_is_refused_up_front() -> None:
    from flower_qgadmm.algorithms import GossipSettings
    from flower_qgadmm.reference import make_engine
    from flower_qgadmm.topology import complete

    data = [(np.eye(2), np.ones(2))] * 257
    settings = GossipSettings(encrypt=True)
    with pytest.raises(ValueError, match="at most 255 neighbours; worker 0 has 256"):
        make_engine("d-psgd", least_squares_solvers(data), complete(257), settings)


def test_a_repair_copy_and_a_peer_message_cannot_pass_for_each_other(tmp_path) -> None:
    _, _, sender, receiver = channels(tmp_path, 2)
    copy = sender.seal(b"public copy", 4, "copy", [1])
    message = sender.seal(b"payload", 4, "head", [1])
    with pytest.raises(ForgedMessage, match="a 'copy' message given as a peer message"):
        receiver.open(copy, 0, 3, 5)
    with pytest.raises(ForgedMessage, match="a 'head' message given as a repair copy"):
        receiver.open(message, 0, -1, 2**32 - 1, copy=True)
    assert receiver.open(copy, 0, -1, 2**32 - 1, copy=True) == (b"public copy", 4)


def test_repair_copies_are_counted_once_with_their_encryption_overhead() -> None:
    # Prepare: workers 1 and 3 of the chain 0-1-2-3-4 leave together; 0, 2 and 4 export
    # their copies (2's to both 0 and 4)
    cfg = config(algorithm="q-gadmm", **{"remove-workers": "1@4 3@4"})
    plain = reference(cfg)
    sealed = reference(cfg.replace(encrypt=True))
    last, enc = plain.history[-1], sealed.history[-1]
    # Assert: three copies of d = 6 float64 entries, once each
    assert last["repair_bits"] == 3 * 64 * 6
    # every byte encryption added, repair copies included, is reported as overhead
    assert enc["bits"] - last["bits"] == 8 * enc["encryption_overhead_bytes"]
    np.testing.assert_array_equal(sealed.models, plain.models)


def test_the_relays_size_check_of_sealed_messages_follows_the_codec() -> None:
    from flower_qgadmm.algorithms import GossipSettings
    from flower_qgadmm.compression import make_quantizer
    from flower_qgadmm.reference import make_engine
    from flower_qgadmm.topology import ring

    # the longest source-coded messages (a huge s on d = 1) are within the codec's own bound
    # (the format's: 5 + v(d) + ceil((200 + 97 d) / 8) bytes), which the relay checks
    source = make_codec("source")
    payload = source.encode(
        make_quantizer("dithered", levels=2**31 - 1).quantize(np.ones(1), np.random.default_rng(0))
    )
    assert len(payload) == 22 <= source.max_payload_bytes(1) == 6 + (200 + 97 + 7) // 8
    # and an encrypted run of them passes the relay as a plain one does
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((6, 1)), rng.standard_normal(6)) for _ in range(3)]
    rows = []
    for encrypt in (False, True):
        settings = GossipSettings(
            step_size=0.01,
            levels=2**31 - 1,
            codec="source",
            variance_scaling=False,
            encrypt=encrypt,
        )
        engine = make_engine("choco-sgd", least_squares_solvers(data), ring(3), settings)
        rows.append(engine.run(2)[-1])
    assert rows[0]["objective"] == rows[1]["objective"]
