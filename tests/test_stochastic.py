"""SGADMM / Q-SGADMM: the torch solver on user models, image data, Flower equivalence."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.experiment.client_app import app as experiment_app
from clients.experiment.server_app import run_fedavg
from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.config import RunConfig, SolverSettings
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.flower.client import (
    STATE_ARRAYS,
    STATE_SCALARS,
    make_client_app,
    partition_of,
)
from flower_qgadmm.flower.fedavg import model_bytes
from flower_qgadmm.flower.torch_app import torch_client_app
from flower_qgadmm.image_task import (
    MODELS,
    image_solver,
    load_cifar10_data,
    load_mnist_data,
    load_task_data,
    mean_model_evaluator,
    partition_indices,
)
from flower_qgadmm.reference import build_workers, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.torch_solver import TorchSolver, seeded_model

SGD = GadmmSettings(rho=1.0, bits=4, dual_step=0.01)
LOCAL = SolverSettings(local_steps=3)


class Transposed(nn.Module):
    """A model whose weight parameter is non-contiguous (a transposed view's storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 6).t())  # (6, 3), non-contiguous
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return x @ self.weight + self.bias


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def toy_data(worker: int, n: int = 40, features: int = 6):
    g = torch.Generator().manual_seed(100 + worker)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def loaders(worker: int):
    return DataLoader(toy_data(worker), batch_size=8, shuffle=True), DataLoader(
        toy_data(99), batch_size=64
    )


def toy_solver(model_fn, worker: int, cfg: SolverSettings = LOCAL, seed: int = 0) -> TorchSolver:
    train, test = loaders(worker)
    return TorchSolver(
        seeded_model(model_fn, seed),
        train,
        nn.CrossEntropyLoss(),
        test,
        cfg.optimizer,
        cfg.lr,
        cfg.local_steps,
        name=f"worker {worker}",
    )


def test_flat_vector_roundtrip_with_non_contiguous_parameters() -> None:
    solver = toy_solver(Transposed, 0)
    assert not solver.model.weight.is_contiguous()
    theta = np.arange(solver.dim, dtype=np.float64) / 10
    solver._set(theta)
    np.testing.assert_allclose(solver._get(), theta, rtol=1e-6)
    assert solver.dim == 6 * 3 + 3


@pytest.mark.parametrize(
    ("model_fn", "algorithm"),
    [
        (Transposed, "q-sgadmm"),
        (bn_model, "q-sgadmm"),
        (Transposed, "sgadmm"),
        (Transposed, "d-psgd"),
        (bn_model, "d-psgd"),
    ],
)
def test_user_models_through_flower_equal_reference(model_fn, algorithm: str) -> None:
    # Prepare: a user's model and loaders through the drop-in API, 3 workers on a chain
    def train_fn(context):
        return loaders(partition_of(context)[0])[0]

    def test_fn(context):
        return loaders(partition_of(context)[0])[1]

    app = torch_client_app(model_fn, train_fn, test_fn)
    grid = FakeGrid(app, 3, {})
    settings = SGD if algorithm != "d-psgd" else None
    strategy = RelayStrategy(algorithm, 3, settings, LOCAL, evaluate_every=1)
    # Execute
    strategy.start(grid, num_rounds=4, timeout=5.0)
    solvers = [toy_solver(model_fn, w) for w in range(3)]
    expected = run_reference(algorithm, solvers, 4, settings)
    # Assert: identical trajectory (models, losses, accuracies, bits)
    for got, want in zip(strategy.history, expected.history, strict=True):
        assert {k: got[k] for k in want} == want
    if model_fn is bn_model:  # BatchNorm statistics are per worker and persisted
        ctx = next(iter(grid.contexts.values()))
        assert any(k.startswith("solver.") for k in ctx.state[STATE_ARRAYS].keys())


def plain_fedavg(solvers, rounds: int, seed: int, evaluate) -> list[tuple[float, dict]]:
    """Textbook FedAvg, written here: every worker takes its local steps from the global
    model; the server averages the float32 models weighted by sample counts."""
    theta = solvers[0].initial()
    sizes = np.array([len(s.train_loader.dataset) for s in solvers], dtype=np.float64)
    out = []
    for k in range(1, rounds + 1):
        zeros = np.zeros_like(theta)
        local = [
            s.solve(zeros, 0.0, theta, (seed, w, k)).astype(np.float32)
            for w, s in enumerate(solvers)
        ]
        losses = [s.objective(m.astype(np.float64)) for s, m in zip(solvers, local, strict=True)]
        theta = (np.tensordot(sizes, np.stack(local), axes=1) / sizes.sum()).astype(np.float64)
        out.append((float(np.dot(sizes, losses) / sizes.sum()), evaluate(theta)))
    return out


def test_digits_experiment_flower_equals_reference_and_fedavg_too(tmp_path) -> None:
    cfg = RunConfig.of(
        task="digits",
        algorithm="q-sgadmm",
        num_workers=3,
        num_iterations=2,
        rho=1.0,
        dual_step=0.01,
        bits=4,
        local_steps=2,
    )
    rc = cfg.to_run_config()
    data = load_task_data(cfg)
    evaluate = mean_model_evaluator(cfg, data)
    strategy = RelayStrategy.from_config(cfg, evaluate=evaluate, evaluate_every=1)
    strategy.start(FakeGrid(experiment_app, 3, rc), num_rounds=2, timeout=5.0)
    solvers = [image_solver(cfg, w, data) for w in range(3)]
    ref = run_reference(cfg.algorithm, solvers, 2, cfg.algo, seed=cfg.seed, evaluate=evaluate)
    for got, want in zip(strategy.history, ref.history, strict=True):
        assert {k: got[k] for k in want} == want
        assert 0 <= got["accuracy"] <= 1 and "mean_model_accuracy" in got
    # FedAvg: Flower's strategy and a plain loop agree too
    fcfg = cfg.replace(algorithm="fedavg", results_dir=str(tmp_path))
    flower_rows = run_fedavg(FakeGrid(experiment_app, 3, fcfg.to_run_config()), fcfg)
    (run,) = [p for p in tmp_path.iterdir() if p.name.endswith("flower-fedavg")]
    assert (run / "model.pt").exists() and (run / "summary.md").exists()  # the final model
    plain = plain_fedavg([image_solver(fcfg, w, data) for w in range(3)], 2, 0, evaluate)
    for k, (got, (loss, metrics)) in enumerate(zip(flower_rows, plain, strict=True), start=1):
        assert got["train_loss"] == pytest.approx(loss, rel=1e-6)
        for key, value in metrics.items():
            assert got[key] == pytest.approx(value, rel=1e-6)
        assert got["bits"] == k * 2 * 3 * 8 * model_bytes(solvers[0].dim)


def test_parameter_count_mismatch_is_named() -> None:
    # Reference runner: the dimensions are listed by worker
    solvers = [toy_solver(Transposed, 0), toy_solver(bn_model, 1)]
    with pytest.raises(ValueError, match=r"model size \(worker 0: 21, worker 1: \d+\)"):
        build_workers("q-sgadmm", solvers, settings=SGD)
    # Flower: the relay compares the sizes reported at set-up, before any step

    def solver_fn(context, cfg, seed):
        pid = partition_of(context)[0]
        return toy_solver(Transposed if pid == 0 else bn_model, pid, cfg, seed)

    grid = FakeGrid(make_client_app(solver_fn), 2, {})
    with pytest.raises(ValueError, match=r"model size \(worker 0: 21, worker 1: \d+\)"):
        RelayStrategy("q-sgadmm", 2, SGD, LOCAL).start(grid, num_rounds=1, timeout=5.0)


def test_nan_loss_names_worker_and_keeps_state() -> None:
    # Prepare: the loss turns NaN from iteration 3 on
    bad = {"on": False}

    def loss_fn(out, target):
        loss = nn.functional.cross_entropy(out, target)
        return loss * float("nan") if bad["on"] else loss

    def train_fn(context):
        return loaders(partition_of(context)[0])[0]

    def switch(pid, msg):
        if "round" in msg.content:
            bad["on"] = int(msg.content["round"]["iteration"]) >= 3
        return False

    grid = FakeGrid(torch_client_app(Transposed, train_fn, loss_fn=loss_fn), 3, {}, fail=switch)
    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL)
    # Execute / Assert: a clear error naming the worker, fatal even with on_failure="repair"
    # (as in the reference runner); states stay at iteration 2
    with pytest.raises(FloatingPointError, match=r"worker 0: loss is nan at iteration 3"):
        strategy.start(grid, num_rounds=5, timeout=5.0)
    assert len(strategy.history) == 2
    for ctx in grid.contexts.values():
        assert int(ctx.state[STATE_SCALARS]["iteration"]) == 2


