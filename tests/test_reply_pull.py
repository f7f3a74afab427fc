"""The ServerApp's reply pull (flower_qgadmm/flower/metering.py): Flower's 1 s retry for
reply objects not yet on the SuperLink becomes 10 ms on this Flower, Flower's own
backoff stays when its Grid is not the expected one, and the pull loop returns every
reply."""

from __future__ import annotations

import functools
import sys
import time
from types import SimpleNamespace

import pytest

from flower_qgadmm.flower import metering


@pytest.fixture
def http_grid(monkeypatch):
    from flwr.superlink.grid import http_grid as module

    monkeypatch.setattr(module, "pull_objects", module.pull_objects)  # restored after
    return module


def test_shortened_on_this_flower(http_grid) -> None:
    original = http_grid.pull_objects
    grid = object.__new__(http_grid.HttpGrid)  # the class is what is checked
    assert metering.shorten_reply_pull(grid)
    first, cap = metering.REPLY_BACKOFF
    patched = http_grid.pull_objects
    assert isinstance(patched, functools.partial) and patched.func is original
    tries = metering.pull_tries(metering.REPLY_BACKOFF, metering.REPLY_PATIENCE)
    assert patched.keywords == {
        "initial_backoff": first,
        "backoff_cap": cap,
        "max_tries_per_object": tries,
    }
    assert metering.shorten_reply_pull(grid)  # again: nothing more to do
    assert http_grid.pull_objects is patched


def test_shortened_pull_still_gets_every_object_soon(http_grid) -> None:
    """Flower's own pull_objects with the short backoff: objects that appear late are
    all pulled, after about 10-70 ms rather than 1-3 s."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    metering.shorten_reply_pull(object.__new__(http_grid.HttpGrid))
    misses = {"a": 3, "b": 0, "c": 1}

    def pull(object_id: str) -> bytes:
        if misses[object_id]:
            misses[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    start = time.monotonic()
    got = http_grid.pull_objects(object_ids=list(misses), pull_object_fn=pull)
    assert got == {"a": b"a", "b": b"b", "c": b"c"}
    assert time.monotonic() - start < 0.9  # Flower's first retry alone: 0.8-1.2 s


class _OtherGrid:
    def pull_messages(self, message_ids):  # does not use pull_objects
        return []


class _ChoosingGrid:
    def pull_messages(self, message_ids):  # chooses its own backoff
        return pull_objects(message_ids, None, initial_backoff=2.0)  # noqa: F821


def test_guard_keeps_flower_backoff(monkeypatch, http_grid) -> None:
    original = http_grid.pull_objects
    assert not metering.shorten_reply_pull(_OtherGrid())
    module = SimpleNamespace(pull_objects=lambda object_ids, pull_object_fn: {})
    monkeypatch.setitem(sys.modules, __name__, module)  # pull_objects without a backoff
    assert not metering.shorten_reply_pull(_ChoosingGrid())
    monkeypatch.setattr(http_grid, "pull_objects", lambda object_ids, pull_object_fn: {})
    assert not metering.shorten_reply_pull(object.__new__(http_grid.HttpGrid))
    monkeypatch.setattr(http_grid, "pull_objects", original)
    assert http_grid.pull_objects is original


# ---------------------------------------------------------------- the pull loop
class _Msg:
    def __init__(self, message_type: str, reply_to: str = "") -> None:
        self.metadata = SimpleNamespace(message_type=message_type, reply_to_message_id=reply_to)
        self.content = {}

    def has_error(self) -> bool:
        return False


class _SlowGrid:
    """Pushes get ids m0..; replies appear over several pulls (none at some)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches
        self.pulls: list[set[str]] = []

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls.append(set(message_ids))
        batch = self.batches.pop(0) if self.batches else []
        return [_Msg("train.step", f"m{i}") for i in batch]


