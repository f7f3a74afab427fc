"""What crossed Flower, measured: a Grid wrapper that counts every message's bytes.

Bytes are the content bytes of a message as Flower's ``message_size_mod`` counts them
(``RecordDict`` records' ``count_bytes``), in each direction ("down": ServerApp to
SuperNodes, "up": replies), split by traffic kind from the message type:

- ``train``: the training exchange (``train``, ``train.*``): payloads, scalar metrics,
  FedAvg's models;
- ``eval``: models pulled or sent for evaluation (``evaluate``, ``query.model``,
  ``query.finish`` (whose down message also carries the last round's payloads), and the
  ``model`` record a training reply carries in an evaluation
  round);
- ``control``: set-up and repair (every other ``query.*``).

Both our relay and Flower's own FedAvg run through it, so their histories carry the
same counters.

It also replaces the wait of ``send_and_receive``: Flower's deployment Grid pulls the
replies every 3 s, so an exchange whose replies are there after 0.2 s still takes 3 s. We
push, then pull every 20 ms at first, backing off by x1.5 to at most 0.1 s (reached after
0.2 s): the last reply is picked up within 0.1 s of reaching the SuperLink (with a 0.5 s
cap, 0.9-1.4 s after the last SuperNode pushed, counting the object retries below:
docs/benchmarks-flower.md), for about 10 pulls a second during an exchange. The
simulation's in-memory Grid (Flower's own pulls every 0.1 s) is pulled as soon as a reply
is stored: its LinkState lives in the ServerApp's own process, and
:func:`reply_signal` makes its ``store_message_res`` set an event the loop waits on
(every 0.1 s at the latest, for what Flower answers at pull time, e.g. an unavailable
node); without that state, every 10 ms without backing off. A backed-off pull would add
up to half an exchange's time, and the 10 ms poll, 5 ms on average, was a twentieth of
Flower's 0.1 s dispatch tick, which a phase must fit in (docs/benchmarks-flower.md). A Grid
that cannot push (the in-process test Grid) keeps its own, and
``FLOWER_QGADMM_PULL=flower`` in the ServerApp's environment restores Flower's (to
measure the difference: benchmarks/bench_deployment.py).

Pulling that early, a reply often exists on the SuperLink before its sender has pushed
all its objects; Flower's deployment Grid (``HttpGrid.pull_messages``, flwr 1.42) then
asks for a missing object again after 1 s, doubling to 10 s (``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP``). The SuperLink offers no way to pull only complete replies (its
``PullMessages`` hands a reply over once), so :func:`shorten_reply_pull` makes that retry
start at 10 ms, doubling to 50 ms, for as many tries as fill ``REPLY_PATIENCE`` seconds
(guarded: Flower's own backoff stays if its Grid is not the expected one), as the kit's
SuperNodes do on the node side. Within an exchange with a timeout (a phase's
``phase-timeout``), a missing object is retried until that exchange's deadline instead,
never after it: a reply whose object never comes (its sender stopped in the middle of
its upload) then comes back from Flower's Grid as an error reply
(``MESSAGE_UNAVAILABLE``, naming the object) when the phase ends, and its worker is
treated as one that did not reply (the transport says ``no complete reply within ...``).
Before, the pull waited the whole ``REPLY_PATIENCE`` (247 s) past any phase-timeout.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from .records import numpy_record
from .supernode import pull_tries

KINDS = ("train", "eval", "control")
PULL_FIRST, PULL_GROWTH, PULL_MAX = 0.02, 1.5, 0.1  # seconds between pulls
PULL_IN_MEMORY = 0.01  # seconds between pulls of the simulation's in-memory Grid
PULL_SIGNALLED = 0.1  # ... at most, when its stored replies wake the pull (reply_signal)
EVAL_TYPES = ("evaluate", "query.model", "query.finish")
REPLY_BACKOFF = (0.01, 0.05)  # first and longest retry wait for a reply object not there yet
REPLY_PATIENCE = 247.0  # seconds a missing reply object is retried (500 tries of (0.01, 0.5))
# time.monotonic() at which the exchange in progress ends (MeteredGrid.send_and_receive)
_DEADLINE: ContextVar[float | None] = ContextVar("flower_qgadmm_reply_deadline", default=None)


def message_bytes(msg: Message) -> int:
    """Bytes of a message's content as Flower counts them (cf. ``message_size_mod``)."""
    if msg.has_error():
        return 0
    content: RecordDict = msg.content
    return int(sum(record_bytes(record) for record in content.values()))