def test_empty_partition_is_named() -> None:
    labels = np.repeat(np.arange(2), 5)
    with pytest.raises(ValueError, match=r"worker \d+ got an empty partition"):
        partition_indices(labels, 8, "dirichlet", alpha=0.01, seed=0)
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0).long()), batch_size=4)
    with pytest.raises(ValueError, match="worker 5: empty partition"):
        TorchSolver(Transposed(), empty, nn.CrossEntropyLoss(), name="worker 5")


def test_dirichlet_partition_is_skewed_and_complete() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=2000)
    parts = partition_indices(labels, 10, "dirichlet", alpha=0.3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    shares = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
    assert max(s.max() for s in shares) > 0.3  # some worker is dominated by a few labels
    iid = partition_indices(labels, 10, "iid", seed=1)
    assert {len(p) for p in iid} == {200}


def _write_idx(path, data: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in data.shape)
    path.write_bytes(header + data.astype(np.uint8).tobytes())


def test_tiny_mnist_files_read_by_torchvision_loader(tmp_path) -> None:
    # Prepare: MNIST-format idx files, as torchvision expects them under MNIST/raw
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    # Execute
    data = load_mnist_data(str(tmp_path))
    # Assert
    assert data.x_train.shape == (12, 784) and data.x_test.shape == (5, 784)
    assert data.x_train.max() <= 1.0 and data.y_train.tolist() == [i % 10 for i in range(12)]
    with pytest.raises(FileNotFoundError, match="MNIST not found"):
        load_mnist_data(str(tmp_path / "nowhere"))


def test_corrupt_or_mismatched_mnist_files_are_named(tmp_path) -> None:
    # Prepare: good files, then one damaged at a time
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(images: int = 12, labels: int = 12) -> None:
        for prefix, n, m in (("train", images, labels), ("t10k", 5, 5)):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(m) % 10, 2049)

    images = raw / "train-images-idx3-ubyte"
    cases = [
        (
            lambda: images.write_bytes(b"\x00\x00\x08\x09" + images.read_bytes()[4:]),
            "cannot be read",
        ),
        (lambda: images.write_bytes(images.read_bytes()[:100]), "cannot be read"),
        (lambda: images.write_bytes(rng.bytes(64)), "cannot be read"),
        (lambda: write(images=12, labels=10), "12 images but 10 labels"),
    ]
    for damage, message in cases:
        write()
        damage()
        # Execute / Assert: a ValueError naming the data set, the folder and the split
        with pytest.raises(ValueError, match=f"MNIST under .*: .*training.*{message}"):
            load_mnist_data(str(tmp_path))


