"""Extending the package from a user's module: a registered codec is a choice of the
``codec`` setting; mistakes in a custom algorithm, quantizer or settings class are refused
early, naming what to fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

from flower_qgadmm.algorithms import (
    REGISTRY,
    Gadmm,
    GadmmSettings,
    GossipSettings,
    get_algorithm,
    register,
)
from flower_qgadmm.algorithms.gossip import Gossip, compressor_parameters
from flower_qgadmm.compression import CODECS, QUANTIZERS, register_codec, register_quantizer
from flower_qgadmm.compression.codecs import FixedWidthCodec
from flower_qgadmm.compression.compressors import DitheredQuantizer, TopKQuantizer
from flower_qgadmm.compression.quantizers import StochasticQuantizer
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets, load_dataset
from flower_qgadmm.reference import least_squares_solvers, run_from_config, run_reference
from flower_qgadmm.settings import setting
from flower_qgadmm.solvers import LeastSquaresSolver


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards (the registries are global)."""
    names: list[tuple[dict, str]] = []
    yield names
    for registry, name in names:
        registry.pop(name, None)


def data():
    return least_squares_solvers(load_dataset(4, 20, 5, 0.1, seed=1))


def test_a_registered_codec_is_a_choice_of_the_codec_setting(registered) -> None:
    registered.append((CODECS, "fixed-width-again"))

    @register_codec("fixed-width-again")
    class Again(FixedWidthCodec):
        written = 0

        def encode(self, q):
            Again.written += 1
            return super().encode(q)

    ours = run_reference("q-gadmm", data(), 15, GadmmSettings(codec="fixed-width-again"))
    assert Again.written == 15 * 4  # every message of the run went through it
    fixed = run_reference("q-gadmm", data(), 15, GadmmSettings(codec="fixed-width"))
    assert ours.history == fixed.history  # the same bytes as the class it extends
    GossipSettings(codec="fixed-width-again")  # every algorithm's settings accept it
    with pytest.raises(ValueError, match="codec must be one of"):
        GadmmSettings(codec="fixed-widht")


def test_a_registered_quantizer_is_a_choice_of_the_compressor_setting(registered) -> None:
    registered.append((QUANTIZERS, "top-k-again"))
    registered.append((QUANTIZERS, "dithered-again"))
    registered.append((QUANTIZERS, "needs-width"))
    built: list[dict] = []

    @register_quantizer("top-k-again")
    class TopKAgain(TopKQuantizer):
        def __init__(self, fraction: float, scale: float = 1.0) -> None:  # not a setting
            built.append({"fraction": fraction, "scale": scale})
            super().__init__(fraction=fraction)

    @register_quantizer("dithered-again")
    class DitheredAgain(DitheredQuantizer):  # takes levels, norm, variance_scaling
        def quantize(self, x, rng, bits=None):
            built.append({"dithered": type(self).variance_scaling})
            return super().quantize(x, rng, bits)

    @register_quantizer("needs-width")
    class NeedsWidth(StochasticQuantizer):  # its constructor requires bits
        pass

    # the built-in compressors get the settings they took before the rule was general
    taken = {n: compressor_parameters(n) for n in ("dithered", "top-k", "sign", "float32")}
    assert taken == {
        "dithered": ("levels", "norm", "variance_scaling"),
        "top-k": ("fraction",),
        "sign": (),
        "float32": (),
    }
    assert compressor_parameters("needs-width") is None
    # a registered dithered-like compressor gets the automatic levels as dithered does
    resolved = get_algorithm("choco-sgd").worker.resolve(
        GossipSettings(compressor="dithered-again"), [{"dim": 5, "smoothness": 1.0}], np.eye(1)
    )
    assert resolved.levels == 16
    assert Gossip.unused_keys == frozenset()  # a gossip algorithm of yours inherits none
    ring = RunConfig.of(algorithm="choco-sgd", topology="ring", num_workers=4).graph
    for mine, theirs, extra in (
        ("top-k-again", "top-k", {"fraction": 0.3}),
        ("dithered-again", "dithered", {"levels": 4, "norm": "linf"}),  # variance scaling
        ("dithered-again", "dithered", {"levels": 4, "variance_scaling": False}),
    ):
        ours = run_reference(
            "choco-sgd", data(), 12, GossipSettings(compressor=mine, **extra), graph=ring
        )
        base = run_reference(
            "choco-sgd", data(), 12, GossipSettings(compressor=theirs, **extra), graph=ring
        )
        assert ours.history == base.history  # built with the same settings, same bytes
    assert {"fraction": 0.3, "scale": 1.0} in built
    # its own quantize ran, in the scaled variant of its class (a subclass) and not
    assert {"dithered": True} in built and {"dithered": False} in built
    cfg = RunConfig.from_run_config({"algorithm": "malcom-psgd", "compressor": "dithered-again"})
    assert cfg.algo.compressor == "dithered-again"  # a run config key, as the built-in ones
    with pytest.raises(ValueError, match="compressor must be one of") as refused:
        GossipSettings(compressor="needs-width")
    assert "'top-k-again'" in str(refused.value) and "'stochastic'" not in str(refused.value)