def record_bytes(record: Any) -> int:
    """``record.count_bytes()``; an empty ``str``, ``bytes`` or list in a ConfigRecord,
    which Flower's count refuses (flwr 1.42: ValueError, IndexError), counts its key
    only, so that a faulty reply (an empty payload) is counted and then refused by the
    relay, never crashes the ServerApp's metering."""
    if not isinstance(record, ConfigRecord):
        return int(record.count_bytes())
    try:
        return int(record.count_bytes())
    except (ValueError, IndexError):
        empty = [k for k, v in record.items() if isinstance(v, (str, bytes, list)) and not v]
        rest = ConfigRecord({k: v for k, v in record.items() if k not in empty})
        return int(rest.count_bytes()) + sum(len(k) for k in empty)


def traffic_kind(message_type: str) -> str:
    """``train``, ``eval`` or ``control`` for a message type."""
    if message_type == "train" or message_type.startswith("train."):
        return "train"
    if message_type in EVAL_TYPES or message_type.startswith("evaluate."):
        return "eval"
    return "control"


class _ReplyPull(functools.partial):
    """Flower's ``pull_objects`` with our retry waits (its ``keywords``); during an
    exchange with a deadline (``_DEADLINE``) a missing object is retried until that
    deadline, however many tries that takes, and not after it (``max_time``)."""

    max_time = float("inf")  # Flower's own limit (its default), kept if shorter

    def __call__(self, /, *args, **kwargs):
        deadline = _DEADLINE.get()
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            kwargs["max_time"] = min(left, kwargs.get("max_time") or self.max_time)
            kwargs.setdefault("max_tries_per_object", None)  # None: Flower's "no limit"
        return super().__call__(*args, **kwargs)


def shorten_reply_pull(
    grid: Grid, backoff: tuple[float, float] = REPLY_BACKOFF, patience: float = REPLY_PATIENCE
) -> bool:
    """Make ``grid.pull_messages`` retry a reply object that is not on the SuperLink yet
    after ``backoff[0]`` seconds, doubling to ``backoff[1]``, instead of Flower's 1 s to
    10 s, for as many tries as fill ``patience`` seconds (a missing object then makes
    Flower's Grid return an error reply for that message) or, during an exchange of
    :class:`MeteredGrid` with a timeout, until that exchange's deadline: it rebinds
    ``pull_objects`` in the module of ``grid``'s class (flwr 1.42:
    ``flwr.superlink.grid.http_grid``, whose ``pull_messages`` calls it with Flower's
    default backoff). False, and nothing changed, unless that method calls
    ``pull_objects(`` without choosing a backoff and that function takes
    ``initial_backoff``, ``backoff_cap``, ``max_tries_per_object`` and ``max_time``;
    True if done (now or before)."""
    cls = type(grid)
    module = sys.modules.get(cls.__module__)
    fn = getattr(module, "pull_objects", None)
    try:
        source = inspect.getsource(cls.pull_messages)
        params = inspect.signature(fn).parameters
    except (AttributeError, OSError, TypeError, ValueError):
        return False
    if "pull_objects(" not in source or "backoff" in source:
        return False
    if not {"initial_backoff", "backoff_cap", "max_tries_per_object", "max_time"} <= set(params):
        return False
    first, cap = backoff
    tries = pull_tries(backoff, patience)
    wanted = {"initial_backoff": first, "backoff_cap": cap, "max_tries_per_object": tries}
    if not (isinstance(fn, _ReplyPull) and fn.keywords == wanted):
        module.pull_objects = pull = _ReplyPull(fn, **wanted)
        default = params["max_time"].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            pull.max_time = float(default)
    return True


def reply_signal(grid: Grid) -> threading.Event | None:
    """An event set whenever the LinkState of ``grid`` (the simulation's ``InMemoryGrid``,
    whose ``state`` is the one its engine stores replies into, in this process) stores a
    reply; None, and nothing changed, for a Grid without such a state. The state's
    ``store_message_res`` is wrapped on the instance, once (later calls share the
    event); what it does and returns is unchanged."""
    state = getattr(grid, "state", None)
    store = getattr(state, "store_message_res", None)
    if not callable(store):
        return None
    signal = getattr(store, "reply_signal", None)
    if isinstance(signal, threading.Event):
        return signal
    signal = threading.Event()

    @functools.wraps(store)
    def store_message_res(*args: Any, **kwargs: Any) -> Any:
        try:
            return store(*args, **kwargs)
        finally:
            signal.set()

    store_message_res.reply_signal = signal  # type: ignore[attr-defined]
    state.store_message_res = store_message_res
    return signal


