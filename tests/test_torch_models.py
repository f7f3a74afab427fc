"""The torch solver on the models the README promises: regression outputs, float64,
bfloat16, IterableDataset loaders, per-worker samplers, frozen models, eval-only NaN,
and the ``device`` setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.config import RunConfig, SolverSettings
from flower_qgadmm.flower import RelayStrategy, torch_app
from flower_qgadmm.flower.client import partition_of
from flower_qgadmm.flower.records import record_state
from flower_qgadmm.flower.torch_app import torch_client_app
from flower_qgadmm.reference import run_reference
from flower_qgadmm.rounds import WorkerFailure
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.torch_solver import (
    TorchSolver,
    _cpu_only,
    resolve_device,
    seeded_model,
    seeded_rng,
)

SGD = GadmmSettings(rho=1.0, bits=4, dual_step=0.01)
LOCAL = SolverSettings(local_steps=2)
KEY = (0, 0, 1)


# ---------------------------------------------------------------------- models and data
class Squeezed(nn.Module):
    """Regression with a 1-D output: Linear(3, 1) then squeeze(-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class WithBuffer(nn.Module):
    """A classifier with a (non-trainable) buffer, for the dtype tests."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor([1.0, 0.5]))

    def forward(self, x):
        return self.linear(x) * self.scale


class NanInEval(nn.Module):
    """Finite while training, NaN in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        out = self.linear(x)
        return out if self.training else out * float("nan")


def regression(worker: int, n: int = 24, dtype=torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(10 + worker)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x.to(dtype), y.to(dtype))


def classes(worker: int, n: int = 24, dtype=torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(20 + worker)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x.to(dtype), (x[:, 0] > 0).long())


def solver(model_fn, data, loss_fn=None, test=None, **kw) -> TorchSolver:
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=8, shuffle=True)
    return TorchSolver(
        seeded_model(model_fn, 0),
        loader,
        loss_fn if loss_fn is not None else nn.CrossEntropyLoss(),
        test,
        **{"local_steps": 2, **kw},
    )


def flower_run(model_fn, data_fn, loss_fn=None, rounds: int = 2) -> list[dict]:
    """``rounds`` Q-SGADMM rounds of 3 workers through the drop-in API (FakeGrid)."""

    def train_fn(context):
        return DataLoader(data_fn(partition_of(context)[0]), batch_size=8, shuffle=True)

    def test_fn(context):
        return DataLoader(data_fn(99), batch_size=16)

    app = torch_client_app(model_fn, train_fn, test_fn, loss_fn)
    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL, evaluate_every=1)
    strategy.start(FakeGrid(app, 3, {}), num_rounds=rounds, timeout=10.0)
    return strategy.history


# ---------------------------------------------------------------------- 1. regression
def test_regression_with_1d_output_reports_test_loss_not_accuracy() -> None:
    # Prepare
    s = solver(Squeezed, regression(0), nn.MSELoss(), DataLoader(regression(99), batch_size=16))
    theta = s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
    # Execute
    metrics = s.evaluate(theta)
    # Assert: the test MSE, computed here too
    x, y = regression(99).tensors
    with torch.no_grad():
        want = float(nn.functional.mse_loss(s.model(x), y))
    assert set(metrics) == {"test_loss"}
    assert metrics["test_loss"] == pytest.approx(want, rel=1e-6)
    assert np.isfinite(s.objective(theta))


def test_regression_column_output_and_probability_targets_are_not_classification() -> None:
    # (B, 1) outputs: one column, no classes
    column = solver(lambda: nn.Linear(3, 1), TensorDataset(torch.randn(8, 3), torch.randn(8, 1)))
    assert column.evaluate(column.initial()) == {}  # no test loader
    column.test_loader = column.train_loader
    assert set(column.evaluate(column.initial())) == {"test_loss"}
    # (B, C) outputs with class-probability (float) targets: a loss, no accuracy
    soft = TensorDataset(torch.randn(8, 3), torch.softmax(torch.randn(8, 2), dim=1))
    probs = solver(lambda: nn.Linear(3, 2), soft, test=DataLoader(soft, batch_size=4))
    assert set(probs.evaluate(probs.initial())) == {"test_loss"}
    # integer targets and (B, C > 1) outputs: accuracy, as before
    cls = solver(lambda: nn.Linear(3, 2), classes(0), test=DataLoader(classes(1), batch_size=8))
    assert set(cls.evaluate(cls.initial())) == {"accuracy"}


def test_regression_model_through_flower_reports_test_loss() -> None:
    rows = flower_run(Squeezed, regression, nn.MSELoss())
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all("test_loss" in r and "accuracy" not in r for r in rows)
    assert all(np.isfinite(r["test_loss"]) and np.isfinite(r["objective"]) for r in rows)


