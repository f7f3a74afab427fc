"""The example project under clients/torch_example: a user's CNN through the drop-in API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flower_qgadmm import RunConfig
from flower_qgadmm.config import near_misses, sections
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.settings import keys_of
from flower_qgadmm.testing import FakeGrid

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
EXAMPLE = Path(__file__).resolve().parents[1] / "clients" / "torch_example"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    from torch_example.client_app import app

    yield app
    sys.path.remove(str(EXAMPLE))


def test_example_project_trains_with_settings_from_its_run_config(example) -> None:
    run_config = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    # ignores the project's other keys (num-server-rounds)
    cfg = RunConfig.from_run_config(
        {**run_config, "num-workers": 3, "evaluate-every": 2}, strict=False
    )
    assert (cfg.algorithm, cfg.bits, cfg.dual_step, cfg.task) == ("q-sgadmm", 4, 0.01, "custom")
    strategy = RelayStrategy.from_config(cfg)
    strategy.start(FakeGrid(example, 3, run_config), num_rounds=3, timeout=10.0)
    rows = strategy.history
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    # workers test their model in evaluation rounds only (every 2nd and the last)
    assert ["accuracy" in r for r in rows] == [False, True, True]
    assert rows[-1]["accuracy"] > rows[1]["accuracy"]
    # 1370 CNN parameters: width, d (a 2-byte varint), R (16 bits), the 4-bit codes
    assert rows[-1]["bits"] == 3 * 3 * 8 * (5 + (4 * 1370 + 7) // 8)


def test_lenient_run_config_still_checks_values_and_names_likely_typos(caplog) -> None:
    with pytest.raises(ValueError, match="bits must be in 1..16"):
        RunConfig.from_run_config({"bits": 0, "my-own-key": "x"}, strict=False)
    # a project's own keys are left alone; ours misspelt are named (and logged by the relay)
    given = {"num-server-rounds": 3, "local-step": 10, "rhoo": 5.0, "task": "custom"}
    cfg = RunConfig.from_run_config({**given, "algorithm": "q-sgadmm"}, strict=False)
    assert cfg.ignored == ("local-step", "num-server-rounds", "rhoo")
    assert cfg.near_misses() == [
        "'local-step' is not a setting: did you mean 'local-steps'?",
        "'rhoo' is not a setting: did you mean 'rho'?",
    ]
    # with task "custom" (your data, your model) our tasks' data keys are yours too: a
    # project's own model / partition / batch-size is neither read nor checked
    mine = {"task": "custom", "algorithm": "q-sgadmm", "model": "resnet18", "batch-size": 64}
    cfg_mine = RunConfig.from_run_config({**mine, "partition": "label-skew"}, strict=False)
    assert cfg_mine.ignored == ("batch-size", "model", "partition")
    assert cfg_mine.near_misses() == []
    with pytest.raises(ValueError, match="model must be one of"):
        RunConfig.from_run_config({**mine, "task": "digits"}, strict=False)
    # a project's own keys that resemble ours get no hint
    own = ["fraction-fit", "test-batch-size", "checkpoint-dir", "device-id", "local-epochs"]
    assert near_misses(own, keys_of(*sections())) == []
    assert near_misses(["LR", "toplogy"], keys_of(*sections())) == [
        "'LR' is not a setting: did you mean 'lr'?",
        "'toplogy' is not a setting: did you mean 'topology'?",
    ]
    with pytest.raises(ValueError, match="'rhoo' is not a setting: did you mean 'rho'"):
        RunConfig.from_run_config({"rhoo": 5.0})  # strict: refused, with the hint
    with caplog.at_level("WARNING", logger="flwr"):
        RelayStrategy.from_config(cfg)
    assert "run config: 'local-step' is not a setting: did you mean 'local-steps'?" in caplog.text


def test_example_server_app_runs_like_a_fedavg_project(example, tmp_path) -> None:
    # The example's own ServerApp main: initial model, FedAvg-style evaluate_fn, results
    from flwr.app import Context, RecordDict
    from torch_example.server_app import main

    run_config = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    run_config = {
        **run_config,
        "num-workers": 3,
        "num-server-rounds": 4,
        "evaluate-every": 2,
        "results-dir": str(tmp_path),
        "local-steps": 2,
        "batch-size": 16,  # one of our tasks' keys: with task "custom" the project's own
    }
    context = Context(
        run_id=1,
        node_id=0,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(),
        run_config=run_config,
    )
    main(FakeGrid(example, 3, run_config), context)
    (run,) = tmp_path.iterdir()
    rows = [line for line in (run / "history.jsonl").read_text().splitlines() if line]
    assert len(rows) == 4
    assert '"mean-model-accuracy"' in rows[1] and '"mean-model-accuracy"' not in rows[0]
    for name in ("history.png", "summary.md", "model.pt", "models.npz"):
        assert (run / name).stat().st_size > 0, name
    # the summary lists what ran: 4 rounds, not our tasks' data keys (task "custom": the
    # project's data, its batch-size included, are its own)
    summary = (run / "summary.md").read_text()
    assert "| `rounds` | `4` |" in summary and "| `task` | `custom` |" in summary
    for other in ("num-iterations", "samples-per-worker", "partition", "step-size", "batch-size"):
        assert f"`{other}`" not in summary, other


def test_settings_the_algorithm_or_task_does_not_read_are_named_and_left_out(caplog) -> None:
    """D-PSGD takes one gradient of step-size per round: lr, local-steps and the
    compressors' settings given to it are named in a warning and left out of the log and
    the summary; on an image task, the least-squares keys (l2, scale-features) too."""
    given = {"algorithm": "d-psgd", "task": "digits", "topology": "ring", "lr": 0.5}
    cfg = RunConfig.from_run_config({**given, "levels": 4})
    with caplog.at_level("INFO", logger="flwr"):
        strategy = RelayStrategy.from_config(cfg)
        strategy.summary()
    assert "run config: levels, lr: not read by d-psgd on task 'digits'; ignored" in caplog.text
    shown = caplog.text.split("run config:")[1]
    for key in ("lr=", "local-steps=", "levels=", "compressor=", "l2="):
        assert key not in shown, key
    assert "step-size=" in shown and "loss-reduction=" in shown
    gadmm = RelayStrategy.from_config(RunConfig.of(algorithm="q-sgadmm", task="digits"))
    assert {"scale-features", "whiten-features", "l2"} <= gadmm.unused
    assert "lr" not in gadmm.unused and "bits" not in gadmm.unused


def test_a_pyprojects_declared_defaults_are_not_warned_about() -> None:
    """Flower passes every key the pyproject declares: only an unread key set to another
    value than its default gets the warning, and replace() keeps what was given."""
    root = tomllib.loads((EXAMPLE.parents[1] / "pyproject.toml").read_text())
    declared = root["tool"]["flwr"]["app"]["config"]
    for algorithm in ("q-gadmm", "gadmm", "d-psgd", "choco-sgd", "malcom-psgd"):
        topology = "chain" if "gadmm" in algorithm else "ring"
        cfg = RunConfig.from_run_config({**declared, "algorithm": algorithm, "topology": topology})
        assert cfg.unread_given() == [], algorithm
        assert cfg.replace(num_iterations=10).unread_given() == [], algorithm
    cfg = RunConfig.from_run_config({**declared, "algorithm": "d-psgd", "topology": "ring"})
    assert cfg.replace(lr=0.5).unread_given() == [
        "lr: not read by d-psgd on task 'linreg'; ignored"
    ]
    # a project's own snake_case data key with task "custom": left alone, no hint
    mine = {"task": "custom", "algorithm": "q-sgadmm", "batch_size": 64}
    assert RunConfig.from_run_config(mine, strict=False).near_misses() == []


def test_example_runs_flowers_own_fedavg_on_the_same_clientapp(example, caplog) -> None:
    """``algorithm = "fedavg"``: the example's ServerApp runs flwr's FedAvg, which sends
    the CNN's state_dict; the ClientApp trains it with the run config's settings."""
    from flwr.app import Context, RecordDict
    from torch_example.server_app import main

    run_config = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    run_config = {**run_config, "algorithm": "fedavg", "num-workers": 3, "num-server-rounds": 3}
    run_config.update({"lr": 0.01, "local-steps": 10})
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with caplog.at_level("INFO", logger="flwr"):
        main(FakeGrid(example, 3, run_config), context)
    assert "error" not in caplog.text.lower()
    final = float(caplog.text.split("FedAvg: final mean-model accuracy ")[1].split()[0])
    assert final > 0.5  # ten digit classes: chance is 0.1


def test_task_custom_gives_no_hint_toward_our_data_keys_which_are_the_projects() -> None:
    # `flwr run` of a project with its own `partitioner` key and task "custom" warned
    # "'partitioner' is not a setting: did you mean 'partition'?": with task "custom"
    # `partition` is the project's key too (not read by us), so the hint was wrong
    given = {"task": "custom", "algorithm": "q-sgadmm", "partitioner": "dirichlet"}
    mine = {**given, "batch-sizes": 16, "models": "mlp", "rhoo": 1.0}
    cfg = RunConfig.from_run_config(mine, strict=False)
    assert cfg.near_misses() == ["'rhoo' is not a setting: did you mean 'rho'?"]
    # on our tasks those keys are ours, and the hint stands
    ours = RunConfig.from_run_config({**given, "task": "digits"}, strict=False)
    assert ours.near_misses() == ["'partitioner' is not a setting: did you mean 'partition'?"]
