"""What crosses the wire is what we claim; the strategy behaves like a Flower strategy;
results land in the user's project.

Everything here runs over the in-process test Grid: real Flower Messages, bytes counted
as Flower counts them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from flower_qgadmm import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.flower.torch_app import torch_solver_fn
from flower_qgadmm.history import read_history
from flower_qgadmm.reference import least_squares_solvers, run_from_config, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.torch_solver import load_flat

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "clients" / "torch_example"


@pytest.fixture(scope="module")
def example():
    """The example user project (clients/torch_example): its app, model and loaders."""
    sys.path.insert(0, str(EXAMPLE))
    from torch_example import task
    from torch_example.client_app import app

    yield app, task
    sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def linreg_app():
    sys.path.insert(0, str(ROOT))
    from clients.experiment.client_app import app

    return app


def example_config(workers: int = 3, **kw) -> RunConfig:
    return RunConfig.of(
        task="digits",
        algorithm="q-sgadmm",
        bits=4,
        rho=1.0,
        dual_step=0.01,
        num_workers=workers,
        local_steps=2,
        **kw,
    )


class RecordingGrid(FakeGrid):
    """FakeGrid that keeps every reply."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies = []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies.extend(replies)
        return replies

    def partition(self, reply) -> int:
        """The partition id of the node that sent ``reply``."""
        return int(self.contexts[reply.metadata.src_node_id].node_config["partition-id"])


# ---------------------------------------------------------------------- lean messages
def test_training_replies_carry_a_payload_and_scalars_only(example) -> None:
    app, _ = example
    cfg = example_config()
    grid = RecordingGrid(app, 3, cfg.to_run_config())
    strategy = RelayStrategy.from_config(cfg, results_dir=None)
    strategy.start(grid, num_rounds=4, timeout=10.0)
    train = [r for r in grid.replies if r.metadata.message_type == "train.step"]
    assert len(train) == 4 * 3
    carried = []
    for reply in train:
        assert set(reply.content) <= {"metrics", "payload", "model"}
        assert list(reply.content["payload"]) == ["payload"]  # the encoded bytes only
        assert {"objective", "disagreement", "disagreement_max"} <= set(reply.content["metrics"])
        if "model" in reply.content:
            carried.append(reply)
    # models crossed only with each worker's last step of the last (evaluation) round,
    # without an exchange of their own, and in the finish
    assert len(carried) == 3
    assert {int(r.metadata.group_id) for r in carried} == {4}
    types = [r.metadata.message_type for r in grid.replies]
    assert "query.model" not in types and types.count("query.finish") == 3
    # what crossed Flower: the carried models count as evaluation traffic, not training
    rows = strategy.history
    models = sum(int(r.content["model"].count_bytes()) for r in carried)
    assert [r["flower_eval_bytes_up"] for r in rows] == [0, 0, 0, models]
    train_up = sum(int(r.content[key].count_bytes()) for r in train for key in r.content)
    assert rows[-1]["flower_train_bytes_up"] == train_up - models


def load_traffic_script():
    spec = importlib.util.spec_from_file_location("traffic", ROOT / "simulations" / "traffic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("project", ["torch_example", "digits"])
def test_total_traffic_is_under_a_quarter_of_fedavgs(project) -> None:
    # 20 rounds, models pulled every 10 (and at the end): the script's 100-round
    # figures are in the docs; the bound already holds over 20 rounds
    traffic = load_traffic_script()
    r = traffic.compare(project, workers=5, rounds=20, every=10)
    assert r["ratio"] <= 0.25, r
    assert r["round_overhead"] <= 1.15, r  # a round without evaluation: payloads + scalars
    assert r["eval"] > 0 and r["control"] > 0


def test_linreg_gap_comes_from_scalars_and_models_are_pulled_every_k(linreg_app) -> None:
    cfg = RunConfig.of(num_workers=4, num_iterations=12, samples_per_worker=20, dim=5)
    grid = FakeGrid(linreg_app, 4, cfg.to_run_config())
    strategy = RelayStrategy.from_config(cfg, evaluate_every=5, results_dir=None)
    strategy.start(grid, num_rounds=12, timeout=5.0)
    want = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)), evaluate_every=1)
    for got, full in zip(strategy.history, want.history, strict=True):
        assert got["objective_gap"] == full["objective_gap"]  # every round, no model needed
        assert ("consensus_error" in got) == (got["iteration"] in (5, 10, 12))
        if "consensus_error" in got:
            assert got["consensus_error"] == full["consensus_error"]
            assert got["optimum_distance"] == full["optimum_distance"]
        assert got["edge_disagreement"] >= 0 and got["edge_disagreement_max"] >= 0


