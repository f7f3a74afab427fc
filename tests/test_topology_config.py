"""Topology and configuration: validation and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.config import RunConfig, SolverSettings, setting_fields
from flower_qgadmm.settings import as_record, from_mapping
from flower_qgadmm.topology import Graph, chain, make_topology

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_chain_neighbours_and_groups() -> None:
    g = chain(5)
    assert g.edges == ((0, 1), (1, 2), (2, 3), (3, 4))
    assert g.neighbours(0) == (1,) and g.neighbours(2) == (1, 3) and g.neighbours(4) == (3,)
    assert g.two_colouring() == ((0, 2, 4), (1, 3))


def test_graph_validation_messages() -> None:
    with pytest.raises(ValueError, match="at least 2 workers"):
        chain(1)
    with pytest.raises(ValueError, match="not bipartite"):
        Graph(3, [(0, 1), (1, 2), (2, 0)]).two_colouring()
    with pytest.raises(ValueError, match="disconnected"):
        Graph(4, [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="bad edge"):
        Graph(3, [(0, 3)])
    with pytest.raises(ValueError, match="unknown topology 'star'"):
        make_topology("star", 4)


def test_pyproject_run_config_matches_dataclass_defaults() -> None:
    # One place for defaults: the Flower app config must say the same as the dataclass.
    run_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    expected = {f.name.replace("_", "-"): f.default for _, f in setting_fields()}
    assert run_config == expected
    assert RunConfig.from_run_config(run_config) == RunConfig()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "algorithm",
            "adam",
            r"unknown algorithm 'adam'; choose one of \['choco-sgd', 'd-psgd', 'fedavg'",
        ),
        ("algorithm", "sgadmm", "algorithm 'sgadmm' does not apply to task 'linreg'"),
        ("topology", "ring", "odd cycle"),  # 9 workers on a ring: not for GADMM
        ("mixing", "uniform", "mixing must be one of"),
        ("step-size", -1.0, "step-size must be a finite number >= 0"),
        ("step-size", float("nan"), "step-size must be a finite number >= 0, got nan"),
        ("levels", -1, "levels must be a finite number >= 0, got -1"),
        ("fraction", 1.5, "fraction must be in"),
        ("levels", 2**40, "levels must be at most 2147483647"),
        ("compressor", "gzip", "compressor must be one of"),
        ("codec", "zip", "codec must be one of"),
        ("consensus-step", -0.5, "consensus-step must be a finite number >= 0"),
        ("consensus-step", 1.5, r"consensus-step must be in \(0, 1\] \(0: automatic\)"),
        ("dpsgd-form", "atc", "dpsgd-form must be one of"),
        ("l2", float("inf"), "l2 must be a finite number >= 0"),
        ("inject-failure", "9@3", "inject-failure names worker 9; there are 9"),
        ("inject-failure", "2@0", "inject-failure must look like"),
        ("remove-workers", "3@5 3@9", "names worker 3 twice"),
        ("remove-workers", "3@0", r"remove-workers '3@0': the iteration must be in 1\.\.500"),
        ("remove-workers", "3@501", r"'3@501': the iteration must be in 1\.\.500"),
        ("inject-failure", "3@5:", "inject-failure must look like"),
        ("remove-workers", "0@2 1@2 2@2 3@2 4@2 5@2 6@2 7@2", "only 1 workers would remain"),
        ("task", "cifar", "unknown task 'cifar'"),
        ("optimizer", "rmsprop", r"optimizer must be one of \['adam', 'sgd'\], got 'rmsprop'$"),
        ("optimizer", "adm", "got 'adm': did you mean 'adam'"),
        ("on-failure", "rapair", "did you mean 'repair'"),
        ("codec", "sorce", "did you mean 'source'"),
        ("partition", "contigous", "did you mean 'contiguous'"),
        ("bits", 0, "bits must be in 1..16"),
        ("bits", 17, "bits must be in 1..16"),
        ("rho", float("nan"), "rho must be a finite number > 0"),  # 0 is now "automatic"
        ("rho", -1, r"rho must be a finite number > 0 \(0: automatic\), got -1"),
        ("num-workers", 1, "num-workers must be >= 2"),
        ("seed", -1, "seed must be a finite number >= 0, got -1"),
        ("omega", 1.5, "omega must be in"),
        ("bits", 2.5, "bits must be an integer"),
        ("adaptive-bits", "yes", "adaptive-bits must be true or false"),
        ("data-csv", "x.csv", "data-target"),
        ("no-such-key", 1, r"unknown config key\(s\) \['no-such-key'\]; known keys: adaptive-bits"),
    ],
)
def test_bad_settings_give_clear_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_run_config({"num-workers": 9, key: value})


def test_the_algorithm_section_is_the_selected_algorithms_settings() -> None:
    cfg = RunConfig.from_run_config({"rho": 3, "bits": 4, "adaptive-bits": True})
    assert cfg.algo == GadmmSettings(rho=3.0, bits=4, adaptive_bits=True)
    assert (cfg.rho, cfg.num_workers, cfg.lr) == (3.0, 10, 0.001)
    # Keys of other algorithms are validated, kept, and do not change this run
    other = RunConfig.from_run_config({"rho": 3, "step-size": 0.5})
    assert other.algo == GadmmSettings(rho=3.0)
    switched = other.replace(algorithm="d-psgd", topology="ring")
    assert (switched.step_size, switched.replace(algorithm="q-gadmm", topology="chain").rho) == (
        0.5,
        3.0,
    )
    assert RunConfig.from_run_config(other.to_run_config()) == other


def test_each_key_has_one_owner_and_a_description() -> None:
    keys = [f.name for _, f in setting_fields()]
    assert len(keys) == len(set(keys))
    assert all(f.metadata.get("help") for _, f in setting_fields())


def test_integers_stay_exact_and_a_bipartite_probability_is_checked() -> None:
    # Prepare / Execute
    big = RunConfig.from_run_config({"seed": 2**53 + 1})
    text = RunConfig.from_run_config({"seed": "12345678901234567891"})
    # Assert: no trip through float (2^53 + 1 was read as 2^53)
    assert big.seed == 2**53 + 1
    assert text.seed == 12345678901234567891
    assert RunConfig.from_run_config({"seed": "1e3"}).seed == 1000
    for p in (1.5, 7.0):
        with pytest.raises(ValueError, match="edge probability must be in"):
            RunConfig.from_run_config({"topology": "bipartite", "topology-param": p})


def test_settings_built_in_python_mean_what_the_same_run_config_means() -> None:
    # Prepare / Execute: strings as a run config carries them, given to the classes
    from flower_qgadmm.algorithms import GossipSettings

    gadmm = GadmmSettings(adaptive_bits="false", censoring="true", rho="20", bits=3.0)
    gossip = GossipSettings(levels="4", variance_scaling="false")
    solver = SolverSettings(lr="0.1", local_steps="3")
    # Assert: converted as from_mapping converts them (the reference runner and the
    # Flower workers, which parse the record, then run the same settings)
    assert gadmm.adaptive_bits is False and gadmm.censoring is True
    assert gadmm.rho == 20.0 and gadmm.bits == 3 and type(gadmm.bits) is int
    assert gossip.levels == 4 and gossip.variance_scaling is False
    assert solver.lr == 0.1 and solver.local_steps == 3
    assert gadmm == from_mapping(GadmmSettings, as_record(gadmm))
    for build, message in (
        (lambda: GadmmSettings(adaptive_bits="no"), "adaptive-bits must be true or false"),
        (lambda: SolverSettings(lr="fast"), "lr must be a number"),
        (lambda: GadmmSettings(bits=2.5), "bits must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            build()
    # a huge integer is compared exactly (no OverflowError from a float conversion)
    assert RunConfig.from_run_config({"num-iterations": 10**400}).num_iterations == 10**400
    with pytest.raises(ValueError, match="rho is beyond the float range"):
        GadmmSettings(rho=10**400)
    # numpy scalars: integers exactly, numpy booleans as booleans
    import numpy as np

    from flower_qgadmm.config import RunSettings

    assert RunSettings(seed=np.int64(2**62 + 1)).seed == 2**62 + 1
    assert GadmmSettings(censoring=np.True_).censoring is True


def test_a_setting_given_under_both_spellings_with_different_values_is_refused() -> None:
    """``local-steps`` and ``local_steps`` are the same setting (snake case is accepted);
    given both with different values, the one iterated last used to win silently (a
    project's own ``step_size`` overrode our ``step-size``)."""
    base = {"task": "custom", "algorithm": "q-sgadmm", "num-workers": 4}
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"local-steps = 5, local_steps = 3: both are the"):
            RunConfig.from_run_config({**base, "local-steps": 5, "local_steps": 3}, strict=strict)
    # the same value twice is harmless; task "custom" leaves the data keys to the project
    cfg = RunConfig.from_run_config({**base, "local-steps": 3, "local_steps": 3})
    assert cfg.solver.local_steps == 3
    cfg = RunConfig.from_run_config({**base, "batch-size": 8, "batch_size": 64}, strict=False)
    assert cfg.solver.local_steps == 5


@pytest.mark.parametrize("given", [None, "rho=3", [("rho", 3)]])
def test_a_run_config_that_is_not_a_mapping_is_refused_naming_its_type(given) -> None:
    """``from_run_config(None)`` failed inside with "'NoneType' object is not iterable"."""
    with pytest.raises(
        TypeError, match=f"run_config must be a mapping .* got {type(given).__name__}"
    ):
        RunConfig.from_run_config(given)
