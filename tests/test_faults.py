"""Faults are pinned on the worker that caused them, whatever it sends.

Over the in-process Grid with the stock ClientApp handlers; a ClientApp mod plays the
faulty worker (its reply is corrupted after it computed it). The real-``flwr run``
version is in test_flwr_run.py.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.experiment.client_app import app as experiment_app
from clients.experiment.task import solver_fn
from flower_qgadmm import rounds
from flower_qgadmm.compression import PayloadError, make_codec
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower import RelayStrategy, WorkerFailure, make_client_app, partition_of
from flower_qgadmm.flower.records import payload_record, record_payload
from flower_qgadmm.reference import least_squares_solvers, run_from_config
from flower_qgadmm.testing import FakeGrid

SMALL = {"num-workers": 5, "samples-per-worker": 20, "dim": 6, "num-iterations": 15, "rho": 5.0}
BAD, AT = 2, 6  # worker 2 goes bad at iteration 6


def corrupting_app(corrupt) -> ClientApp:
    """The stock ClientApp whose worker BAD replies ``corrupt(reply)`` from iteration AT."""

    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        if (
            msg.metadata.message_type == "train.step"
            and partition_of(context)[0] == BAD
            and int(msg.content["round"]["iteration"]) >= AT
        ):
            corrupt(reply)
        return reply

    return make_client_app(solver_fn, ClientApp(mods=[mod]))


def with_payload(change):
    def corrupt(reply: Message) -> None:
        if "payload" in reply.content:
            payload = record_payload(reply.content["payload"], "reply")
            reply.content["payload"] = payload_record(change(payload))

    return corrupt


def absurd_range(payload: bytes) -> bytes:
    # range R of a levels message (d = 6: width, a 1-byte size varint, then R)
    return payload[:2] + struct.pack("<f", 1e20) + payload[6:]


def random_bytes(payload: bytes) -> bytes:
    return np.random.default_rng(1).integers(0, 256, len(payload), dtype=np.uint8).tobytes()


def missing_metrics(reply: Message) -> None:
    del reply.content["metrics"]


def nan_objective(reply: Message) -> None:
    reply.content["metrics"] = MetricRecord({**reply.content["metrics"], "objective": np.nan})


def foreign_record(reply: Message) -> None:  # the payload's bytes as an Array
    payload = record_payload(reply.content["payload"], "reply")
    reply.content["payload"] = ArrayRecord({"payload": Array(np.frombuffer(payload, np.uint8))})


def payload_of_another_type(reply: Message) -> None:
    reply.content["payload"] = ConfigRecord({"payload": "x"})


def payload_with_another_key(reply: Message) -> None:
    payload = record_payload(reply.content["payload"], "reply")
    reply.content["payload"] = ConfigRecord({"payload": payload, "extra": b""})


def run(app: ClientApp, algorithm: str = "q-gadmm", policy: str = "repair", **extra):
    cfg = RunConfig.from_run_config(
        {**SMALL, "algorithm": algorithm, "on-failure": policy, **extra}
    )
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    strategy.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=15, timeout=5.0)
    return strategy, cfg


@pytest.mark.parametrize(
    "corrupt",
    [
        with_payload(lambda p: p[:-3]),  # wrong length
        with_payload(lambda p: p + b"\0\0"),  # wrong length
        with_payload(absurd_range),
        with_payload(random_bytes),  # a fuzzed envelope
        with_payload(lambda p: b""),
        missing_metrics,
        nan_objective,
        foreign_record,
        payload_of_another_type,
        payload_with_another_key,
    ],
    ids=[
        "truncated",
        "extended",
        "absurd-range",
        "random",
        "empty",
        "no-metrics",
        "nan-objective",
        "array-record-payload",
        "str-payload",
        "payload-with-another-key",
    ],
)
def test_the_faulty_worker_is_removed_and_its_neighbours_stay(corrupt) -> None:
    strategy, cfg = run(corrupting_app(corrupt))
    assert strategy.graph.active == (0, 1, 3, 4)
    assert (1, 3) in strategy.graph.edges  # the chain was spliced around worker 2
    # and the run is the reference's with worker 2 leaving at iteration 6
    want = run_from_config(
        cfg, least_squares_solvers(experiment_datasets(cfg)), removals={BAD: AT}
    ).history
    keys = ("objective", "objective_gap", "bits", "transmissions")
    for got, w in zip(strategy.history, want, strict=True):
        assert {k: got[k] for k in keys} == {k: w[k] for k in keys}
    assert strategy.history[-1]["objective_gap"] < strategy.history[AT]["objective_gap"]


def test_a_range_beyond_the_relays_limit_reads_as_divergence() -> None:
    """A well-formed payload whose range exceeds rounds.MAX_RANGE: its sender's model blew
    up. Alone, it leaves (policy "repair") named as diverged; with policy "stop" the run
    stops as diverged (FloatingPointError, with the advice), not as a failed device."""
    strategy, _ = run(corrupting_app(with_payload(absurd_range)))
    (departure,) = strategy.engine.departures
    assert (departure["worker"], departure["iteration"]) == (BAD, AT)
    assert departure["reason"] == rounds.DIVERGED
    with pytest.raises(FloatingPointError) as err:
        run(corrupting_app(with_payload(absurd_range)), policy="stop")
    text = str(err.value)
    assert text.startswith(f"the run diverged at iteration {AT}: worker 2 diverged: its message")
    assert re.search(r"\(largest range [0-9.]+e\+[0-9]+\); likely causes: too few bits", text)


def test_every_worker_diverging_stops_the_run_as_diverged(monkeypatch) -> None:
    """When every worker's range passes the limit at once (an algorithm diverging, as
    1-bit Q-SGADMM does on digits), the run stops as diverged with the advice; it used
    to end as "cannot repair the graph without workers [0, ..., 4]"."""
    monkeypatch.setattr(rounds, "MAX_RANGE", 1e-9)  # every first message passes it
    cfg = RunConfig.from_run_config({**SMALL, "algorithm": "q-gadmm"})
    with pytest.raises(FloatingPointError) as err:
        run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)))
    text = str(err.value)
    assert text.startswith("the run diverged at iteration 1: workers 0, 1, 2, 3, 4 diverged")
    assert "likely causes:" in text


def test_stop_policy_names_the_sender_of_the_bad_payload() -> None:
    with pytest.raises(WorkerFailure, match=r"worker 2 sent a malformed payload") as err:
        run(corrupting_app(with_payload(lambda p: p[:-1])), policy="stop")
    assert set(err.value.failed) == {BAD}


def test_a_payload_the_relay_let_through_is_blamed_on_its_sender_by_the_receiver(
    monkeypatch,
) -> None:
    # Without the relay's envelope check, the receivers cannot decode worker 2's payload:
    # they skip it (keeping their copy) and name the sender, who is removed
    from flower_qgadmm.compression.codecs import FixedWidthCodec

    monkeypatch.setattr(
        FixedWidthCodec, "check_envelope", lambda self, payload, size, max_scale=0: None
    )
    strategy, _ = run(corrupting_app(with_payload(lambda p: p[:-2])))
    assert strategy.graph.active == (0, 1, 3, 4)


def test_a_receiver_reports_the_sender_of_an_undecodable_payload_in_process() -> None:
    # The same rule in the reference runner's worker: the payload is skipped, the copy
    # kept, and the sender named
    cfg = RunConfig.from_run_config({**SMALL, "num-iterations": 1})
    from flower_qgadmm.reference import build_workers

    workers = build_workers("q-gadmm", least_squares_solvers(experiment_datasets(cfg)), cfg.graph)
    before = workers[1].copies[0].copy()
    blamed = workers[1].receive_all({0: b"\x02\x00"})
    assert list(blamed) == [0] and "payload" in blamed[0]
    np.testing.assert_array_equal(workers[1].copies[0], before)


def test_failures_during_setup_follow_the_policy() -> None:
    def fail_setup(pid: int, msg: Message) -> bool:
        return pid == 4 and msg.metadata.message_type == "query.setup"

    cfg = RunConfig.from_run_config({**SMALL, "num-iterations": 5})
    grid = FakeGrid(experiment_app, 5, cfg.to_run_config(), fail=fail_setup)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    strategy.start(grid, num_rounds=5, timeout=1.0)  # repair: worker 4 leaves at set-up
    assert strategy.graph.active == (0, 1, 2, 3)
    assert strategy.history[-1]["objective_gap"] < strategy.history[0]["objective_gap"]
    stop = RelayStrategy.from_config(
        cfg.replace(on_failure="stop"), discovery_timeout=1.0, results_dir=None
    )
    with pytest.raises(WorkerFailure, match="setup failed: worker 4"):
        grid = FakeGrid(experiment_app, 5, cfg.to_run_config(), fail=fail_setup)
        stop.start(grid, num_rounds=5, timeout=1.0)


def test_workers_failing_alike_make_one_line(tmp_path) -> None:
    # every worker refuses the CSV the same way: the reason is given once, with the
    # workers and their nodes, in the log and in the error (not once per worker)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,c\n" + "\n".join(f"{i},{2 * i},{i % 3}" for i in range(40)))
    rc = {"num-workers": 4, "data-csv": str(csv), "data-target": "Price", "num-iterations": 3}
    cfg = RunConfig.from_run_config(rc)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    with pytest.raises(WorkerFailure) as failure:
        strategy.start(FakeGrid(experiment_app, 4, cfg.to_run_config()), num_rounds=3)
    message = str(failure.value)
    assert message.count("has no target column 'Price'") == 1
    assert re.search(r"workers 0, 1, 2, 3 \(nodes \d+, \d+, \d+, \d+\): error", message)


def test_inject_failure_garbage_mode_through_the_experiment_app() -> None:
    strategy, _ = run(experiment_app, **{"inject-failure": f"{BAD}@{AT}:garbage"})
    assert strategy.graph.active == (0, 1, 3, 4)


def test_the_relay_check_never_decodes_and_agrees_with_the_decoder() -> None:
    codec = make_codec("fixed-width")
    with pytest.raises(PayloadError):
        codec.check_envelope(
            b"\x04\x06\x00\x00\x00" + struct.pack("<f", float("inf")) + b"\0\0\0", 6
        )
    with pytest.raises(PayloadError):
        codec.decode(b"\x04\x06\x00\x00\x00" + struct.pack("<f", float("inf")) + b"\0\0\0", 6)
    assert ConfigRecord and RecordDict  # imported for the mods' types


def test_a_malformed_model_reply_fails_its_worker_not_the_serverapp() -> None:
    # Worker 2 sends its model (with its last step of an evaluation round) in the wrong shape
    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        if "model" in reply.content and partition_of(context)[0] == BAD:
            reply.content["model"] = ArrayRecord({"theta": Array(np.zeros(3))})
        return reply

    strategy, _ = run(make_client_app(solver_fn, ClientApp(mods=[mod])), **{"evaluate-every": 5})
    assert strategy.graph.active == (0, 1, 3, 4)
    assert "consensus_error" in strategy.history[4]  # the pull of round 5 went on without it
    with pytest.raises(WorkerFailure, match="model pull failed: worker 2 malformed model"):
        run(
            make_client_app(solver_fn, ClientApp(mods=[mod])),
            policy="stop",
            **{"evaluate-every": 5},
        )


@pytest.mark.parametrize("where", ["step", "step-and-pull"])
def test_a_model_record_of_another_type_or_none_fails_its_worker(where: str) -> None:
    # Worker 2's last step of an evaluation round carries a ConfigRecord as its model
    # ("step"), or no model at all, in its step nor in the query.model reply that asks
    # for it again ("step-and-pull"): it leaves the run, the ServerApp goes on
    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        if partition_of(context)[0] == BAD and "model" in reply.content:
            if where == "step":
                reply.content["model"] = ConfigRecord({"theta": 1.0})
            else:
                reply.content.pop("model")
        return reply

    strategy, _ = run(make_client_app(solver_fn, ClientApp(mods=[mod])), **{"evaluate-every": 5})
    assert strategy.graph.active == (0, 1, 3, 4)
    assert len(strategy.history) == 15
    match = "model pull failed: worker 2 .*no model" if where != "step" else "ConfigRecord"
    with pytest.raises(WorkerFailure, match=match):
        run(
            make_client_app(solver_fn, ClientApp(mods=[mod])),
            policy="stop",
            **{"evaluate-every": 5},
        )


def test_an_export_reply_without_the_copy_fails_its_worker() -> None:
    # Worker 2 leaves at iteration 6 (planned): workers 1 and 3 become neighbours and are
    # asked for their public copies; worker 3 answers without one, so it leaves as well and
    # the repair is redone without it
    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type == "query.export" and partition_of(context)[0] == 3:
            reply.content.pop("copy")
        return reply

    app = make_client_app(solver_fn, ClientApp(mods=[mod]))
    strategy, _ = run(app, **{"remove-workers": "2@6"})
    assert strategy.graph.active == (0, 1, 4)
    assert (1, 4) in strategy.graph.edges
    assert len(strategy.history) == 15


def test_every_worker_failing_at_setup_names_the_cause() -> None:
    def fail_describe(pid: int, msg: Message) -> bool:
        return msg.metadata.message_type == "query.describe"

    cfg = RunConfig.from_run_config({**SMALL, "num-iterations": 5})
    grid = FakeGrid(experiment_app, 5, cfg.to_run_config(), fail=fail_describe)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    with pytest.raises(WorkerFailure, match=r"^every worker failed at set-up: describe failed"):
        strategy.start(grid, num_rounds=5, timeout=1.0)


@pytest.mark.parametrize(
    ("text", "mode"),
    [("2@7", "error"), ("2 @ 7", "error"), ("2@7:garbage", "garbage"), ("2@7:garbage ", "garbage")],
)
def test_inject_failure_allows_spaces_around_every_part(text, mode) -> None:
    # '2@7:garbage ' (a trailing space) was refused while '2 @ 7' was accepted
    cfg = RunConfig.of(num_workers=5, inject_failure=text)
    assert cfg.failure() == (2, 7) and cfg.failure_mode == mode


def test_the_traffic_count_takes_records_flowers_own_count_refuses() -> None:
    # An empty payload (the "empty" case above), an empty reason or list: Flower's
    # ConfigRecord.count_bytes raises on them (flwr 1.42); the ServerApp's metering
    # counts their keys and the rest as Flower does, and the relay then judges the reply
    from flower_qgadmm.flower.metering import record_bytes

    odd = ConfigRecord({"payload": b"", "why": "", "none": [], "ok": b"abc", "n": 3})
    assert (
        record_bytes(odd)
        == len("payloadwhynone") + ConfigRecord({"ok": b"abc", "n": 3}).count_bytes()
    )
    assert record_bytes(MetricRecord({"x": 1.0})) == MetricRecord({"x": 1.0}).count_bytes()
