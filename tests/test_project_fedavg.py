"""Flower's own ``FedAvg`` of a user's project, sending the model's ``state_dict``, on our
ClientApp (``torch_client_app``): checked against a plain torch + numpy FedAvg written
here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flower_qgadmm.flower.torch_app import torch_client_app
from flower_qgadmm.testing import FakeGrid

SIZES = (30, 50, 70)  # samples of partitions 0, 1, 2: FedAvg weighs them
LR, LOCAL_STEPS, ROUNDS = 0.1, 3, 2


def model_fn() -> nn.Module:
    """BatchNorm: buffers that a project's FedAvg averages with the weights."""
    return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))


def dataset(pid: int) -> TensorDataset:
    g = torch.Generator().manual_seed(100 + pid)
    x = 3.0 * torch.randn(SIZES[pid], 4, generator=g) + 2.0 * pid
    return TensorDataset(x, torch.randint(0, 3, (SIZES[pid],), generator=g))


def loader(context) -> DataLoader:  # full batch, in order: the plain loop's batches
    data = dataset(int(context.node_config["partition-id"]))
    return DataLoader(data, batch_size=len(data))


def plain_fedavg(initial: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """FedAvg by hand: each partition takes LOCAL_STEPS full-batch SGD steps from the
    global state_dict (train mode: BatchNorm updates its statistics), then every entry
    of the state_dict is averaged weighted by the sample counts."""
    state = {k: v.numpy() for k, v in initial.items()}
    for _ in range(ROUNDS):
        new: dict[str, np.ndarray] = {}
        for pid, n in enumerate(SIZES):
            model = model_fn()
            model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            x, y = dataset(pid).tensors
            model.train()
            for _ in range(LOCAL_STEPS):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            for k, v in model.state_dict().items():
                new[k] = new.get(k, 0.0) + v.detach().numpy() * (n / sum(SIZES))
        state = new
    return state


def test_flowers_own_fedavg_trains_our_clientapp_from_a_state_dict() -> None:
    # Prepare: the project's settings (local steps, optimizer, seed) in its run config,
    # the lr in its train_config as Flower's quickstart sends it, plus a key of its own
    app = torch_client_app(model_fn, loader, loader)
    run_config = {"local-steps": LOCAL_STEPS, "optimizer": "sgd", "seed": 5, "batch-size": 32}
    grid = FakeGrid(app, len(SIZES), run_config)
    torch.manual_seed(0)
    initial = model_fn().state_dict()
    strategy = FedAvg(fraction_evaluate=1.0)
    # Execute
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(initial),
        train_config=ConfigRecord({"lr": LR, "local-epochs": 1}),
        num_rounds=ROUNDS,
    )
    # Assert: the state_dict FedAvg computed by hand, buffers included
    want = plain_fedavg(initial)
    got = {k: v.numpy() for k, v in result.arrays.items()}
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert got["0.running_mean"].shape == (4,) and got["0.num_batches_tracked"].shape == ()
    # every node trained and evaluated in every round, and reported the sample counts
    assert set(result.train_metrics_clientapp) == set(range(1, ROUNDS + 1))
    assert set(result.evaluate_metrics_clientapp) == set(range(1, ROUNDS + 1))
    accuracy = result.evaluate_metrics_clientapp[ROUNDS]["accuracy"]
    model = model_fn()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in want.items()})
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(dataset(p).tensors[0]).argmax(1) == dataset(p).tensors[1]).sum())
            for p in range(len(SIZES))
        )
    assert accuracy == pytest.approx(correct / sum(SIZES))


def test_a_state_dict_of_another_model_is_refused_naming_both() -> None:
    app = torch_client_app(model_fn, loader)
    context = next(iter(FakeGrid(app, 1, {}).contexts.values()))
    other = ArrayRecord(nn.Linear(4, 3).state_dict())
    content = RecordDict({"arrays": other, "config": ConfigRecord({"server-round": 1})})
    message = Message(content, dst_node_id=context.node_id, message_type="train")
    with pytest.raises(ValueError, match=r"initial model has keys \['bias', 'weight'\]"):
        app(message, context)


def test_a_project_config_key_of_ours_with_a_bad_value_is_refused() -> None:
    app = torch_client_app(model_fn, loader)
    context = next(iter(FakeGrid(app, 1, {"optimizer": "lbfgs"}).contexts.values()))
    content = RecordDict(
        {"arrays": ArrayRecord(model_fn().state_dict()), "config": ConfigRecord({})}
    )
    message = Message(content, dst_node_id=context.node_id, message_type="train")
    with pytest.raises(ValueError, match="optimizer"):
        app(message, context)