# ---------------------------------------------------------------------- 2. float64
def test_float64_model_keeps_its_dtype_and_full_precision() -> None:
    # Prepare
    s = solver(lambda: WithBuffer().double(), classes(0, dtype=torch.float64))
    theta = np.arange(s.dim) / 3.0  # not representable in float32
    # Execute / Assert: the flat vector is exact (no float32 cast on the way)
    s._set(theta)
    np.testing.assert_array_equal(s._get(), theta)
    new = s.solve(np.full(s.dim, 0.1), 0.5, theta, KEY)
    assert new.dtype == np.float64 and np.all(np.isfinite(new))
    assert all(p.dtype == torch.float64 for p in s.model.parameters())
    assert s.gradient(new, KEY).dtype == np.float64
    arrays = s.to_arrays(new)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float64)}
    np.testing.assert_array_equal(arrays["linear.bias"], new[-2:])


def test_float64_model_through_flower() -> None:
    def model_fn():
        return Squeezed().double()

    rows = flower_run(model_fn, lambda w: regression(w, dtype=torch.float64), nn.MSELoss())
    assert all(np.isfinite(r["test_loss"]) for r in rows)


# ---------------------------------------------------------------------- 3. bfloat16
def test_bfloat16_parameters_and_buffers_go_through_float32() -> None:
    # Prepare
    s = solver(lambda: WithBuffer().to(torch.bfloat16), classes(0, dtype=torch.bfloat16))
    # Execute
    theta = s.solve(np.zeros(s.dim), 0.5, s.initial(), KEY)
    arrays = s.to_arrays(theta)
    state = s.extra_state()
    # Assert: the flat vector is float64 holding bfloat16 values; numpy arrays float32
    assert theta.dtype == np.float64 and np.all(np.isfinite(theta))
    assert np.array_equal(theta, theta.astype(np.float32).astype(np.float64))
    assert all(p.dtype == torch.bfloat16 for p in s.model.parameters())
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(arrays["linear.bias"], theta[-2:].astype(np.float32))
    assert state["scale"].dtype == np.float32 and state["scale"].tolist() == [1.0, 0.5]
    # the float32 arrays load back exactly
    s.load_extra_state(state)
    s.set_initial(arrays)
    np.testing.assert_array_equal(s.initial(), theta)
    assert np.isfinite(s.objective(theta)) and np.isfinite(s.gradient(theta, KEY)).all()


def test_bfloat16_model_through_flower() -> None:
    rows = flower_run(
        lambda: WithBuffer().to(torch.bfloat16), lambda w: classes(w, dtype=torch.bfloat16)
    )
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


