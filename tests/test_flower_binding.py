"""The Flower binding without the engine: relay strategy + ClientApp over a fake Grid.

The history of the Flower path must equal the reference runner's exactly (same seed).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from flwr.app import ConfigRecord

from clients.experiment.client_app import app
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import load_dataset
from flower_qgadmm.flower import RelayStrategy, WorkerFailure
from flower_qgadmm.flower.client import STATE_SCALARS
from flower_qgadmm.flower.records import payload_record, record_payload
from flower_qgadmm.reference import least_squares_solvers, run_from_config, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import ring

SMALL = {"num-workers": 5, "samples-per-worker": 20, "dim": 6, "num-iterations": 12, "rho": 5.0}


def run_config(**overrides) -> dict:
    return RunConfig.from_run_config({**SMALL, **overrides}).to_run_config()


def run_flower(rc: dict, fail=None) -> tuple[RelayStrategy, FakeGrid]:
    cfg = RunConfig.from_run_config(rc)
    grid = FakeGrid(app, cfg.num_workers, rc, fail=fail)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    return strategy, grid


def reference(rc: dict, **kwargs):
    cfg = RunConfig.from_run_config(rc)
    data = load_dataset(cfg.num_workers, cfg.samples_per_worker, cfg.dim, cfg.noise, cfg.seed)
    return run_from_config(cfg, least_squares_solvers(data), **kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "gadmm"},
        {"algorithm": "q-gadmm", "bits": 2},
        {"algorithm": "q-gadmm", "bits": 3, "adaptive-bits": True, "omega": 0.9, "seed": 4},
    ],
)
def test_flower_path_equals_reference_exactly(overrides: dict) -> None:
    # Prepare
    rc = run_config(**overrides)
    # Execute
    strategy, _ = run_flower(rc)
    expected = reference(rc)
    # Assert: identical numbers for every key the reference reports
    assert len(strategy.history) == len(expected.history)
    for got, want in zip(strategy.history, expected.history, strict=True):
        assert {k: got[k] for k in want} == want
    assert strategy.history[-1]["flower_bytes_down"] > 0
    assert strategy.history[-1]["flower_bytes_up"] > strategy.history[-1]["bits"] / 8


def test_relay_forwards_the_exact_bytes_to_neighbours_only() -> None:
    rc = run_config(algorithm="q-gadmm")
    cfg = RunConfig.from_run_config(rc)

    class ReplyGrid(FakeGrid):  # keeps the replies too
        replies: list = []

        def send_and_receive(self, messages, *, timeout=None):
            replies = list(super().send_and_receive(messages, timeout=timeout))
            self.replies += replies
            return replies

    grid = ReplyGrid(app, cfg.num_workers, rc)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    part = {nid: p for p, nid in enumerate(strategy.node_ids)}
    replied: dict[int, set[bytes]] = {p: set() for p in part.values()}
    for reply in grid.replies:
        if "payload" in reply.content:
            payload = record_payload(reply.content["payload"], "reply")
            replied[part[reply.metadata.src_node_id]].add(payload)
    relayed = 0
    for msg in grid.sent:
        if not msg.metadata.message_type.startswith("train."):
            continue
        dst = part[msg.metadata.dst_node_id]
        inbox = msg.content["inbox"]
        assert isinstance(inbox, ConfigRecord)  # one Flower object per inbox
        assert {int(s) for s in inbox.keys()} <= {dst - 1, dst + 1}
        for src, payload in inbox.items():
            assert type(payload) is bytes and payload in replied[int(src)]  # untouched
            relayed += 1
    edges = cfg.num_workers - 1  # both ends of every edge, each iteration, but the heads'
    assert relayed == 2 * edges * cfg.num_iterations - edges  # first phase (nothing yet)


def test_an_undecodable_payload_is_pinned_on_its_sender() -> None:
    # Prepare: from iteration 4 on, the first payload in partition 2's inbox arrives
    # truncated (past the relay's check: the message is altered on the way to the node)
    rc = run_config(algorithm="q-gadmm")

    def corrupt(pid, msg):
        if pid == 2 and msg.metadata.message_type == "train.step":
            if int(msg.content["round"]["iteration"]) >= 4:
                inbox = msg.content["inbox"]
                key = next(iter(inbox.keys()))
                inbox[key] = inbox[key][:-1]  # truncated
        return False

    grid = FakeGrid(app, 5, rc, fail=corrupt)
    strategy = RelayStrategy.from_config(RunConfig.from_run_config(rc), on_failure="stop")
    # Execute
    with pytest.raises(
        WorkerFailure, match=r"worker 1 sent worker 2 a payload it could not decode: truncated"
    ) as err:
        strategy.start(grid, num_rounds=10, timeout=1.0)
    # Assert: the run stopped cleanly, naming the sender; the receiver skipped the payload
    # (its copy of worker 1 kept) and took its step
    assert set(err.value.failed) == {1}
    ctx = next(c for c in grid.contexts.values() if c.node_config["partition-id"] == 2)
    assert int(ctx.state[STATE_SCALARS]["iteration"]) == 4
    assert [r["iteration"] for r in strategy.history] == [1, 2, 3]


def test_silent_worker_is_reported_with_partition_and_history_kept() -> None:
    rc = run_config(algorithm="gadmm")

    def silent(pid, msg):
        round_ = msg.content["round"] if "round" in msg.content else {"iteration": 0, "phase": ""}
        is_tail = round_["phase"] == "tail"
        return pid == 3 and is_tail and int(round_["iteration"]) == 5

    cfg = RunConfig.from_run_config(rc)
    grid = FakeGrid(app, cfg.num_workers, rc, fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, on_failure="stop")
    with pytest.raises(
        WorkerFailure, match=r"tail phase of iteration 5 failed: worker 3 .*no reply"
    ):
        strategy.start(grid, num_rounds=cfg.num_iterations, timeout=0.5)
    assert [r["iteration"] for r in strategy.history] == [1, 2, 3, 4]


def test_wrong_federation_size_fails_fast_with_advice() -> None:
    rc = run_config()
    cfg = RunConfig.from_run_config(rc)
    grid = FakeGrid(app, 3, rc)  # 3 nodes, the run expects 5
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=30.0)
    with pytest.raises(ValueError, match="num-partitions=3.*num-supernodes=5"):
        strategy.start(grid, num_rounds=2, timeout=1.0)


def test_missing_partition_config_is_explained() -> None:
    rc = run_config()
    grid = FakeGrid(app, 5, rc)
    for ctx in grid.contexts.values():
        del ctx.node_config["partition-id"]
    strategy = RelayStrategy.from_config(RunConfig.from_run_config(rc), discovery_timeout=1.0)
    with pytest.raises(WorkerFailure, match="--node-config 'partition-id=<i> num-partitions=<N>'"):
        strategy.start(grid, num_rounds=1, timeout=1.0)


def test_strategy_rejects_bad_parameters() -> None:
    for value in (1, "4", 4.5, True):
        with pytest.raises(ValueError, match="num_workers must be an integer >= 2"):
            RelayStrategy("q-gadmm", value)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        RelayStrategy("q-gadmm", 4, seed=-1)
    with pytest.raises(ValueError, match="discovery_timeout"):
        RelayStrategy("q-gadmm", 4, discovery_timeout=0)
    with pytest.raises(
        KeyError, match=r"unknown algorithm 'admm'; registered: \['choco-sgd', 'd-psgd'"
    ):
        RelayStrategy("admm", 4)
    with pytest.raises(ValueError, match="odd cycle"):
        RelayStrategy("gadmm", 5, graph=ring(5))


def test_result_arrays_hold_the_mean_model() -> None:
    rc = run_config(algorithm="gadmm")
    cfg = RunConfig.from_run_config(rc)
    grid = FakeGrid(app, cfg.num_workers, rc)
    strategy = RelayStrategy.from_config(cfg)
    result = strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    np.testing.assert_array_equal(result.arrays["theta"].numpy(), reference(rc).mean_model)
    assert sorted(result.train_metrics_clientapp) == list(range(1, cfg.num_iterations + 1))


@pytest.mark.parametrize(("algorithm", "worker", "at"), [("q-gadmm", 3, 5), ("gadmm", 2, 4)])
def test_dropout_repairs_the_chain_like_the_reference(algorithm, worker, at) -> None:
    # Prepare: `worker` stops answering from iteration `at` on (tail 3 / head 2)
    rc = run_config(algorithm=algorithm, **{"num-iterations": 30})
    cfg = RunConfig.from_run_config(rc)

    def silent(pid, msg):
        return (
            pid == worker
            and "round" in msg.content
            and (int(msg.content["round"]["iteration"]) >= at)
        )

    grid = FakeGrid(app, cfg.num_workers, rc, fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    # Execute
    result = strategy.start(grid, num_rounds=cfg.num_iterations, timeout=1.0)
    expected = reference(rc, removals={worker: at})
    # Assert: same numbers as the reference dropout; the chain skips the worker. The
    # relay did deliver an inbox to the silent worker (a planned departure gets none).
    for got, want in zip(strategy.history, expected.history, strict=True):
        assert {k: got[k] for k in want if k != "relayed_bytes"} == {
            k: v for k, v in want.items() if k != "relayed_bytes"
        }
        assert got["relayed_bytes"] >= want["relayed_bytes"]
    assert worker not in strategy.graph.active
    assert (worker - 1, worker + 1) in strategy.graph.edges
    assert strategy.history[-1]["repair_bits"] == 2 * 64 * cfg.dim
    np.testing.assert_array_equal(result.arrays["theta"].numpy(), expected.mean_model)


class LostNodeGrid(FakeGrid):
    """Like a deployed SuperLink that lost a node: it answers the node's messages itself,
    with an error in its own name (source node 1), as Flower 1.42 does ("Node
    Unavailable" once the heartbeat expired)."""

    def __init__(self, *args, lost: int, at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost, self.at = lost, at

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        from flwr.app import Error, Message

        messages = list(messages)
        gone = [
            m
            for m in messages
            if int(self.contexts[m.metadata.dst_node_id].node_config["partition-id"]) == self.lost
            and "round" in m.content
            and int(m.content["round"]["iteration"]) >= self.at
        ]
        replies = list(super().send_and_receive([m for m in messages if m not in gone]))
        for m in gone:
            m.metadata.__dict__["_message_id"] = f"lost-{id(m)}"
            reply = Message(Error(code=5, reason="Node Unavailable"), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own id
            replies.append(reply)
        return replies


def test_a_node_the_superlink_reports_unavailable_leaves_and_the_chain_is_repaired(
    tmp_path,
) -> None:
    # Prepare: worker 2's node is lost from iteration 4; the SuperLink says so itself
    rc = run_config(algorithm="q-gadmm", **{"num-iterations": 12})
    cfg = RunConfig.from_run_config(rc)
    grid = LostNodeGrid(app, cfg.num_workers, rc, lost=2, at=4)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=str(tmp_path))
    # Execute
    result = strategy.start(grid, num_rounds=cfg.num_iterations, timeout=1.0)
    # Assert: the error is pinned on worker 2 (not on a worker -1 of node 1), which leaves
    expected = reference(rc, removals={2: 4})
    assert 2 not in strategy.graph.active and (1, 3) in strategy.graph.edges
    np.testing.assert_array_equal(result.arrays["theta"].numpy(), expected.mean_model)
    # ... and the results say so: the rows count the workers, the summary names it
    assert [r["workers"] for r in strategy.history] == [cfg.num_workers] * 3 + [
        cfg.num_workers - 1
    ] * 9
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert "## Workers that left" in summary
    assert re.search(r"\| 2 \| 4 \| \(node \d+\): error 5: Node Unavailable \|", summary)


def test_dropout_converges_to_the_remaining_workers_optimum() -> None:
    data = load_dataset(8, 40, 6, 0.1, seed=2)
    result = run_reference("q-gadmm", least_squares_solvers(data), 400, removals={5: 30})
    X = np.vstack([x for i, (x, _) in enumerate(data) if i != 5])
    y = np.concatenate([t for i, (_, t) in enumerate(data) if i != 5])
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    assert result.models.shape == (7, 6)
    np.testing.assert_allclose(result.mean_model, theta, rtol=1e-6)
    assert result.history[-1]["objective_gap"] < 1e-8


def test_unrepairable_graph_stops_with_a_clear_message() -> None:
    rc = run_config(algorithm="gadmm", topology="grid", **{"num-workers": 6, "topology-param": 2})
    cfg = RunConfig.from_run_config(rc)

    def silent(pid, msg):  # grid 2x3: losing 1 and 4 (the middle column) splits it
        return pid in (1, 4) and "round" in msg.content

    grid = FakeGrid(app, 6, rc, fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    with pytest.raises(
        WorkerFailure,
        match=r"during iteration 1 \(0 completed\): cannot repair .*\[1, 4\].*disconnected",
    ) as failure:
        strategy.start(grid, num_rounds=5, timeout=1.0)
    # ... and why they left: one reason, both workers and their nodes named once
    assert re.search(
        r"; in iteration 1 workers 1, 4 \(nodes \d+, \d+\): no reply within 1s$",
        str(failure.value),
    )


# ---------------------------------------------------------------------- the Strategy API
def strategy_of(**extra) -> tuple[RelayStrategy, RunConfig]:
    cfg = RunConfig.from_run_config({**SMALL, "num-iterations": 3, "rho": 0.0, **extra})
    return RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None), cfg


def test_a_strategy_started_twice_starts_from_what_was_asked_each_time() -> None:
    from flwr.app import ConfigRecord

    strategy, cfg = strategy_of()
    grid = FakeGrid(app, 5, cfg.to_run_config())
    strategy.start(grid, num_rounds=3, train_config=ConfigRecord({"l2": 0.5}))
    first = [r["objective"] for r in strategy.history]
    # Execute: again, without train_config
    strategy.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=3)
    fresh, _ = strategy_of()
    fresh.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=3)
    # Assert: the second run is a fresh run's (l2 = 0, rho resolved again), not the first's
    assert strategy.engine.requested.rho == 0.0 and strategy.solver.l2 == 0.0
    assert [r["objective"] for r in strategy.history] == [r["objective"] for r in fresh.history]
    assert [r["objective"] for r in strategy.history] != first