def test_register_refuses_a_key_another_class_owns_and_types_the_wire_cannot_carry(
    registered,
) -> None:
    @dataclass(frozen=True)
    class Clash:
        step_size: float = setting(0.1, "a gossip key")

    class ClashWorker(Gadmm):
        Settings = Clash

    registered.append((REGISTRY, "clash"))
    with pytest.raises(ValueError, match="'step-size' is declared by both GossipSettings and"):
        register("clash", ClashWorker)
    assert "clash" not in REGISTRY
    assert RunConfig.of(algorithm="d-psgd").algorithm == "d-psgd"  # the others still work

    @dataclass(frozen=True)
    class Optional:
        opt_step: float | None = setting(None, "not a type a run config carries")

    class OptionalWorker(Gadmm):
        Settings = Optional

    registered.append((REGISTRY, "optional"))
    with pytest.raises(TypeError, match=re.escape("Optional.opt_step is a float | None: a")):
        register("optional", OptionalWorker)

    class OwnCodec(Gadmm):  # the relay checks envelopes with codec_for: one codec only
        def make_codec(self):
            return FixedWidthCodec()

    registered.append((REGISTRY, "own-codec"))
    with pytest.raises(TypeError, match="override the classmethod codec_for"):
        register("own-codec", OwnCodec)
    with pytest.raises(ValueError, match="'auto' is the codec setting's default"):
        register_codec("auto")


class ArraySender(Gadmm):
    """A mistaken worker: its step returns the decoded change, not the payload's bytes."""

    def step(self, iteration: int, phase: str):
        super().step(iteration, phase)
        return self.theta


class ShortQuantizer(StochasticQuantizer):
    """A mistaken quantizer: its dequantize drops the last entry."""

    def dequantize(self, q):
        return super().dequantize(q)[:-1]


class ShortWorker(Gadmm):
    def make_quantizer(self):
        return ShortQuantizer(self.settings.bits)


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        (ArraySender, "ArraySender.step returned a ndarray; it must return the payload's bytes"),
        (ShortWorker, "dequantize returned shape \\(4,\\), dtype float64; expected a float vector"),
    ],
)
def test_a_custom_workers_mistakes_are_named(registered, worker, message) -> None:
    name = f"mistaken-{worker.__name__.lower()}"
    register(name, worker, quantized=True, solver="exact")
    registered.append((REGISTRY, name))
    with pytest.raises(TypeError, match=message):
        run_reference(name, data(), 3)
    assert np.isfinite(run_reference("q-gadmm", data(), 3).history[-1]["objective"])


def test_register_checks_keys_in_a_fresh_process_that_imported_only_the_algorithms() -> None:
    import subprocess
    import sys

    code = """
import sys
from dataclasses import dataclass
from flower_qgadmm.algorithms import Gadmm, register
from flower_qgadmm.settings import setting
from flower_qgadmm.solvers import LeastSquaresSolver
assert "flower_qgadmm.config" not in sys.modules

@dataclass(frozen=True)
class Clash:
    step_size: float = setting(0.1, "a gossip key")

class ClashWorker(Gadmm):
    Settings = Clash

try:
    register("clash", ClashWorker)
except ValueError as exc:
    print("refused:", exc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = "refused: setting 'step-size' is declared by both GossipSettings and Clash"
    assert expected in done.stdout


class Forgetful(Gadmm):
    """Counts its steps in an attribute its state does not keep."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, iteration: int, phase: str):
        self.steps += 1
        return super().step(iteration, phase)


class NumpyScalar(Forgetful):
    """Keeps the count, as a numpy integer (a ConfigRecord carries Python numbers)."""

    def extra_scalars(self):
        return {**super().extra_scalars(), "steps": np.int64(self.steps)}

    def load_extra(self, arrays, scalars) -> None:
        super().load_extra(arrays, scalars)
        self.steps = int(scalars["steps"])


class Remembers(NumpyScalar):
    def extra_scalars(self):
        return {**super().extra_scalars(), "steps": self.steps}