def test_a_worker_that_does_not_send_its_model_with_its_step_is_pulled(linreg_app) -> None:
    # e.g. a ClientApp of an older version, which ignores reply-model: the relay pulls
    # the models that did not come (query.model) and the history is the same
    from flwr.clientapp import ClientApp

    from clients.experiment.task import solver_fn
    from flower_qgadmm.flower import make_client_app
    from flower_qgadmm.flower.client import partition_of

    def strip(msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train.step" and partition_of(context)[0] in (1, 2):
            reply.content.pop("model", None)
        return reply

    cfg = RunConfig.of(num_workers=4, num_iterations=12, samples_per_worker=20, dim=5)
    rc = cfg.to_run_config()
    plain = RelayStrategy.from_config(cfg, evaluate_every=5, results_dir=None)
    plain.start(FakeGrid(linreg_app, 4, rc), num_rounds=12, timeout=5.0)
    grid = RecordingGrid(make_client_app(solver_fn, ClientApp(mods=[strip])), 4, rc)
    strategy = RelayStrategy.from_config(cfg, evaluate_every=5, results_dir=None)
    strategy.start(grid, num_rounds=12, timeout=5.0)
    pulls = [r for r in grid.replies if r.metadata.message_type == "query.model"]
    assert sorted(grid.partition(r) for r in pulls) == [1, 1, 1, 2, 2, 2]  # rounds 5, 10, 12
    drop = ("flower_bytes_down", "flower_bytes_up", "flower_eval_bytes_down")
    drop += ("flower_eval_bytes_up", "flower_control_bytes_down", "flower_control_bytes_up")
    drop += ("flower_train_bytes_down", "flower_train_bytes_up")

    def numbers(rows):
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    assert numbers(strategy.history) == numbers(plain.history)
    got, want = strategy.last_models(), plain.last_models()
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for n in want:
        np.testing.assert_array_equal(got[n], want[n])


# ---------------------------------------------------------------------- start() arguments
def net_accuracy(task, state_dict) -> float:
    model = task.Net()
    model.load_state_dict(state_dict)
    model.eval()
    x, y = task._test().tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_a_fedavg_style_evaluate_fn_works_unchanged(example) -> None:
    app, task = example

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # as written for Flower's FedAvg with this model
        return MetricRecord(
            {"mean-model-accuracy": net_accuracy(task, arrays.to_torch_state_dict())}
        )

    cfg = example_config()
    initial = ArrayRecord(task.Net().state_dict())
    strategy = RelayStrategy.from_config(cfg, evaluate_every=2, results_dir=None)
    result = strategy.start(
        FakeGrid(app, 3, cfg.to_run_config()),
        initial_arrays=initial,
        num_rounds=5,
        timeout=10.0,
        evaluate_fn=evaluate_fn,
    )
    # called at round 0 (initial arrays), every 2 rounds and the last; names as written
    assert sorted(result.evaluate_metrics_serverapp) == [0, 2, 4, 5]
    assert "mean-model-accuracy" in result.evaluate_metrics_serverapp[5]
    assert "consensus_error" in result.evaluate_metrics_serverapp[4]
    rows = {r["iteration"]: r for r in strategy.history}
    assert "mean-model-accuracy" in rows[4] and "mean-model-accuracy" not in rows[3]
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3, 4, 5]
    # the final arrays are in the model's own layout and load into it
    state = result.arrays.to_torch_state_dict()
    assert list(state) == list(task.Net().state_dict())
    assert 0.0 <= net_accuracy(task, state) <= 1.0


def test_initial_arrays_start_every_worker_from_the_users_model(example) -> None:
    app, task = example
    cfg = example_config()
    torch.manual_seed(123)
    start = {k: v.numpy() for k, v in task.Net().state_dict().items()}
    strategy = RelayStrategy.from_config(cfg, evaluate_every=1, results_dir=None)
    strategy.start(
        FakeGrid(app, 3, cfg.to_run_config()),
        initial_arrays=ArrayRecord({k: torch.from_numpy(v) for k, v in start.items()}),
        num_rounds=3,
        timeout=10.0,
    )
    grid = FakeGrid(app, 3, {})
    contexts = sorted(grid.contexts.values(), key=lambda c: c.node_config["partition-id"])
    build = torch_solver_fn(task.Net, task.train_loader, task.test_loader)
    solvers = [build(c, cfg.solver, cfg.seed) for c in contexts]
    want = run_reference("q-sgadmm", solvers, 3, cfg.algo, seed=cfg.seed, initial=start)
    for got, w in zip(strategy.history, want.history, strict=True):
        assert {k: got[k] for k in w} == w
    default = run_reference(
        "q-sgadmm", [build(c, cfg.solver, cfg.seed) for c in contexts], 3, cfg.algo
    )
    assert want.history[0]["objective"] != default.history[0]["objective"]