def test_aggregate_train_checks_replies_as_start_does() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message
    from flwr.app import Error as FlowerError

    strategy, cfg = strategy_of()
    grid = FakeGrid(app, 5, cfg.to_run_config())
    strategy.start(grid, num_rounds=2)
    messages = list(
        strategy.configure_train(3, ArrayRecord(), ConfigRecord({"phase": "head"}), grid)
    )
    replies = list(grid.send_and_receive(messages, timeout=5))
    # one reply carries garbage, another is an error reply
    garbage, broken = replies[0], replies[1]
    garbage.content["payload"] = payload_record(b"\x00garbage")
    error = Message(FlowerError(code=0, reason="boom"), reply_to=messages[1])  # from its node
    bad = {strategy.transport.partition(garbage), strategy.transport.partition(broken)}
    # Execute
    _, metrics = strategy.aggregate_train(3, [garbage, error, *replies[2:]])
    # Assert: neither is posted, both counted as failed, the others posted
    posted = {src for box in strategy.engine._pending.values() for src in box}
    assert error.metadata.src_node_id == broken.metadata.src_node_id
    assert metrics["failed"] == 2 and not bad & posted


def test_a_run_the_engine_refuses_writes_no_results_folder(tmp_path) -> None:
    # a mixing matrix that is not doubly stochastic: refused before anything is written
    cfg = RunConfig.from_run_config({**SMALL, "algorithm": "d-psgd", "topology": "ring"})
    strategy = RelayStrategy.from_config(
        cfg, mixing=np.full((5, 5), 0.5), discovery_timeout=1.0, results_dir=tmp_path
    )
    with pytest.raises(ValueError):
        strategy.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=2)
    assert list(tmp_path.iterdir()) == []