# ---------------------------------------------------------------------- 4. IterableDataset
class Stream(IterableDataset):
    """A stream of (x, y) rows without len()."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self):
        yield from zip(*self.data.tensors, strict=True)


def test_iterable_dataset_needs_no_len() -> None:
    # Prepare
    stream = DataLoader(Stream(classes(0)), batch_size=8)
    s = solver(lambda: nn.Linear(3, 2), stream)
    # Execute
    theta = s.solve(np.zeros(s.dim), 0.5, s.initial(), KEY)
    # Assert: the objective is the mean over the stream, the same on every call
    x, y = classes(0).tensors
    s._set(theta)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(s.model(x), y))
    assert s.objective(theta) == pytest.approx(want, rel=1e-6)
    assert s.objective(theta) == s.objective(theta)


def test_empty_iterable_dataset_fails_at_first_use() -> None:
    empty = DataLoader(Stream(TensorDataset(torch.zeros(0, 3), torch.zeros(0).long())), 4)
    s = TorchSolver(nn.Linear(3, 2), empty, nn.CrossEntropyLoss(), name="worker 4")
    with pytest.raises(ValueError, match=r"worker 4: empty partition \(the training loader"):
        s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
    with pytest.raises(ValueError, match="worker 4: empty partition"):
        s.objective(s.initial())


# ---------------------------------------------------------------------- 5. samplers
def test_subset_sampler_objective_is_over_the_workers_own_samples() -> None:
    # Prepare: a shared dataset, this worker's indices
    shared = classes(0, n=40)
    idx = [3, 17, 5, 30, 22, 8, 11]
    loader = DataLoader(shared, batch_size=4, sampler=SubsetRandomSampler(idx))
    s = solver(lambda: nn.Linear(3, 2), loader)
    theta = s.solve(np.zeros(s.dim), 0.5, s.initial(), KEY)
    # Execute
    got = s.objective(theta)
    # Assert: the mean loss over the worker's 7 samples, not the 40 of the dataset
    x, y = shared.tensors
    s._set(theta)
    with torch.no_grad():
        own = float(nn.functional.cross_entropy(s.model(x[idx]), y[idx]))
        everyone = float(nn.functional.cross_entropy(s.model(x), y))
    assert got == pytest.approx(own, rel=1e-6) and got != pytest.approx(everyone, rel=1e-3)
    assert s.objective(theta) == got


def test_other_samplers_iterate_the_loader_under_a_fixed_seed() -> None:
    # Prepare: a weighted sampler with its own generator, two identical solvers
    def make() -> TorchSolver:
        weights = torch.linspace(0.1, 1.0, 24)
        g = torch.Generator().manual_seed(5)
        sampler = WeightedRandomSampler(weights, 16, replacement=True, generator=g)
        return solver(lambda: nn.Linear(3, 2), DataLoader(classes(0), 4, sampler=sampler))

    a, b = make(), make()
    # Execute: objectives on one solver only
    first = a.objective(a.initial())
    again = a.objective(a.initial())
    ta = a.solve(np.zeros(a.dim), 0.5, a.initial(), KEY)
    tb = b.solve(np.zeros(b.dim), 0.5, b.initial(), KEY)
    # Assert: reproducible, and the training draws are untouched
    assert first == again
    np.testing.assert_array_equal(ta, tb)


# ---------------------------------------------------------------------- 6. no parameters
def test_model_without_trainable_parameters_is_refused() -> None:
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="worker 2: model has no trainable parameters"):
        TorchSolver(frozen, DataLoader(classes(0), 8), nn.CrossEntropyLoss(), name="worker 2")


# ---------------------------------------------------------------------- 7. NaN in eval
def test_nan_in_eval_mode_is_a_fault_naming_the_worker() -> None:
    test = DataLoader(classes(9), batch_size=8)
    s = solver(NanInEval, classes(0), test=test, name="worker 1")
    theta = s.solve(np.zeros(s.dim), 0.5, s.initial(), KEY)  # training mode: finite
    with pytest.raises(FloatingPointError, match="worker 1: loss is nan on its training data"):
        s.objective(theta)
    with pytest.raises(FloatingPointError, match="worker 1: loss is nan on its test data"):
        s.evaluate(theta)
    np.testing.assert_array_equal(s._get(), theta)  # the model is left as it was


def test_nan_in_eval_mode_stops_the_reference_run_and_names_the_worker_in_flower() -> None:
    # Reference runner: fatal, like a NaN training loss
    workers = [solver(NanInEval, classes(w), name=f"worker {w}") for w in range(3)]
    with pytest.raises(FloatingPointError, match="worker 0: loss is nan on its training data"):
        run_reference("q-sgadmm", workers, 2, SGD)
    # Flower: the worker's reply is an error carrying the message (on_failure decides)

    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8, shuffle=True)

    app = torch_client_app(NanInEval, train_fn)
    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL, on_failure="stop")
    with pytest.raises(
        (FloatingPointError, WorkerFailure), match=r"worker \d: loss is nan on its training data"
    ):
        strategy.start(FakeGrid(app, 3, {}), num_rounds=2, timeout=10.0)
    assert strategy.history == []


# ---------------------------------------------------------------------- 8. device
def test_device_setting_is_validated(monkeypatch) -> None:
    assert SolverSettings().device == "cpu"
    assert RunConfig.from_run_config({"device": "cpu"}).solver.device == "cpu"
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        SolverSettings(device="tpu")
    # availability is the worker's business (its machine may have the GPU the ServerApp
    # lacks): the settings check the spelling, the solver checks the device
    assert SolverSettings(device="cuda:1").device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device = 'cuda' needs CUDA.*is_available\(\) is False"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device = 'mps' needs Apple's MPS"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device = 'cuda:1': this machine has 1 CUDA"):
        resolve_device("cuda:1")


def test_cpu_device_explicitly_and_passed_by_the_app(monkeypatch) -> None:
    # the device path, with 'cpu' spelled out: same result as the default
    s = solver(lambda: nn.Linear(3, 2), classes(0), device="cpu")
    t = solver(lambda: nn.Linear(3, 2), classes(0), device=torch.device("cpu"))
    assert s.device == torch.device("cpu")
    np.testing.assert_array_equal(
        s.solve(np.zeros(s.dim), 0.5, s.initial(), KEY),
        t.solve(np.zeros(t.dim), 0.5, t.initial(), KEY),
    )
    # torch_solver_fn hands the setting to the solver
    seen = {}
    monkeypatch.setattr(torch_app, "TorchSolver", lambda *a, **kw: seen.update(kw))
    fn = torch_app.torch_solver_fn(lambda: nn.Linear(3, 2), lambda c: DataLoader(classes(0)))

    class Context:
        node_config = {"partition-id": 0, "num-partitions": 2}

    fn(Context(), SolverSettings(device="cpu"), 0)
    assert seen["device"] == "cpu"


# ---------------------------------------------------------------------- seeds and state
def test_training_batches_follow_the_key_with_the_loaders_own_generator() -> None:
    # Prepare: a loader and a sampler with their own torch.Generator (PyTorch's
    # reproducibility recipe): the batches must follow the key, not the generator's state
    def make() -> TorchSolver:
        g = torch.Generator().manual_seed(7)
        return solver(
            lambda: nn.Linear(3, 2), DataLoader(classes(0), batch_size=4, shuffle=True, generator=g)
        )

    long_lived, zero = make(), np.zeros(make().dim)
    start = long_lived.initial()
    # Execute: two solves with the same key on one solver, one on a fresh solver (Flower
    # rebuilds the solver for every message), and gradients at two iterations
    a = long_lived.solve(zero, 0.0, start, KEY)
    b = long_lived.solve(zero, 0.0, start, KEY)
    fresh = make().solve(zero, 0.0, start, KEY)
    g1, g2 = make().gradient(start, (0, 0, 1)), make().gradient(start, (0, 0, 2))
    # Assert
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, fresh)
    assert not np.array_equal(g1, g2)  # another iteration, another batch


class Noisy(TensorDataset):
    """A dataset with a random augmentation in ``__getitem__`` (torch's global RNG)."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn(x.shape), y


def test_evaluation_passes_are_seeded_and_leave_the_callers_rng_alone() -> None:
    # Prepare: the whole-dataset path of objective() and the test loader, both augmented
    data = Noisy(*classes(0).tensors)
    s = solver(lambda: nn.Linear(3, 2), data, test=DataLoader(data, batch_size=8, shuffle=True))
    theta = s.initial()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    # Execute
    values = [s.objective(theta), s.objective(theta)]
    metrics = [s.evaluate(theta), s.evaluate(theta)]
    # Assert
    assert values[0] == values[1]
    assert metrics[0] == metrics[1]
    assert torch.equal(torch.random.get_rng_state(), before)


class Unused(nn.Module):
    """A classifier with a parameter the loss never uses (e.g. an unused head)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.spare = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


def test_gradient_of_an_unused_parameter_is_zero() -> None:
    s = solver(Unused, classes(0))
    grad = s.gradient(s.initial(), KEY)
    assert grad.shape == (s.dim,)
    np.testing.assert_array_equal(grad[8:], 0.0)  # spare.weight and spare.bias
    assert np.any(grad[:8] != 0.0)


def test_namedtuple_batches() -> None:
    from collections import namedtuple

    Sample = namedtuple("Sample", ["inputs", "targets"])

    class Named(TensorDataset):
        def __getitem__(self, i):
            return Sample(*super().__getitem__(i))

    s = solver(lambda: nn.Linear(3, 2), Named(*classes(0).tensors))
    theta = s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
    assert np.all(np.isfinite(theta)) and np.isfinite(s.objective(theta))


def frozen_model() -> nn.Module:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m[0].requires_grad_(False)  # a frozen "backbone", its values from the initial model
    return m


def test_frozen_parameters_from_the_initial_model_survive_in_flower() -> None:
    # Prepare: the pretrained backbone comes with initial_arrays; Flower rebuilds the
    # model from model_fn for every message, the reference runner keeps its solvers
    pretrained = frozen_model()
    with torch.no_grad():
        pretrained[0].weight.fill_(0.25)
        pretrained[0].bias.fill_(0.5)
    initial = {k: v.numpy() for k, v in pretrained.state_dict().items()}

    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8, shuffle=True)

    app = torch_client_app(frozen_model, train_fn)
    strategy = RelayStrategy("q-sgadmm", 2, SGD, LOCAL, evaluate_every=1)
    # Execute
    from flwr.app import ArrayRecord

    result = strategy.start(
        FakeGrid(app, 2, {}), initial_arrays=ArrayRecord(pretrained.state_dict()), num_rounds=3
    )
    solvers = [
        TorchSolver(
            seeded_model(frozen_model, 0),
            DataLoader(classes(w), batch_size=8, shuffle=True),
            nn.CrossEntropyLoss(),
            local_steps=LOCAL.local_steps,
            name=f"worker {w}",
        )
        for w in range(2)
    ]
    ref = run_reference("q-sgadmm", solvers, 3, SGD, initial=initial)
    # Assert: the same run, and the final model still has the pretrained backbone
    assert [r["objective"] for r in strategy.history] == [r["objective"] for r in ref.history]
    np.testing.assert_array_equal(result.arrays["0.weight"].numpy(), 0.25)


def test_fedavg_keeps_each_nodes_batchnorm_statistics_across_rounds() -> None:
    # Prepare: features far from mean 0 / variance 1, so BatchNorm's statistics matter
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from flower_qgadmm.flower.client import solver_settings_record
    from flower_qgadmm.flower.fedavg import STATE_KEPT, model_array

    g = torch.Generator().manual_seed(0)
    x = 5.0 * torch.randn(200, 4, generator=g) + 20.0
    data = TensorDataset(x, ((x[:, 0] - 20.0) > 0).long())

    def model_fn():
        return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))

    app = torch_client_app(
        model_fn,
        lambda c: DataLoader(data, batch_size=20, shuffle=True),
        lambda c: DataLoader(data, batch_size=200),
    )
    context = next(iter(FakeGrid(app, 1, {}).contexts.values()))
    config = solver_settings_record(SolverSettings(local_steps=10, lr=0.05), 0)
    theta = seeded_model(model_fn, 0)

    def message(kind: str, k: int, flat: np.ndarray) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"theta": model_array(flat)}),
                "config": ConfigRecord({**dict(config), "server-round": k}),
            }
        )
        return Message(content, dst_node_id=context.node_id, message_type=kind)

    flat = np.concatenate([p.detach().numpy().ravel() for p in theta.parameters()])
    # Execute: five FedAvg rounds on this node, then its evaluate handler
    for k in range(1, 6):
        reply = app(message("train", k, flat), context)
        flat = reply.content["arrays"]["theta"].numpy().astype(np.float64)
    accuracy = app(message("evaluate", 5, flat), context).content["metrics"]["accuracy"]
    # Assert: the statistics of 50 training batches were kept (fresh ones give ~0.5)
    assert STATE_KEPT in context.state
    running_mean = record_state(context.state[STATE_KEPT])["0.running_mean"]
    assert np.all(running_mean > 15.0)
    assert accuracy > 0.95


# ---------------------------------------------------------------------- seeding cost
def test_seeded_rng_draws_as_fork_rng_with_manual_seed_and_restores_the_state() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)  # advances the global RNG; what follows must not disturb it
    with torch.random.fork_rng():
        torch.manual_seed(77)
        expected = (torch.rand(5), torch.randperm(9), torch.randn(2, 2))
    after_expected = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)
    with seeded_rng(77):
        got = (torch.rand(5), torch.randperm(9), torch.randn(2, 2))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert torch.equal(torch.rand(4), after_expected)  # state restored after the block


def test_a_training_step_does_not_call_torch_manual_seed_without_an_accelerator(
    monkeypatch,
) -> None:
    """torch.manual_seed costs 1-2 ms on a CUDA build without a GPU (it formats the
    stack for each absent device); a Flower message used to pay it three times."""
    if not _cpu_only():
        pytest.skip("this machine has an accelerator: the full torch.manual_seed is used")
    reference = solver(lambda: nn.Linear(3, 2), classes(0))
    theta0 = reference.initial()
    want = reference.solve(np.ones_like(theta0), 1.0, theta0, KEY)

    def refuse(seed):
        raise AssertionError("torch.manual_seed called")

    monkeypatch.setattr(torch, "manual_seed", refuse)
    monkeypatch.setattr(torch.random, "manual_seed", refuse)
    fresh = solver(lambda: nn.Linear(3, 2), classes(0))
    got = fresh.solve(np.ones_like(theta0), 1.0, theta0, KEY)
    fresh.objective(got)
    np.testing.assert_array_equal(got, want)


def test_same_batch_takes_every_local_step_on_one_batch() -> None:
    # Prepare: a loss that records the targets of each step's batch
    seen: list[list[int]] = []

    def loss_fn(out, targets):
        seen.append(targets.tolist())
        return nn.functional.cross_entropy(out, targets)

    data = classes(0, n=64)
    for same in (False, True):
        seen.clear()
        s = solver(WithBuffer, data, loss_fn, same_batch=same, local_steps=4)
        # Execute
        s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
        # Assert: four steps; one batch for all of them, or four different ones
        assert len(seen) == 4
        assert (len({tuple(t) for t in seen}) == 1) == same
    # the first batch is the one a new batch per step starts with
    seen.clear()
    s = solver(WithBuffer, data, loss_fn, same_batch=False, local_steps=1)
    s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
    first = seen[0]
    seen.clear()
    solver(WithBuffer, data, loss_fn, same_batch=True, local_steps=3).solve(
        np.zeros(s.dim), 0.0, s.initial(), KEY
    )
    assert seen[0] == first


def test_summed_loss_is_the_mean_times_the_batch_and_reports_stay_means() -> None:
    # Prepare: with plain SGD, minimising the sum over a batch of B samples is the mean
    # with a step B times larger (every batch has B = 8 samples here)
    total = solver(
        Squeezed, regression(0, n=64), nn.MSELoss(), optimizer="sgd", lr=0.01, loss_reduction="sum"
    )
    mean = solver(Squeezed, regression(0, n=64), nn.MSELoss(), optimizer="sgd", lr=0.08)
    start = total.initial()
    # Execute
    a = total.solve(np.zeros(total.dim), 0.0, start, KEY)
    b = mean.solve(np.zeros(mean.dim), 0.0, start, KEY)
    # Assert
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, start)
    assert total.objective(a) == pytest.approx(mean.objective(a), rel=1e-12)
    with pytest.raises(ValueError, match="loss_reduction must be one of"):
        solver(WithBuffer, classes(0), loss_reduction="total")
    with pytest.raises(ValueError, match="loss-reduction"):
        SolverSettings(loss_reduction="average")


def test_nan_in_the_training_data_is_blamed_on_the_data() -> None:
    # Prepare: one NaN feature in a worker's training data
    data = classes(0, n=16)
    data.tensors[0][3, 1] = float("nan")
    s = solver(WithBuffer, DataLoader(data, batch_size=16))
    # Execute / Assert: the objective pass and a training step say it is the data
    with pytest.raises(FloatingPointError, match="training data hold NaN/Inf"):
        s.objective(s.initial())
    with pytest.raises(FloatingPointError, match="training data hold NaN/Inf"):
        s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)


class NanAlways(nn.Module):
    """Its outputs are NaN in every mode (a broken forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x) * float("nan")


class NanInTraining(nn.Module):
    """Finite in eval mode, NaN while training."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        out = self.linear(x)
        return out * float("nan") if self.training else out


def test_a_nan_loss_says_whether_the_model_or_the_loss_gave_it_and_spares_the_first_step() -> None:
    """A model whose forward gives NaN used to read "check what the model does in
    evaluation" (eval pass) and "lower lr or rho" even at the first step of iteration 1,
    where no step was taken yet; a finite model under a NaN loss got the same advice."""
    # Prepare: a broken forward, one broken in training mode only, a broken loss
    broken = solver(NanAlways, classes(0))
    training_only = solver(NanInTraining, classes(0))
    bad_loss = solver(WithBuffer, classes(0), loss_fn=lambda out, y: (out * float("nan")).sum())
    zeros = np.zeros(broken.dim)
    # Execute / Assert: the eval pass names the model's outputs
    with pytest.raises(FloatingPointError, match="the model's outputs hold NaN/Inf: check what"):
        broken.objective(broken.initial())
    # the first step of iteration 1 starts from the initial model: not the step size
    for s in (broken, training_only):
        with pytest.raises(FloatingPointError) as err:
            s.solve(zeros, 0.5, s.initial(), KEY)
        assert "the model's outputs hold NaN/Inf: this is the initial model" in str(err.value)
        assert "model.train()" in str(err.value) and "lower lr" not in str(err.value)
        with pytest.raises(FloatingPointError, match="this is the initial model"):
            s.gradient(s.initial(), KEY)
    # later, the step size is the likely cause, and the advice stays
    with pytest.raises(FloatingPointError, match="outputs hold NaN/Inf: lower lr or rho"):
        training_only.solve(zeros, 0.5, training_only.initial(), (0, 0, 3))
    with pytest.raises(FloatingPointError, match="outputs hold NaN/Inf: lower the step"):
        training_only.gradient(training_only.initial(), (0, 0, 3))
    # finite outputs under a NaN loss: the loss function is named
    for run in (
        lambda: bad_loss.objective(bad_loss.initial()),
        lambda: bad_loss.solve(np.zeros(bad_loss.dim), 0.5, bad_loss.initial(), (0, 0, 3)),
    ):
        with pytest.raises(FloatingPointError, match="outputs are finite, the loss of them is not"):
            run()


class FlatWeight(nn.Module):
    """Linear(3, 2)'s parameter names and size, another shape: weight (6,)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(6))
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x @ self.weight.reshape(3, 2) + self.bias


def test_nodes_building_other_architectures_of_the_same_size_are_refused_at_set_up() -> None:
    # Prepare: node 1's model_fn builds another model with the same parameter names and
    # count (the run's size and layout checks pass); reference and Flower
    def model_fn(context):
        return FlatWeight() if partition_of(context)[0] == 1 else nn.Linear(3, 2)

    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8, shuffle=True)

    app = torch_client_app(model_fn, train_fn)
    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL)
    solvers = [
        solver(FlatWeight if w == 1 else (lambda: nn.Linear(3, 2)), classes(w)) for w in (0, 1)
    ]
    want = r"worker 1 has weight \(6,\) where worker 0 has weight \(2, 3\)"
    # Execute / Assert: refused before any round, naming the worker and the array
    with pytest.raises(ValueError, match=want):
        strategy.start(FakeGrid(app, 3, {}), num_rounds=1, timeout=10.0)
    assert strategy.history == []
    with pytest.raises(ValueError, match=want):
        run_reference("d-psgd", solvers, 1)


