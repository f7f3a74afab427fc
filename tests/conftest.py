"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Run every test in its own temporary directory, so results folders written to the
    default relative ``results`` land there, not in the repository."""
    monkeypatch.chdir(tmp_path)


class RetryClock:
    """Virtual time for Flower's object-pull retry loop (``pull_objects`` in
    ``flwr.supercore.inflatable.inflatable_utils``): its ``threading.Event`` waits and its
    ``time.monotonic`` (the ``max_time`` check) use this clock, so minutes of retries run
    at once. ``waits``: each retry wait the loop asked for, in order; ``sleep`` moves the
    clock on (for a caller that shares it, e.g. the ServerApp's pull loop)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def event_class(self) -> type:
        """A ``threading.Event`` whose ``wait`` records and advances this clock."""
        clock = self

        class Event:
            def __init__(self) -> None:
                self.flag = False

            def is_set(self) -> bool:
                return self.flag

            def set(self) -> None:
                self.flag = True

            def wait(self, seconds: float) -> bool:
                clock.waits.append(seconds)
                clock.sleep(seconds)
                return self.flag

        return Event


@pytest.fixture
def retry_clock(monkeypatch) -> RetryClock:
    """Flower's ``pull_objects`` retry loop on a :class:`RetryClock`, without jitter."""
    import threading
    from types import SimpleNamespace

    from flwr.supercore.inflatable import inflatable_utils

    clock = RetryClock()
    fake = SimpleNamespace(Event=clock.event_class(), Lock=threading.Lock)
    monkeypatch.setattr(inflatable_utils, "threading", fake)
    monkeypatch.setattr(inflatable_utils, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda a, b: 0.0)
    return clock