def test_metrics_of_evaluate_fn_overwrite_none_of_the_workers() -> None:
    from flower_qgadmm.metrics import history_row

    reports = [{"objective": 1.0, "accuracy": 0.5}, {"objective": 2.0, "accuracy": 0.7}]
    row = history_row(3, reports, {"bits": 8}, extra={"accuracy": 0.9, "loss": 0.1})
    assert row["accuracy"] == pytest.approx(0.6)  # the workers' mean
    assert row["server_accuracy"] == 0.9 and row["loss"] == 0.1


def test_the_clientapp_refuses_what_it_cannot_use_and_keeps_its_state() -> None:
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from flower_qgadmm.flower.client import STATE_SETUP
    from flower_qgadmm.flower.records import numpy_record

    strategy, cfg = strategy_of()
    grid = FakeGrid(app, 5, cfg.to_run_config())
    strategy.start(grid, num_rounds=1)
    node, context = next(iter(grid.contexts.items()))
    state = dict(context.state[STATE_SETUP].items())

    def ask(kind: str, content: RecordDict, where=context) -> Message:
        return app(Message(content, dst_node_id=where.node_id, message_type=kind), where)

    # a set-up it refuses (unknown algorithm) leaves the worker as it was
    setup = next(
        m
        for m in grid.sent
        if m.metadata.message_type == "query.setup" and m.metadata.dst_node_id == node
    )
    bad = RecordDict(dict(setup.content.items()))
    bad["run"] = ConfigRecord({**dict(setup.content["run"].items()), "algorithm": "nope"})
    with pytest.raises(KeyError, match="unknown algorithm 'nope'"):
        ask("query.setup", bad)
    assert dict(context.state[STATE_SETUP].items()) == state
    # a step whose inbox is not a ConfigRecord: refused, not read as empty
    step = RecordDict(
        {
            "round": ConfigRecord({"iteration": 9, "phase": "head"}),
            "inbox": ArrayRecord({"0": Array(np.frombuffer(b"x", np.uint8))}),
        }
    )
    with pytest.raises(ValueError, match="'inbox' is a ArrayRecord, not a ConfigRecord"):
        ask("train.step", step)
    # a worker never set up says so
    fresh = next(iter(FakeGrid(app, 5, cfg.to_run_config()).contexts.values()))
    theta = RecordDict({"theta": numpy_record({"theta": np.zeros(6)})})
    with pytest.raises(RuntimeError, match="never set up"):
        ask("query.objective", theta, fresh)