class WithExtraState(nn.Module):
    """A module whose state_dict carries a Python object (get_extra_state)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def get_extra_state(self):
        return {"version": 2}

    def set_extra_state(self, state) -> None:
        pass

    def forward(self, x):
        return self.linear(x)


def test_a_model_with_non_tensor_state_or_no_module_or_no_dataloader_is_refused() -> None:
    data = DataLoader(classes(0), batch_size=8)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"worker 4: .* not tensors \['_extra_state'\]"):
        TorchSolver(WithExtraState(), data, loss, name="worker 4")
    with pytest.raises(TypeError, match="worker 4: the model must be a torch.nn.Module, got int"):
        TorchSolver(42, data, loss, name="worker 4")
    batches = [(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(TypeError, match="worker 4: the training loader must be a torch DataL"):
        TorchSolver(nn.Linear(3, 2), batches, loss, name="worker 4")
    with pytest.raises(TypeError, match="worker 4: the test loader must be a torch DataLoader"):
        TorchSolver(nn.Linear(3, 2), data, loss, batches, name="worker 4")


class DictRows(torch.utils.data.Dataset):
    """Rows as dicts, as a Hugging Face dataset gives them: {"x": ..., "label": ...}."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((3,), float(i)), "label": i % 2}


def test_batches_that_are_not_input_target_pairs_are_named() -> None:
    # Prepare: dict batches (unpacked, they would be their two keys: "x", "label")
    loss = nn.CrossEntropyLoss()
    dicts = DataLoader(DictRows(), batch_size=4)
    triples = DataLoader(TensorDataset(torch.randn(8, 3), torch.zeros(8).long(), torch.ones(8)))
    # Execute / Assert: at set-up, and in a training step, naming the worker and the cause
    s = TorchSolver(nn.Linear(3, 2), dicts, loss, name="worker 2")
    with pytest.raises(ValueError, match=r"^worker 2: its training loader yields dict batches"):
        s.report()
    with pytest.raises(ValueError, match=r"keys \['x', 'label'\]\); the solver needs \(inputs"):
        s.solve(np.zeros(s.dim), 0.0, s.initial(), KEY)
    with pytest.raises(ValueError, match=r"^worker 2: its training loader yields batches of 3"):
        TorchSolver(nn.Linear(3, 2), triples, loss, name="worker 2").gradient(s.initial(), KEY)
    test = TorchSolver(nn.Linear(3, 2), DataLoader(classes(0)), loss, dicts, name="worker 2")
    with pytest.raises(ValueError, match=r"^worker 2: its test loader yields dict batches"):
        test.evaluate(test.initial())