def test_cifar10_without_files_is_explained(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found under"):
        load_cifar10_data(str(tmp_path))
    with pytest.raises(ValueError, match="needs data-dir"):
        load_cifar10_data("")
    out = MODELS["cifar10"]()(torch.zeros(2, 3 * 32 * 32))
    assert out.shape == (2, 10)


def test_softmax_model_option_is_a_linear_layer() -> None:
    cfg = RunConfig.of(task="digits", algorithm="malcom-psgd", model="softmax", num_workers=3)
    solver = image_solver(cfg, 0, load_task_data(cfg))
    assert solver.dim == 64 * 10 + 10  # d = 650, the Malcom measurements' model
    with pytest.raises(ValueError, match="model must be one of"):
        RunConfig.of(model="resnet")


def test_mini_batches_and_dither_come_from_independent_streams(monkeypatch) -> None:
    # Prepare: the torch seed each step iterates its loader with, and the first draw of
    # the worker's own stream (its quantizer's dither u_0) for the same iteration
    import flower_qgadmm.torch_solver as ts
    from flower_qgadmm.streams import KeyedStreams

    used = []
    original = ts._fixed_seed

    def record(loader, seed):
        used.append(seed)
        return original(loader, seed)

    monkeypatch.setattr(ts, "_fixed_seed", record)
    solver = toy_solver(bn_model, 3)
    theta = solver.initial()
    streams = KeyedStreams((0, 3))
    # Execute
    for k in (1, 2, 3):
        solver.solve(np.zeros(solver.dim), 1.0, theta, (0, 3, k))
        solver.gradient(theta, (0, 3, k))
    # Assert: neither the batch seed nor the dither derives from the other's 64-bit word
    dither_words = {int(streams.at(k).integers(2**63 - 1)) for k in (1, 2, 3)}
    assert len(used) == 6 and not dither_words & set(used)
    assert used[0::2] == used[1::2]  # solve and gradient of one key: the same batches
    assert used[0] == ts.batch_seed((0, 3, 1)) != ts.torch_seed((0, 3, 1))


@pytest.mark.parametrize(
    "model_fn, data, cause",
    [
        (lambda: nn.Linear(6, 1), None, "IndexError: Target 2 is out of bounds"),
        (bn_model, torch.float64, "RuntimeError: mat1 and mat2 must have the same dtype"),
    ],
)
def test_model_loss_or_data_mismatch_is_refused_at_set_up(model_fn, data, cause) -> None:
    # Prepare: a model with too few outputs for the labels, or float64 batches for a
    # float32 model; three workers that all have the problem
    def solver(worker: int) -> TorchSolver:
        train = toy_data(worker)
        if data is not None:
            train = TensorDataset(train.tensors[0].to(data), train.tensors[1])
        loader = DataLoader(train, batch_size=8, shuffle=True)
        return TorchSolver(
            seeded_model(model_fn, 0), loader, nn.CrossEntropyLoss(), name=f"worker {worker}"
        )

    settings = GadmmSettings(rho=1.0, dual_step=0.01, bits=4)
    # Execute / Assert: refused by the first worker's set-up report, with torch's reason
    with pytest.raises(ValueError, match="^worker 0: .* do not fit together") as refused:
        run_reference("q-sgadmm", [solver(w) for w in range(3)], 2, settings)
    assert cause in str(refused.value)


def test_custom_task_is_for_your_own_client_app() -> None:
    cfg = RunConfig.of(task="custom", algorithm="q-sgadmm", num_workers=3)
    with pytest.raises(ValueError, match="task 'custom' means your own ClientApp holds the data"):
        load_task_data(cfg)
    with pytest.raises(ValueError, match="does not apply to task 'custom'"):
        RunConfig.of(task="custom", algorithm="q-gadmm")  # exact solves need linreg


def test_a_fedavg_run_stopped_before_round_1_says_why(tmp_path, caplog) -> None:
    """Flower's FedAvg with every SuperNode silent stops in round 1: its summary line (in
    the log and summary.md) says why (before: 'no rounds', and nothing of the cause)."""
    import logging

    cfg = RunConfig.of(
        task="digits", algorithm="fedavg", num_workers=3, num_iterations=2, results_dir=tmp_path
    )
    silent = FakeGrid(experiment_app, 3, cfg.to_run_config(), fail=lambda pid, msg: True)
    with caplog.at_level(logging.WARNING, logger="flwr"), pytest.raises(RuntimeError):
        run_fedavg(silent, cfg)
    line = (
        "flower-fedavg: no round ran. Run stopped after 0 of 2 rounds. Why: RuntimeError: "
        "FedAvg round 1: no worker trained"
    )
    assert line in caplog.text
    (run,) = tmp_path.iterdir()
    assert line in (run / "summary.md").read_text()