def test_node_state_arrays_round_trip_as_raw_bytes_and_refuse_what_is_not_theirs() -> None:
    from flwr.app import Array, ArrayRecord

    from flower_qgadmm.flower.client import STATE_ARRAYS
    from flower_qgadmm.flower.records import STATE_STYPE, numpy_record, record_state, state_record

    # Prepare: what a node keeps (float64 model-sized arrays, a torch buffer's 0-d int64,
    # float32, bool, a big-endian array)
    rng = np.random.default_rng(0)
    arrays = {
        "theta": rng.standard_normal(1000),
        "solver.0.num_batches_tracked": np.array(7, dtype=np.int64),
        "solver.0.running_mean": rng.standard_normal((3, 4)).astype(np.float32),
        "mask": rng.random(5) < 0.5,
        "big": rng.standard_normal(4).astype(">f8"),
    }
    # Execute
    record = state_record(arrays)
    back = record_state(record)
    # Assert: the same values, shapes and kinds; raw bytes, not np.save's format
    for key, value in arrays.items():
        assert back[key].shape == value.shape and np.array_equal(back[key], value), key
        assert back[key].dtype == value.dtype.newbyteorder("<"), key
    assert {a.stype for a in record.values()} == {STATE_STYPE}
    assert len(record["theta"].data) == 8000
    complex_buffer = {"c": np.array([1 + 2j, 3 - 4j])}  # a model may hold complex buffers
    assert np.array_equal(record_state(state_record(complex_buffer))["c"], complex_buffer["c"])
    with pytest.raises(ValueError, match="state array 's' of <U1 cannot be kept"):
        state_record({"s": np.array(["x"])})
    # an Array of another kind, or bytes that do not match the shape, is refused
    with pytest.raises(ValueError, match="not a node state array"):
        record_state(numpy_record({"theta": np.zeros(3)}))
    for dtype, shape, data in (("<f8", (3,), bytes(16)), ("|O", (1,), bytes(8))):
        foreign = ArrayRecord({"x": Array(dtype=dtype, shape=shape, stype=STATE_STYPE, data=data)})
        with pytest.raises(ValueError, match="state array 'x'"):
            record_state(foreign)
    # a worker's state in context.state is written this way (FedAvg's kept buffers too)
    strategy, cfg = strategy_of()
    grid = FakeGrid(app, 5, cfg.to_run_config())
    strategy.start(grid, num_rounds=2)
    for context in grid.contexts.values():
        assert {a.stype for a in context.state[STATE_ARRAYS].values()} == {STATE_STYPE}