def test_pull_loop_returns_every_reply(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(metering.time, "sleep", slept.append)
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = metering.MeteredGrid(_SlowGrid([[2], [], [0, 3], [], [], [1]]))
    replies = grid.send_and_receive([_Msg("train.step") for _ in range(4)])
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["m0", "m1", "m2", "m3"]
    assert grid.grid.pulls[0] == {"m0", "m1", "m2", "m3"}
    assert grid.grid.pulls[-1] == {"m1"}  # only what is still missing is asked for
    assert slept[0] == metering.PULL_FIRST and slept == sorted(slept)
    assert grid.short_pull is False  # not Flower's Grid: its own backoff kept


def test_pull_loop_stops_at_the_timeout(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(metering.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(metering.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = metering.MeteredGrid(_SlowGrid([[0]]))
    replies = grid.send_and_receive([_Msg("train.step"), _Msg("train.step")], timeout=2.0)
    assert [m.metadata.reply_to_message_id for m in replies] == ["m0"]
    assert 2.0 <= clock[0] < 2.6


class InMemoryGrid(_SlowGrid):
    """Named like the simulation's Grid (flwr.superlink.grid.inmemory_grid)."""


def test_the_in_memory_grid_is_pulled_at_a_short_fixed_interval(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(metering.time, "sleep", slept.append)
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = metering.MeteredGrid(InMemoryGrid([[], [], [], [], [], [0]]))
    replies = grid.send_and_receive([_Msg("train.step")])
    assert [m.metadata.reply_to_message_id for m in replies] == ["m0"]
    assert slept == [metering.PULL_IN_MEMORY] * 5  # no backing off


# ---------------------------------------------------------------- the wait schedule
def test_reply_poll_grows_to_a_tenth_of_a_second(monkeypatch) -> None:
    """The ServerApp pulls its replies every 20 ms at first, growing to at most 0.1 s
    (was 0.5 s: the last reply then waited up to 0.5 s on the SuperLink)."""
    slept: list[float] = []
    monkeypatch.setattr(metering.time, "sleep", slept.append)
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = metering.MeteredGrid(_SlowGrid([[]] * 30 + [[0]]))
    grid.send_and_receive([_Msg("train.step")])
    assert len(slept) == 30 and slept[0] == 0.02
    assert slept[:5] == pytest.approx([0.02, 0.03, 0.045, 0.0675, 0.1])
    assert max(slept) == pytest.approx(0.1) and slept[-1] == pytest.approx(0.1)
    assert sum(slept) < 3.0  # 30 empty pulls: 2.76 s (0.5 s cap: 13.2 s)


def test_reply_objects_retried_often_as_long_as_before(http_grid, retry_clock) -> None:
    """A reply object not on the SuperLink yet is asked for again after 10, 20, 40 ms,
    then every 50 ms (was: doubling to 0.5 s); one that never comes still fails after
    about REPLY_PATIENCE seconds of waits, as with the old 500 tries of 0.5 s."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

    metering.shorten_reply_pull(object.__new__(http_grid.HttpGrid))
    misses = {"a": 12, "b": 0}

    def pull(object_id: str) -> bytes:
        if misses[object_id]:
            misses[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    got = http_grid.pull_objects(object_ids=list(misses), pull_object_fn=pull)
    assert got == {"a": b"a", "b": b"b"}
    assert retry_clock.waits == pytest.approx([0.01, 0.02, 0.04] + [0.05] * 9)

    retry_clock.waits.clear()

    def never(object_id: str) -> bytes:
        raise ObjectUnavailableError(object_id)

    with pytest.raises(ObjectPullError):
        http_grid.pull_objects(object_ids=["a"], pull_object_fn=never)
    assert max(retry_clock.waits) == pytest.approx(0.05)
    assert metering.REPLY_PATIENCE <= sum(retry_clock.waits) < metering.REPLY_PATIENCE + 0.1


# ---------------------------------------------------------------- a reply never completed
_UNAVAILABLE = (  # Flower's deployment Grid's reason (flwr 1.42: HttpGrid.pull_messages)
    "Reply message objects are unavailable. The sender may not have completed the "
    "upload before the object-push session expired. "
)


@pytest.fixture
def own_pull_objects(monkeypatch):
    """Flower's ``pull_objects`` as this module's global, which the Grids below call as
    Flower's HttpGrid does (so :func:`metering.shorten_reply_pull` rebinds it here)."""
    from flwr.supercore.inflatable import inflatable_utils

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "pull_objects", inflatable_utils.pull_objects, raising=False)
    return module


class _Error(_Msg):
    def __init__(self, reply_to: str, reason: str) -> None:
        super().__init__("system", reply_to)
        self.error = SimpleNamespace(code=3, reason=reason)

    def has_error(self) -> bool:
        return True


class _HalfUploadedGrid(_SlowGrid):
    """Pulls like Flower's deployment Grid: each reply's objects through
    ``pull_objects``, an error reply for a reply whose objects could not be pulled.
    Every reply is on the SuperLink at once, but m1's object ``m1-data`` never arrives
    (its SuperNode stopped in the middle of its upload)."""

    def pull_messages(self, message_ids):
        from flwr.supercore.inflatable.inflatable_utils import (
            ObjectPullError,
            ObjectUnavailableError,
        )

        def pull(object_id: str) -> bytes:
            if object_id == "m1-data":
                raise ObjectUnavailableError(object_id)
            return b"x"

        replies = []
        for mid in sorted(message_ids):
            try:
                pull_objects(object_ids=[f"{mid}-data"], pull_object_fn=pull)  # noqa: F821
            except ObjectPullError as exc:
                replies.append(_Error(mid, _UNAVAILABLE + str(exc)))
                continue
            replies.append(_Msg("train.step", mid))
        return replies


def test_a_reply_object_that_never_comes_ends_with_the_exchange(
    monkeypatch, own_pull_objects, retry_clock
) -> None:
    """A reply on the SuperLink whose object never arrives is given up at the
    exchange's deadline (30 s here) and comes back as an error reply naming the object;
    before, the pull retried it for REPLY_PATIENCE (247 s) past the phase-timeout.
    Virtual time: Flower's retry loop and the pull loop share one clock."""
    # Prepare
    monkeypatch.setattr(metering, "time", retry_clock)
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = metering.MeteredGrid(_HalfUploadedGrid([]))
    # Execute
    replies = grid.send_and_receive([_Msg("train.step"), _Msg("train.step")], timeout=30.0)
    # Assert
    assert grid.short_pull is True  # this Grid pulls as Flower's does: shortened
    assert 30.0 <= retry_clock.now < 30.1
    good = [m.metadata.reply_to_message_id for m in replies if not m.has_error()]
    (lost,) = [m for m in replies if m.has_error()]
    assert good == ["m0"] and lost.metadata.reply_to_message_id == "m1"
    assert "Failed to pull object with ID 'm1-data'" in lost.error.reason
    # without a deadline (timeout=None) a missing object keeps its patience
    retry_clock.now = 0.0
    grid.send_and_receive([_Msg("train.step"), _Msg("train.step")])
    assert metering.REPLY_PATIENCE <= retry_clock.now < metering.REPLY_PATIENCE + 0.2


def test_a_worker_whose_reply_never_completes_leaves_at_the_phase_timeout(
    monkeypatch, own_pull_objects, retry_clock, tmp_path, caplog
) -> None:
    """Through the engine: worker 2's reply to iteration 3 reaches the SuperLink without
    one of its objects. Its phase ends at the phase-timeout (30 s, virtual), the worker
    is treated as one that did not reply (default policy: it leaves and the chain is
    repaired), and the log names its node and the missing object."""
    import logging
    import re

    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode
    from flwr.supercore.inflatable.inflatable_utils import (
        ObjectPullError,
        ObjectUnavailableError,
    )

    from clients.experiment.client_app import app
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.flower import RelayStrategy
    from flower_qgadmm.testing import FakeGrid

    class HalfUploadedRun(FakeGrid):
        """FakeGrid pushed and pulled as a deployment is: the replies are computed at
        the push and their objects pulled as Flower's HttpGrid pulls them."""

        lost, at = 2, 3

        def push_messages(self, messages):
            messages = list(messages)
            self.ready = {
                r.metadata.reply_to_message_id: r for r in self.send_and_receive(messages)
            }
            self.pushed = {m.metadata.message_id: m for m in messages}
            return list(self.pushed)

        def broken(self, msg) -> bool:
            pid = int(self.contexts[msg.metadata.dst_node_id].node_config["partition-id"])
            rnd = msg.content["round"] if "round" in msg.content else None
            return pid == self.lost and rnd is not None and int(rnd["iteration"]) == self.at

        def pull_messages(self, message_ids):
            replies = []
            for mid in [m for m in message_ids if m in self.ready]:
                reply, broken = self.ready.pop(mid), self.broken(self.pushed[mid])

                def pull(object_id: str, broken: bool = broken) -> bytes:
                    if broken:
                        raise ObjectUnavailableError(object_id)
                    return b"x"

                try:
                    pull_objects(object_ids=[f"{mid}-data"], pull_object_fn=pull)  # noqa: F821
                except ObjectPullError as exc:
                    error = Error(ErrorCode.MESSAGE_UNAVAILABLE, _UNAVAILABLE + str(exc))
                    replies.append(Message(error, reply_to=self.pushed[mid]))
                    continue
                replies.append(reply)
            return replies

    # Prepare
    monkeypatch.setattr(metering, "time", retry_clock)
    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    rc = RunConfig.from_run_config(
        {"num-workers": 5, "samples-per-worker": 20, "dim": 6, "num-iterations": 5}
    ).to_run_config()
    cfg = RunConfig.from_run_config(rc)
    grid = HalfUploadedRun(app, cfg.num_workers, rc)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=5.0, results_dir=str(tmp_path))
    # Execute
    with caplog.at_level(logging.WARNING):
        strategy.start(grid, num_rounds=cfg.num_iterations, timeout=30.0)
    # Assert: one phase waited its 30 s, no longer; worker 2 left, the run went on
    assert 30.0 <= retry_clock.now < 40.0
    assert 2 not in strategy.graph.active and (1, 3) in strategy.graph.edges
    assert [r["iteration"] for r in strategy.history] == [1, 2, 3, 4, 5]
    node = strategy.node_ids[2]
    why = (
        rf"worker 2 \(node {node}\): no complete reply within 30s: object "
        rf"\S+-data of its reply never reached the SuperLink"
    )
    assert any(re.search(why, r.getMessage()) for r in caplog.records)
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert re.search(r"\| 2 \| 3 \| \(node \d+\): no complete reply within 30s: object", summary)


class _LinkState:
    """The simulation's in-memory LinkState: Flower's engine stores each reply from a
    thread of its own (``vce_api.put_message_into_state``)."""

    def __init__(self) -> None:
        self.stored: list[_Msg] = []

    def store_message_res(self, message):
        self.stored.append(message)
        return f"r{len(self.stored)}"


class _SimulationGrid(InMemoryGrid):
    def __init__(self) -> None:
        super().__init__([])
        self.state = _LinkState()

    def pull_messages(self, message_ids):
        self.pulls.append(set(message_ids))
        return [m for m in self.state.stored if m.metadata.reply_to_message_id in message_ids]


def test_the_simulations_stored_reply_wakes_the_pull_at_once(monkeypatch) -> None:
    """In simulation the pull waited out a 10 ms poll (5 ms on average per exchange, of
    Flower's 0.1 s dispatch tick that a phase must fit in); now the LinkState's store
    wakes it: at most 4 pulls for a reply stored after 0.25 s (the first, two of the
    0.1 s safety net, the wake-up), not 25, and the reply is taken at once."""
    import threading

    monkeypatch.delenv("FLOWER_QGADMM_PULL", raising=False)
    grid = _SimulationGrid()
    metered = metering.MeteredGrid(grid)
    reply = _Msg("train.step", "m0")
    stored_at: list[float] = []

    def engine() -> None:  # Flower's engine thread storing the reply
        time.sleep(0.25)
        stored_at.append(time.monotonic())
        assert grid.state.store_message_res(reply) == "r1"  # its answer, unchanged

    threading.Thread(target=engine).start()
    replies = metered.send_and_receive([_Msg("train.step")])
    taken = time.monotonic() - stored_at[0]
    assert replies == [reply] and grid.state.stored == [reply]
    assert len(grid.pulls) <= 4, len(grid.pulls)  # 10 ms polls: 25 or more
    assert taken < 0.05, taken
    assert metering.MeteredGrid(grid).replied is metered.replied  # wrapped once