class NumpyNumber(Gadmm):
    """Keeps a numpy float, saved and restored as a Python float: restored."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = np.float64(0.0)

    def step(self, iteration: int, phase: str):
        self.seen = np.float64(iteration) / 3
        return super().step(iteration, phase)

    def extra_scalars(self):
        return {**super().extra_scalars(), "seen": float(self.seen)}

    def load_extra(self, arrays, scalars) -> None:
        super().load_extra(arrays, scalars)
        self.seen = float(scalars["seen"])


class MixedList(Remembers):
    """Keeps a list of an int and a float, which a ConfigRecord refuses."""

    def extra_scalars(self):
        return {**super().extra_scalars(), "pair": [1, 2.5]}


class Cached(Forgetful):
    """The count declared a cache: not state."""

    transient = (*Gadmm.transient, "steps")


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        (Forgetful, "worker 0 \\(rebuilt for its step of iteration 2\\): steps not restored by"),
        (NumpyScalar, "worker 0: state scalar 'steps' is a int64; a ClientApp keeps bool, int"),
        (Remembers, None),
        (Cached, None),
        (NumpyNumber, None),
        (MixedList, "state scalar 'pair' is a list of float, int; a ClientApp keeps"),
    ],
)
def test_rebuild_workers_names_the_state_a_custom_worker_does_not_keep(
    registered, worker, message
) -> None:
    name = f"rebuild-{worker.__name__.lower()}"
    register(name, worker, quantized=True, solver="exact")
    registered.append((REGISTRY, name))
    run_reference(name, data(), 3)  # in memory, nothing is noticed
    if message is None:
        same = run_reference(name, data(), 3, rebuild_workers=True)
        assert same.history == run_reference("q-gadmm", data(), 3).history
        return
    with pytest.raises(ValueError, match=message):
        run_reference(name, data(), 3, rebuild_workers=True)


@pytest.mark.parametrize(
    "extra",
    [
        {"algorithm": "gadmm"},
        {"algorithm": "q-gadmm", "adaptive-bits": True, "censoring": True, "topology": "grid"},
        {"algorithm": "q-gadmm", "encrypt": True, "remove-workers": "2@6", "codec": "source"},
        {"algorithm": "d-psgd", "topology": "ring", "dpsgd-form": "adapt-combine"},
        {"algorithm": "choco-sgd", "topology": "ring", "compressor": "top-k", "fraction": 0.5},
        {"algorithm": "malcom-psgd", "topology": "ring"},
    ],
)
def test_every_algorithm_keeps_its_state_in_state_dict(extra) -> None:
    """Rebuilt from its state_dict before every step (as a ClientApp rebuilds it for every
    message), every built-in worker gives the history it gives in memory."""
    cfg = RunConfig.from_run_config(
        {"num-workers": 6, "num-iterations": 12, "dim": 8, "evaluate-every": 1, **extra}
    )
    solvers = least_squares_solvers(experiment_datasets(cfg))
    kept = run_from_config(cfg, solvers)
    rebuilt = run_from_config(
        cfg, least_squares_solvers(experiment_datasets(cfg)), rebuild_workers=True
    )
    assert rebuilt.history == kept.history
    assert np.array_equal(rebuilt.models, kept.models)


class CountingSolver(LeastSquaresSolver):
    """Damps its first solve only: the count is state its extra_state() does not keep."""

    calls = 0

    def solve(self, linear, weight, start=None, key=None):
        self.calls += 1
        return super().solve(linear * (0.5 if self.calls == 1 else 1.0), weight, start, key)


def test_rebuild_workers_shows_solver_state_outside_extra_state_as_another_history() -> None:
    def solvers():
        return [CountingSolver(X, y) for X, y in load_dataset(4, 20, 5, 0.1, seed=1)]

    kept = run_reference("q-gadmm", solvers(), 4)
    rebuilt = run_reference("q-gadmm", solvers(), 4, rebuild_workers=True)
    assert kept.history[0] == rebuilt.history[0]  # the first solve is damped in both
    assert kept.history[-1]["objective"] != rebuilt.history[-1]["objective"]


def test_a_registered_quantizer_returning_no_quantized_is_named(registered) -> None:
    """A quantizer of yours whose ``quantize`` forgets its ``return`` failed with
    "AttributeError: 'NoneType' object has no attribute 'kind'" inside the codec."""
    registered.append((QUANTIZERS, "forgets-return"))

    @register_quantizer("forgets-return")
    class ForgetsReturn(TopKQuantizer):
        def quantize(self, x, rng, bits=None):
            super().quantize(x, rng, bits)  # no return

    with pytest.raises(TypeError, match="ForgetsReturn.quantize returned a NoneType; it must"):
        run_reference("choco-sgd", data(), 2, GossipSettings(compressor="forgets-return"))