class InMemoryGrid(FakeGrid):
    """Named like Flower's simulation Grid, whose Ray backend moves each node's context."""


def test_simulation_warns_when_the_node_state_exceeds_rays_inline_limit(
    monkeypatch, caplog
) -> None:
    import logging

    from flower_qgadmm.flower.client import state_bytes
    from flower_qgadmm.flower.transport import RAY_INLINE, ray_inline_advice

    rc = run_config(algorithm="q-gadmm")
    cfg = RunConfig.from_run_config(rc)
    grid = InMemoryGrid(app, cfg.num_workers, rc)
    monkeypatch.setenv(RAY_INLINE, "100")  # bytes: every worker's state is larger
    flwr_logger = logging.getLogger("flwr")
    monkeypatch.setattr(flwr_logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        RelayStrategy.from_config(cfg, discovery_timeout=1.0).start(grid, num_rounds=1)
    sizes = {state_bytes(c) for c in grid.contexts.values()}
    largest = max(sizes)  # theta, copies and duals: 6 floats each
    assert min(sizes) >= 4 * 6 * 8
    assert f"keeps {largest / 1024:.0f} KiB of state" in caplog.text
    assert f"{RAY_INLINE}=4194304" in caplog.text
    # within the limit, or not Flower's simulation Grid: nothing to say
    caplog.clear()
    monkeypatch.setenv(RAY_INLINE, str(largest))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        RelayStrategy.from_config(cfg, discovery_timeout=1.0).start(
            InMemoryGrid(app, cfg.num_workers, rc), num_rounds=1
        )
        monkeypatch.setenv(RAY_INLINE, "100")
        RelayStrategy.from_config(cfg, discovery_timeout=1.0).start(
            FakeGrid(app, cfg.num_workers, rc), num_rounds=1
        )
    assert RAY_INLINE not in caplog.text
    # Ray's default when unset or unreadable; a large state gets twice its size
    assert ray_inline_advice(100 * 1024, {}) is None
    assert "RAY_max_direct_call_object_size=4194304" in ray_inline_advice(100 * 1024 + 1, {})
    assert ray_inline_advice(200_000, {RAY_INLINE: "x"}) is not None
    assert f"{RAY_INLINE}=20000000" in ray_inline_advice(10_000_000, {})


def test_the_summary_lists_the_run_keys_with_the_resolved_settings(tmp_path) -> None:
    rc = run_config(algorithm="q-gadmm", rho=0.0)
    cfg = RunConfig.from_run_config({**rc, "results-dir": str(tmp_path)})
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    strategy.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=3, timeout=5.0)
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    table = summary.split("## Settings")[1].split("##")[0]
    for key, value in (
        ("num-workers", "5"),
        ("seed", "0"),
        ("rounds", "3"),
        ("graph", "5 nodes, 4 edges"),
        ("evaluate-every", str(cfg.evaluate_every)),
        ("samples-per-worker", "20"),  # a run key from the run config
        ("dim", "6"),
    ):
        assert f"| `{key}` | `{value}` |" in table, (key, table)
    rho = strategy.engine.settings.rho
    assert rho > 0 and f"| `rho` | `{rho}` |" in table  # the rho used, not the 0 asked
    assert "| `solver l2` |" in table and "| `l2` |" not in table  # solver keys once
    # ... and not the settings exact least squares leaves unused (optimizer, images' data)
    for key in ("lr", "solver lr", "solver optimizer", "solver device", "batch-size", "model"):
        assert f"| `{key}` |" not in table, key