def test_a_loss_that_is_no_scalar_tensor_or_is_detached_is_named() -> None:
    data = DataLoader(classes(0), batch_size=8, shuffle=True)
    ce = nn.functional.cross_entropy

    def build(loss_fn) -> TorchSolver:
        return TorchSolver(seeded_model(lambda: nn.Linear(3, 2), 0), data, loss_fn, name="worker 5")

    # a number: refused at set-up (before: accepted there, a TypeError in the first step)
    with pytest.raises(ValueError, match="^worker 5: loss_fn must return a one-element .* float"):
        build(lambda out, y: float(ce(out, y))).report()
    # per-sample losses: named with their shape, in evaluation and in training
    vector = build(nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match=r"loss\), got shape \(24,\)"):
        vector.report()
    with pytest.raises(ValueError, match=r"loss\), got shape \(8,\)"):
        vector.gradient(vector.initial(), KEY)
    # detached from the model: the steps would follow the proximal term alone (before:
    # solve returned the start unchanged, silently)
    detached = build(lambda out, y: ce(out, y).detach())
    with pytest.raises(ValueError, match="^worker 5: the training loss does not depend on"):
        detached.solve(np.zeros(detached.dim), 0.0, detached.initial(), KEY)


def test_fedavg_baseline_names_the_node_whose_model_has_another_size(caplog) -> None:
    # Prepare: node 1 builds a larger model; Flower's FedAvg drops its reply each round
    # and logs the error: it must say which worker and why
    from flower_qgadmm.flower.fedavg import run_flower_fedavg

    def model_fn(context):
        return nn.Linear(3, 2) if partition_of(context)[0] != 1 else nn.Linear(3, 5)

    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8, shuffle=True)

    app = torch_client_app(model_fn, train_fn)
    theta0 = solver(lambda: nn.Linear(3, 2), classes(0)).initial()
    # Execute
    with caplog.at_level("INFO"):
        run_flower_fedavg(FakeGrid(app, 3, {}), 3, theta0, 1, 10.0, LOCAL, 0)
    # Assert
    assert "worker 1: global model has 8 entries, its model 20" in caplog.text