class BatchNormNet(torch.nn.Module):
    """A model with a 0-d buffer (BatchNorm's num_batches_tracked)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_a_batchnorm_model_keeps_its_layout_from_initial_arrays_to_the_result() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from flower_qgadmm.flower import torch_client_app

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))

    def loader(context):
        return DataLoader(data, batch_size=16)

    cfg = RunConfig.of(task="custom", algorithm="q-sgadmm", bits=4, num_workers=2)
    strategy = RelayStrategy.from_config(cfg, results_dir=None)
    initial = BatchNormNet().state_dict()
    result = strategy.start(
        FakeGrid(torch_client_app(BatchNormNet, loader, loader), 2, cfg.to_run_config()),
        initial_arrays=ArrayRecord(initial),  # as README shows it
        num_rounds=2,
        timeout=10.0,
    )
    final = result.arrays.to_torch_state_dict()
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in initial.items()}
    BatchNormNet().load_state_dict(final)


def test_torch_workers_join_an_existing_client_app_with_a_model_chosen_by_context() -> None:
    from flwr.clientapp import ClientApp
    from torch.utils.data import DataLoader, TensorDataset

    from flower_qgadmm.flower import torch_client_app, torch_solver_fn  # both exported

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    chosen = []

    def model_fn(context):  # the project's model, picked from its run config
        chosen.append(context.run_config.get("my-model", "bn"))
        return BatchNormNet()

    app = ClientApp()

    @app.train()
    def own_train(msg, context):  # the project's own FedAvg handler stays
        raise AssertionError("not called by the relay")

    same = torch_client_app(
        model_fn, lambda c: DataLoader(data, batch_size=16), app=app, fedavg=False
    )
    assert same is app
    assert callable(torch_solver_fn(model_fn, lambda c: DataLoader(data, batch_size=16)))
    cfg = RunConfig.of(task="custom", algorithm="q-sgadmm", bits=4, num_workers=2)
    strategy = RelayStrategy.from_config(cfg, results_dir=None)
    run_config = {**cfg.to_run_config(), "my-model": "bn"}
    strategy.start(FakeGrid(app, 2, run_config), num_rounds=2, timeout=10.0)
    assert len(strategy.history) == 2 and chosen and set(chosen) == {"bn"}


def test_forgetting_task_custom_is_named(caplog) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from flower_qgadmm.flower import torch_client_app

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    app = torch_client_app(BatchNormNet, lambda c: DataLoader(data, batch_size=16))
    cfg = RunConfig.of(algorithm="d-psgd", num_workers=2)  # task: the default, linreg
    with caplog.at_level("WARNING", logger="flwr"):
        strategy = RelayStrategy.from_config(cfg, results_dir=None)
        strategy.start(FakeGrid(app, 2, cfg.to_run_config()), num_rounds=1, timeout=10.0)
    assert "task is 'linreg' but the workers train torch models: set task = 'custom'" in (
        caplog.text
    )
    with pytest.raises(ValueError, match="for your own data and model in a ClientApp, task"):
        RunConfig.of(algorithm="q-sgadmm")


def test_initial_arrays_of_another_layout_are_refused(example) -> None:
    app, _ = example
    cfg = example_config()
    strategy = RelayStrategy.from_config(cfg, results_dir=None)
    with pytest.raises(Exception, match="initial model has keys"):
        strategy.start(
            FakeGrid(app, 3, cfg.to_run_config()),
            initial_arrays=ArrayRecord({"theta": Array(np.zeros(1370, dtype=np.float32))}),
            num_rounds=1,
            timeout=10.0,
        )


def test_train_config_overrides_settings_and_unknown_keys_are_refused(example) -> None:
    app, _ = example
    cfg = example_config()
    via_config = RelayStrategy.from_config(cfg, results_dir=None)
    via_config.start(
        FakeGrid(app, 3, cfg.to_run_config()),
        num_rounds=2,
        timeout=10.0,
        train_config=ConfigRecord({"lr": 0.01, "bits": 3}),
    )
    direct = RelayStrategy.from_config(cfg.replace(lr=0.01, bits=3), results_dir=None)
    direct.start(FakeGrid(app, 3, cfg.to_run_config()), num_rounds=2, timeout=10.0)
    assert via_config.history == direct.history
    assert (via_config.solver.lr, via_config.settings.bits) == (0.01, 3)
    with pytest.raises(ValueError, match=r"train_config key\(s\) \['my-key'\]"):
        RelayStrategy.from_config(cfg, results_dir=None).start(
            FakeGrid(app, 3, {}), num_rounds=1, train_config=ConfigRecord({"my-key": 1})
        )
    with pytest.raises(ValueError, match="evaluate_config .* cannot be honoured"):
        RelayStrategy.from_config(cfg, results_dir=None).start(
            FakeGrid(app, 3, {}), num_rounds=1, evaluate_config=ConfigRecord({"x": 1})
        )
    with pytest.raises(ValueError, match="num_rounds must be >= 1"):
        RelayStrategy.from_config(cfg, results_dir=None).start(FakeGrid(app, 3, {}), num_rounds=0)


# ---------------------------------------------------------------------- results_dir
def test_results_dir_gets_history_plot_summary_and_the_final_model(example, tmp_path) -> None:
    app, task = example
    cfg = example_config()
    strategy = RelayStrategy.from_config(cfg, results_dir=tmp_path / "out")
    result = strategy.start(FakeGrid(app, 3, cfg.to_run_config()), num_rounds=3, timeout=10.0)
    (run,) = (tmp_path / "out").iterdir()
    assert run.name.endswith("-flower-q-sgadmm")
    assert read_history(run / "history.jsonl") == strategy.history
    assert (run / "history.png").stat().st_size > 0
    summary = (run / "summary.md").read_text()
    assert "ratio to FedAvg" in summary and "model.pt" in summary
    model = task.Net()
    model.load_state_dict(torch.load(run / "model.pt"))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), result.arrays[key].numpy())
    workers = np.load(run / "models.npz")
    assert sorted(workers.files) == ["worker-0", "worker-1", "worker-2"]
    # the documented helper puts a flat model vector back into a module
    flat = workers["worker-1"]
    net = load_flat(task.Net(), flat)
    np.testing.assert_allclose(
        torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double().numpy(),
        flat.astype(np.float32),
    )


def test_linear_regression_results_have_an_npz_model(linreg_app, tmp_path) -> None:
    cfg = RunConfig.of(num_workers=3, num_iterations=3, samples_per_worker=10, dim=4)
    strategy = RelayStrategy.from_config(cfg, results_dir=tmp_path)
    result = strategy.start(FakeGrid(linreg_app, 3, cfg.to_run_config()), num_rounds=3)
    (run,) = tmp_path.iterdir()
    saved = np.load(run / "model.npz")
    np.testing.assert_array_equal(saved["theta"], result.arrays["theta"].numpy())


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from clients.experiment.client_app import app
    from flower_qgadmm import RunConfig
    from flower_qgadmm.flower import RelayStrategy
    from flower_qgadmm.testing import FakeGrid

    cfg = RunConfig.of(num_workers=3, num_iterations=500, samples_per_worker=10, dim=4)

    def on_row(row):
        print(row["iteration"], flush=True)
        time.sleep(0.05)

    strategy = RelayStrategy.from_config(cfg, results_dir={out!r}, on_row=on_row)
    strategy.start(FakeGrid(app, 3, cfg.to_run_config()), num_rounds=500)
    """
)