def test_an_image_run_stopped_before_set_up_lists_its_settings(tmp_path) -> None:
    # the settings listed follow the task, not the engine's framework (unknown before set-up)
    rc = {"task": "digits", "algorithm": "q-sgadmm", "num-workers": 4, "num-iterations": 3}
    cfg = RunConfig.from_run_config({**rc, "lr": 0.01})
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=0.5, results_dir=tmp_path)
    with pytest.raises(ValueError, match="num-partitions=2"):  # 2 SuperNodes for 4 workers
        strategy.start(FakeGrid(app, 2, cfg.to_run_config()), num_rounds=3, timeout=1.0)
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert "Run stopped after 0 of 3 rounds. Why: ValueError: " in summary
    for key in ("solver lr", "solver optimizer", "batch-size", "model"):
        assert f"| `{key}` |" in summary, key
    for key in ("samples-per-worker", "dim", "data-csv"):
        assert f"| `{key}` |" not in summary, key


def test_task_keys_are_of_linear_regression_or_of_image_tasks() -> None:
    from flower_qgadmm.config import TaskSettings
    from flower_qgadmm.settings import keys_of

    assert TaskSettings.LINREG_ONLY | TaskSettings.IMAGE_ONLY == set(keys_of(TaskSettings))
    assert not TaskSettings.LINREG_ONLY & TaskSettings.IMAGE_ONLY


def test_a_settings_object_of_another_algorithm_is_refused_when_the_strategy_is_built() -> None:
    """RelayStrategy("d-psgd", settings=GadmmSettings(...)) used to be accepted, logged
    as d-psgd's settings by start(), and refused only then by the round engine."""
    from flower_qgadmm import GadmmSettings, GossipSettings, SolverSettings

    with pytest.raises(TypeError, match=r"d-psgd takes GossipSettings .*got GadmmSettings"):
        RelayStrategy("d-psgd", 4, GadmmSettings(bits=4))
    with pytest.raises(TypeError, match=r"q-sgadmm takes GadmmSettings .*got GossipSettings"):
        RelayStrategy("q-sgadmm", 4, settings=GossipSettings())
    with pytest.raises(TypeError, match="solver must be a SolverSettings"):
        RelayStrategy("q-sgadmm", 4, solver=GadmmSettings())
    RelayStrategy("malcom-psgd", 4, GossipSettings(), SolverSettings())  # the right ones


def test_the_run_configs_fedavg_given_to_the_relay_says_what_to_run_instead() -> None:
    """RunConfig accepts algorithm = "fedavg" (the baseline); RelayStrategy.from_config
    of it used to fail with "unknown algorithm 'fedavg'; registered: [...]"."""
    cfg = RunConfig.from_run_config(
        {"task": "custom", "algorithm": "fedavg", "num-workers": 4}, strict=False
    )
    with pytest.raises(ValueError, match=r"Flower's FedAvg.*flwr\.serverapp\.strategy\.FedAvg"):
        RelayStrategy.from_config(cfg)


class ColdStartGrid(FakeGrid):
    """Flower's simulation: the first messages start the ClientApps (Ray actors, imports),
    here ``delay`` seconds; replies later than the timeout given are lost."""

    def __init__(self, *args, delay: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay, self.cold = delay, True

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        late = self.cold and timeout is not None and timeout < self.delay
        self.cold = False
        replies = super().send_and_receive(messages, timeout=timeout)
        return [] if late else replies


def test_a_phase_timeout_shorter_than_the_clientapps_start_does_not_fail_the_set_up() -> None:
    """A short phase-timeout (quick rounds, a dead worker noticed soon) used to stop every
    simulation at set-up: the first message (identify) waits for the ClientApps to start,
    and failed naming every worker (`identify failed: workers 0, 1, ...: no reply within
    8s`). Asking the SuperNodes who they are is part of discovery: it waits up to
    the rest of discovery-timeout, whatever the phase-timeout."""
    rc = run_config()
    cfg = RunConfig.from_run_config(rc)
    grid = ColdStartGrid(app, cfg.num_workers, rc, delay=3.0)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=10.0)
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=1.0)
    assert len(strategy.history) == cfg.num_iterations
    # a start slower than both timeouts still fails, naming the discovery timeout
    grid = ColdStartGrid(app, cfg.num_workers, rc, delay=30.0)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=10.0)
    with pytest.raises(WorkerFailure, match=r"identify failed: .*no reply within 10s"):
        strategy.start(grid, num_rounds=cfg.num_iterations, timeout=1.0)