class BatchNormed(nn.Module):
    """Linear, BatchNorm1d, Linear: fails in training mode on a batch of 1 sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_a_training_batch_of_one_sample_that_breaks_batchnorm_names_drop_last() -> None:
    # 9 samples in batches of 4 leave a last batch of 1: torch's "Expected more than 1
    # value per channel when training" reached the relay's log without the fix
    data = DataLoader(classes(0, n=9), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match=r"worker: the model fails on a training batch of 1") as e:
        solver(BatchNormed, data, local_steps=3).solve(np.zeros(34), 0.0, np.zeros(34), KEY)
    assert "Expected more than 1 value per channel" in str(e.value)
    assert "drop_last=True" in str(e.value)
    with pytest.raises(ValueError, match="drop_last=True"):  # the gossip family's step
        solver(BatchNormed, DataLoader(classes(0, n=1), batch_size=4)).gradient(np.zeros(34), KEY)
    # drop_last=True: trains
    fine = DataLoader(classes(0, n=9), batch_size=4, shuffle=True, drop_last=True)
    assert np.isfinite(
        solver(BatchNormed, fine, local_steps=3).solve(np.zeros(34), 0.0, np.zeros(34), KEY)
    ).all()


def test_dict_batches_get_a_collate_fn_that_works_for_their_keys() -> None:
    # A Hugging Face dataset's loader (Flower's quickstarts: batch["img"], batch["label"])
    # was told to "return pairs from the loader's collate_fn", with no collate_fn to use;
    # the message now has one, with the batch's keys, and it works as written
    from torch.utils.data import default_collate

    s = TorchSolver(nn.Linear(3, 2), DataLoader(DictRows(), batch_size=4), nn.CrossEntropyLoss())
    with pytest.raises(ValueError) as err:
        s.report()
    message = str(err.value)
    assert "collate_fn=lambda rows: tuple(default_collate(rows)[k] for k in ('x', 'label'))" in (
        message
    )

    def collate_fn(rows):
        return tuple(default_collate(rows)[k] for k in ("x", "label"))

    fixed = TorchSolver(
        nn.Linear(3, 2),
        DataLoader(DictRows(), batch_size=4, collate_fn=collate_fn),
        nn.CrossEntropyLoss(),
    )
    assert fixed.report()["dim"] == 8


class NeedsClasses(nn.Module):
    """A model class with a required constructor argument."""

    def __init__(self, num_classes) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.fc(x)


def test_a_model_class_with_a_required_argument_is_told_it_got_the_context() -> None:
    # torch_client_app(NeedsClasses, ...) calls NeedsClasses(context) (one required
    # parameter: a function of the Context); the relay said only "TypeError: empty():
    # argument 'size' (position 1) must be tuple of ints, but found element of type Context"
    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8)

    app = torch_client_app(NeedsClasses, train_fn)
    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL)
    with pytest.raises(WorkerFailure) as err:
        strategy.start(FakeGrid(app, 3, {}), num_rounds=1, timeout=10.0)
    assert "NeedsClasses(context) failed (" in str(err.value)
    assert "('num_classes') is called with the Context" in str(err.value)
    assert "lambda: NeedsClasses(...)" in str(err.value)
    # as the message says: a function building the model
    app = torch_client_app(lambda: NeedsClasses(2), train_fn)
    RelayStrategy("q-sgadmm", 3, SGD, LOCAL).start(FakeGrid(app, 3, {}), num_rounds=1, timeout=10.0)


def test_a_node_building_a_model_of_another_size_is_told_the_fix() -> None:
    # node 2's model_fn builds a wider model: "workers disagree on the model size (worker
    # 0: 8, ..., worker 2: 12)" said what, not what to do
    def model_fn(context):
        return nn.Linear(3, 3) if partition_of(context)[0] == 2 else nn.Linear(3, 2)

    def train_fn(context):
        return DataLoader(classes(partition_of(context)[0]), batch_size=8, shuffle=True)

    strategy = RelayStrategy("q-sgadmm", 3, SGD, LOCAL)
    want = r"model size \(worker 0: 8, worker 1: 8, worker 2: 12\): every node's model_fn must"
    with pytest.raises(ValueError, match=want):
        strategy.start(FakeGrid(torch_client_app(model_fn, train_fn), 3, {}), num_rounds=1)