def test_sigterm_after_n_rounds_leaves_n_history_rows_and_a_checkpoint(
    linreg_app, tmp_path
) -> None:
    script = SIGTERM_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "out"))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    done = []
    try:
        while len(done) < 12:
            line = proc.stdout.readline()
            assert line, "the run ended before 12 rounds"
            done.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    done += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGTERM
    (run,) = (tmp_path / "out").iterdir()
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    # every completed round is on disk (the row is written before on_row is called)
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) >= done[-1] >= 12
    # ... and a checkpoint (every 10 rounds by default) to resume from, in a new process
    cfg = RunConfig.of(num_workers=3, num_iterations=500, samples_per_worker=10, dim=4)
    again = RelayStrategy.from_config(cfg, resume=run)
    again.start(FakeGrid(linreg_app, 3, cfg.to_run_config()), num_rounds=25)
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    want = run_from_config(
        cfg.replace(num_iterations=25), least_squares_solvers(experiment_datasets(cfg))
    )
    assert [r["objective_gap"] for r in rows] == [r["objective_gap"] for r in want.history]


def test_history_files_are_strict_json(tmp_path) -> None:
    from flower_qgadmm.history import RunRecorder

    recorder = RunRecorder(tmp_path, "x")
    recorder.add({"iteration": 1, "objective": float("nan"), "bits": 8})
    text = (recorder.path / "history.jsonl").read_text()
    assert json.loads(text) == {"iteration": 1, "objective": None, "bits": 8}


def test_the_traffic_script_measures_a_round_without_evaluation_for_any_settings() -> None:
    traffic = load_traffic_script()
    assert [traffic.probe_round(r, e) for r, e in ((100, 10), (100, 2), (6, 5), (3, 10))] == [
        2,
        3,
        2,
        2,
    ]
    for rounds, every in ((100, 1), (2, 10)):
        with pytest.raises(ValueError, match="no round without evaluation"):
            traffic.probe_round(rounds, every)