def test_node_the_superlink_lists_but_reports_unavailable_is_waited_for() -> None:
    # A SuperNode that crashed shortly before the run is still listed by the SuperLink
    # (until its heartbeat patience runs out), which answers for it "Node Unavailable"
    # and then drops it; the device restarts and rejoins with the same node id. The
    # run waits for it (discovery-timeout) instead of stopping at the first answer, and
    # names the node, not a guessed worker, when it never comes back.
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    class CrashedNodeGrid(FakeGrid):
        def __init__(self, *args, back_after: int) -> None:
            super().__init__(*args)
            self.dead, self.polls, self.back_after = 1002, 0, back_after
            self.listed = True  # listed until the SuperLink answered for it once

        def get_node_ids(self):
            self.polls += 1
            if self.dead is not None and not self.listed and self.polls >= self.back_after:
                self.dead, self.listed = None, True  # the device restarted
            return [n for n in self.contexts if n != self.dead or self.listed]

        def send_and_receive(self, messages, *, timeout=None):
            live = [m for m in messages if m.metadata.dst_node_id != self.dead]
            replies = list(super().send_and_receive(live, timeout=timeout))
            for m in messages:
                if m.metadata.dst_node_id == self.dead:
                    reason = "Error: Node Unavailable - no heartbeat"
                    replies.append(Message(Error(ErrorCode.NODE_UNAVAILABLE, reason), reply_to=m))
                    self.listed = False
            return replies

    rc = run_config(**{"num-iterations": 2})
    cfg = RunConfig.from_run_config(rc)
    grid = CrashedNodeGrid(app, cfg.num_workers, rc, back_after=4)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=30.0)
    strategy.start(grid, num_rounds=2, timeout=5.0)
    assert [r["iteration"] for r in strategy.history] == [1, 2]
    # it never comes back: the discovery timeout names the node
    grid = CrashedNodeGrid(app, cfg.num_workers, rc, back_after=10**9)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    with pytest.raises(WorkerFailure, match=r"only 4 of 5 SuperNodes connected within 1s"):
        strategy.start(grid, num_rounds=2, timeout=5.0)


def test_wrong_federation_size_on_a_deployment_names_the_node_config() -> None:
    # a deployment has no --federation-config num-supernodes: the advice says what to
    # start instead
    class DeployedGrid(FakeGrid):
        simulation = False

    rc = run_config()
    cfg = RunConfig.from_run_config(rc)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=30.0)
    with pytest.raises(ValueError) as err:
        strategy.start(DeployedGrid(app, 3, rc), num_rounds=2, timeout=1.0)
    text = str(err.value)
    assert "num-partitions=3, but the run expects num-workers=5" in text
    assert "--node-config 'partition-id=<i> num-partitions=5'" in text
    assert "deploy up --nodes 5" in text and "num-supernodes" not in text


def test_discovery_asks_a_still_unavailable_node_again_only_every_few_seconds(monkeypatch) -> None:
    # while the SuperLink keeps listing a crashed node, each identify starts a ClientApp
    # on every healthy node (a process per message in deployment): the same nodes are
    # asked again after REASK_UNAVAILABLE, not at every 0.5 s poll (about 5 asks here)
    import time as clock

    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    from flower_qgadmm.flower import transport

    monkeypatch.setattr(transport, "REASK_UNAVAILABLE", 3.0, raising=False)

    class ListedWhileDownGrid(FakeGrid):
        dead, asks = 1002, 0

        def send_and_receive(self, messages, *, timeout=None):
            if any(m.metadata.message_type == "query.identify" for m in messages):
                self.asks += 1
            if self.dead is not None and clock.monotonic() > self.back_at:
                self.dead = None  # the device restarted, with the same node id
            live = [m for m in messages if m.metadata.dst_node_id != self.dead]
            replies = list(super().send_and_receive(live, timeout=timeout))
            for m in messages:
                if m.metadata.dst_node_id == self.dead:
                    error = Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable")
                    replies.append(Message(error, reply_to=m))
            return replies

    rc = run_config(**{"num-iterations": 1})
    cfg = RunConfig.from_run_config(rc)
    grid = ListedWhileDownGrid(app, cfg.num_workers, rc)
    grid.back_at = clock.monotonic() + 2.0
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=30.0)
    strategy.start(grid, num_rounds=1, timeout=5.0)
    assert [r["iteration"] for r in strategy.history] == [1]
    assert grid.asks == 2  # at once, then 3 s later (the node back after 2 s)


def test_a_run_that_cannot_repair_says_it_stopped_during_the_iteration() -> None:
    """Workers 1 and 4 of a 2x3 grid go silent in iteration 3, after 2 completed ones:
    the run stops *during* iteration 3, whose row is never written (before: "run stopped
    after iteration 3", as if iteration 3 had completed)."""
    rc = run_config(algorithm="gadmm", topology="grid", **{"num-workers": 6, "topology-param": 2})
    cfg = RunConfig.from_run_config(rc)

    def silent(pid, msg):
        return pid in (1, 4) and "round" in msg.content and msg.content["round"]["iteration"] >= 3

    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    with pytest.raises(WorkerFailure) as failure:
        strategy.start(FakeGrid(app, 6, rc, fail=silent), num_rounds=5, timeout=1.0)
    assert str(failure.value).startswith("run stopped during iteration 3 (2 completed): ")
    assert [r["iteration"] for r in strategy.history] == [1, 2]