class MeteredGrid(Grid):
    """Delegates to ``grid`` and counts the bytes of every message sent and received."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.short_pull: bool | None = None  # shorten_reply_pull done (at the first pull)
        # the simulation's Grid (flwr.superlink.grid.inmemory_grid): pulled at PULL_IN_MEMORY
        self.in_memory = any(c.__name__ == "InMemoryGrid" for c in type(grid).__mro__)
        # set when its state stores a reply: the pull waits for it (None: it polls)
        self.replied = reply_signal(grid) if self.in_memory else None
        # a simulation (Flower's, or a test grid saying so), not a deployment
        self.simulation = self.in_memory or bool(getattr(grid, "simulation", False))
        self.down = dict.fromkeys(KINDS, 0)
        self.up = dict.fromkeys(KINDS, 0)

    def _count(self, messages: Iterable[Message], side: dict[str, int]) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            kind, size = traffic_kind(msg.metadata.message_type), message_bytes(msg)
            if kind == "train" and size and "model" in msg.content:  # evaluation's model
                model = int(msg.content["model"].count_bytes())
                side["eval"] += model
                size -= model
            side[kind] += size
        return messages

    # ------------------------------------------------------------------ Grid
    def set_run(self, run_id: int) -> None:  # noqa: D102
        self.grid.set_run(run_id)

    @property
    def run(self):  # noqa: D102
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: D102
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(self._count(messages, self.down))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._count(self.grid.pull_messages(message_ids), self.up)

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None):
        """Push, then pull until every reply is in or ``timeout`` (seconds) passed, with
        short, growing intervals (see the module docstring)."""
        sent = self._count(messages, self.down)
        if os.environ.get("FLOWER_QGADMM_PULL") == "flower":
            return self._count(self.grid.send_and_receive(sent, timeout=timeout), self.up)
        try:
            ids = set(self.grid.push_messages(sent))
        except NotImplementedError:  # e.g. the in-process test Grid: its own exchange
            return self._count(self.grid.send_and_receive(sent, timeout=timeout), self.up)
        if self.short_pull is None:
            self.short_pull = shorten_reply_pull(self.grid)
        end = None if timeout is None else time.monotonic() + float(timeout)
        replies: list[Message] = []
        in_memory, replied = self.in_memory, self.replied
        wait = (PULL_IN_MEMORY if replied is None else PULL_SIGNALLED) if in_memory else PULL_FIRST
        deadline = _DEADLINE.set(end)  # a reply's missing object: retried until `end` only
        try:
            while ids:
                if replied is not None:
                    replied.clear()  # a reply stored from now on wakes the wait below
                got = self._count(self.grid.pull_messages(ids), self.up)
                replies.extend(got)
                ids -= {msg.metadata.reply_to_message_id for msg in got}
                if not ids or (end is not None and time.monotonic() >= end):
                    break
                pause = wait if end is None else max(0.0, min(wait, end - time.monotonic()))
                if replied is not None:
                    replied.wait(pause)
                else:
                    time.sleep(pause)
                if not in_memory:
                    wait = min(PULL_MAX, wait * PULL_GROWTH)
        finally:
            _DEADLINE.reset(deadline)
        return replies

    # ------------------------------------------------------------------ counters
    def load_counters(self, counters: Mapping[str, int]) -> None:
        """Continue the counts of a resumed run (:meth:`counters` of its checkpoint)."""
        for kind in KINDS:
            self.down[kind] = int(counters.get(f"flower_{kind}_bytes_down", 0))
            self.up[kind] = int(counters.get(f"flower_{kind}_bytes_up", 0))

    def counters(self) -> dict[str, int]:
        """Cumulative bytes per direction and kind, and the totals over all messages:
        ``flower_bytes_down`` / ``_up`` and ``flower_<kind>_bytes_down`` / ``_up``."""
        out = {
            "flower_bytes_down": sum(self.down.values()),
            "flower_bytes_up": sum(self.up.values()),
        }
        for kind in KINDS:
            out[f"flower_{kind}_bytes_down"] = self.down[kind]
            out[f"flower_{kind}_bytes_up"] = self.up[kind]
        return out


def fedavg_bytes(model: Mapping[str, np.ndarray], num_workers: int, rounds: int) -> int:
    """What Flower's FedAvg moves for the same model and rounds: the model as an
    ArrayRecord, down to and up from every worker in every round (its config and metric
    records, a few dozen bytes per message, left out)."""
    record = numpy_record(model)
    return 2 * int(num_workers) * int(rounds) * int(record.count_bytes())