class LateColdGrid(FakeGrid):
    """SuperNodes listed only ``listed_after`` seconds into the run, whose ClientApps then
    take ``delay`` seconds to answer the first message (really waited, up to the timeout
    given; a later reply is lost). ``waits``: the timeouts given."""

    def __init__(self, *args, listed_after: float, delay: float) -> None:
        import time as clock

        super().__init__(*args)
        self.listed_at, self.delay, self.waits = clock.monotonic() + listed_after, delay, []

    def get_node_ids(self):  # noqa: D102
        import time as clock

        return list(self.contexts) if clock.monotonic() >= self.listed_at else []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        import time as clock

        if not self.waits:  # the ClientApps' start
            clock.sleep(min(timeout, self.delay))
            if timeout < self.delay:
                self.waits.append(timeout)
                return []
        self.waits.append(timeout)
        return super().send_and_receive(messages, timeout=timeout)


def test_discovery_takes_at_most_discovery_timeout_its_identify_included() -> None:
    # nodes listed late in discovery were asked who they are with a wait of
    # max(phase-timeout, discovery-timeout) from then: discovery took up to twice
    # discovery-timeout (here 1.2 + 3 s for a discovery-timeout of 2 s)
    import time as clock

    rc = run_config(**{"num-iterations": 2})
    cfg = RunConfig.from_run_config(rc)
    grid = LateColdGrid(app, cfg.num_workers, rc, listed_after=1.2, delay=5.0)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=2.0)
    t0 = clock.monotonic()
    with pytest.raises(WorkerFailure) as failure:
        strategy.start(grid, num_rounds=2, timeout=3.0)
    assert clock.monotonic() - t0 < 3.0  # 2 s and some slack (it took 4.2 s)
    # the nodes that gave the same reason are named together (nodes 1001, 1002, ...)
    assert re.search(
        r"nodes? (\d+, )*1001(, \d+)*: no reply within 2s \(discovery-timeout\)",
        str(failure.value),
    ), str(failure.value)
    assert grid.waits[0] <= 0.8 + 1e-6  # the time left
    # the identify still waits longer than a short phase-timeout (ClientApps slow to
    # start in simulation), as long as the discovery's time allows
    grid = LateColdGrid(app, cfg.num_workers, rc, listed_after=1.0, delay=2.0)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=4.0)
    strategy.start(grid, num_rounds=2, timeout=0.5)
    assert [r["iteration"] for r in strategy.history] == [1, 2]
    assert 2.0 <= grid.waits[0] <= 3.0 + 1e-6


def test_a_run_stopped_before_round_1_says_why_in_its_log_line(tmp_path, caplog) -> None:
    """A run that stops before its first round (2 SuperNodes for 4 workers) logs its
    summary line with why (before: 'no rounds', the reason only in summary.md's note)
    and summary.md says it once."""
    import logging

    cfg = RunConfig.from_run_config({"num-workers": 4, "num-iterations": 3})
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=0.5, results_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="flwr"), pytest.raises(ValueError) as caught:
        strategy.start(FakeGrid(app, 2, cfg.to_run_config()), num_rounds=3, timeout=1.0)
    line = (
        "flower-q-gadmm: no round ran. Run stopped after 0 of 3 rounds. "
        f"Why: ValueError: {caught.value}"
    )
    assert "num-partitions=2" in line and line in caplog.text
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert summary.startswith(f"# flower-q-gadmm\n\n{line}\n\n## Settings")


def test_the_clientapp_goes_to_the_simulations_actor_by_name_not_as_code() -> None:
    """Flower's simulation sends the ClientApp to its Ray actor with every message, a
    closure returning it pickled by cloudpickle. The experiment's app went by value, each
    handler closure as code (11 KB, 1.5-4 ms of the one dispatching thread per message);
    it goes as its module and name, and an app no module holds still goes by value."""
    import pickle
    import sys
    import types

    import cloudpickle
    from flwr.app import Message, RecordDict

    def load():  # as flwr's simulation engine wraps the app it loaded (vce_api)
        return app

    blob = cloudpickle.dumps(load)
    assert len(blob) < 1000, len(blob)  # by value: 11 KB
    assert cloudpickle.loads(blob)() is app  # the module's own app, imported where loaded
    from flower_qgadmm.flower import NamedClientApp, least_squares, make_client_app

    assert isinstance(app, NamedClientApp)
    # torch_client_app / make_client_app's own app, held by the user's module
    module = types.ModuleType("user_project_client_app")
    sys.modules[module.__name__] = module
    try:
        code = (
            "from flower_qgadmm.flower import least_squares, make_client_app\n"
            "app = make_client_app(least_squares(lambda context: None))\n"
        )
        exec(code, module.__dict__)  # noqa: S102 - a module whose code makes its app
        assert pickle.loads(pickle.dumps(module.app)) is module.app
    finally:
        del sys.modules[module.__name__]
    lone = make_client_app(least_squares(lambda context: None))  # no module holds it
    copy = cloudpickle.loads(cloudpickle.dumps(lone))
    assert copy is not lone and sorted(copy._registered_funcs) == sorted(lone._registered_funcs)
    grid = FakeGrid(copy, 2, run_config())
    (reply,) = grid.send_and_receive([Message(RecordDict(), 1001, "query.identify")])
    assert reply.content["identity"]["partition-id"] == 1
