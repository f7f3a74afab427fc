"""Stochastic local solver for any ``torch.nn.Module`` (SGADMM / Q-SGADMM).

The primal step of the stochastic variants replaces the exact argmin by a few
mini-batch optimizer steps on the local augmented Lagrangian, warm-started from the
worker's current model (ALGORITHMS.md, "SGADMM / Q-SGADMM"):

    f_n(theta; batch) - <linear, theta> + (weight / 2) ||theta||^2,

with ``linear = rho * sum_m theta_hat_m - alpha_n`` and ``weight = rho * c_n``, which is
f_n + <alpha_n, theta> + (rho/2) sum_m ||theta - theta_hat_m||^2 up to a constant.

Parameters travel as one flat vector: every parameter with ``requires_grad``, in
``model.parameters()`` order, flattened with ``reshape`` (so non-contiguous parameters
work). Buffers (e.g. BatchNorm running statistics) are *not* communicated: each worker
keeps its own, persisted with the worker state (``extra_state``). When the relay pulls a
model (evaluation, the final model) it gets the whole ``state_dict`` in the model's own
layout and dtypes (:meth:`TorchSolver.to_arrays`); :func:`load_flat` puts a flat vector
back into a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .solvers import Key, LocalSolver

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def torch_seed(key: tuple[int, ...]) -> int:
    """A 63-bit torch seed derived from (seed, worker, iteration)."""
    return int(np.random.default_rng(list(key)).integers(2**63 - 1))


def load_flat(module: nn.Module, theta: np.ndarray) -> nn.Module:
    """Copy a flat model vector (every parameter with ``requires_grad``, in
    ``module.parameters()`` order, as the workers exchange it) into ``module``; returns it.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    theta = np.asarray(theta)
    size = sum(p.numel() for p in params)
    if theta.shape != (size,):
        raise ValueError(f"model vector has shape {theta.shape}, the module needs ({size},)")
    with torch.no_grad():
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(theta[offset : offset + n]).reshape(p.shape))
            offset += n
    return module


def seeded_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build the model with a seeded torch RNG (same initial model on every worker)."""
    with torch.random.fork_rng():
        torch.manual_seed(torch_seed((seed, 7919)))
        return model_fn()


class TorchSolver(LocalSolver):
    """A few optimizer steps on the local augmented Lagrangian of a torch model.

    Parameters
    ----------
    model : nn.Module
        The worker's model; its initial parameters are theta^0 (build it with
        :func:`seeded_model` so every worker starts from the same model).
    train_loader : DataLoader
        Local training data; batches are drawn in a seeded order (the loader's shuffling
        uses torch's RNG, seeded per (seed, worker, iteration) and then restored).
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar`` (e.g. ``nn.CrossEntropyLoss()``).
    test_loader : DataLoader, optional
        Data for the reported ``accuracy`` (classification: argmax of the outputs).
    optimizer : str
        ``"adam"`` or ``"sgd"``, created fresh for every primal step (default: "adam").
    lr : float
        Learning rate (default: 1e-3).
    local_steps : int
        Mini-batch steps per primal update (default: 5).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        loss_fn: LossFn,
        test_loader: DataLoader | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        local_steps: int = 5,
        name: str = "worker",
    ) -> None:
        if len(train_loader.dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name}: empty partition (no training samples)")
        self.model = model
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.lr = float(lr)
        self.local_steps = int(local_steps)
        self.name = name
        # Full passes (objective, accuracy) go in a fixed order, without touching any RNG.
        self._train_eval = DataLoader(train_loader.dataset, batch_size=1024, shuffle=False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._param_names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        self.dim = int(sum(p.numel() for p in self.params))
        self._theta0 = self._get()

    # ------------------------------------------------------------------ flat vectors
    def _get(self) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([p.reshape(-1) for p in self.params]).double().numpy()

    def _set(self, theta: np.ndarray) -> None:
        if theta.shape != (self.dim,):
            raise ValueError(f"{self.name}: model vector has {theta.shape}, expected ({self.dim},)")
        load_flat(self.model, theta)

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.params])

    def initial(self) -> np.ndarray:
        return self._theta0.copy()

    # ------------------------------------------------------------------ model layout
    framework = "torch"

    def parameter_keys(self) -> tuple[str, ...]:
        """``state_dict`` keys of the trainable parameters, in ``parameters()`` order."""
        return self._param_names

    def to_arrays(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The model's ``state_dict`` (parameters from ``theta``, this worker's buffers),
        as numpy arrays in the model's own dtypes."""
        current = self._get()
        self._set(np.asarray(theta, dtype=np.float64))
        arrays = {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
        self._set(current)
        return arrays

    def set_initial(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Start from the user's ``state_dict`` (all keys, same shapes; strict)."""
        state = self.model.state_dict()
        if set(arrays) != set(state):
            raise ValueError(
                f"{self.name}: initial model has keys {sorted(arrays)}, the model has "
                f"{sorted(state)}"
            )
        for k, v in arrays.items():
            if tuple(np.shape(v)) != tuple(state[k].shape):
                raise ValueError(
                    f"{self.name}: initial {k} has shape {np.shape(v)}, the model has "
                    f"{tuple(state[k].shape)}"
                )
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})
        self._theta0 = self._get()
        if not np.all(np.isfinite(self._theta0)):
            raise ValueError(f"{self.name}: initial model contains NaN/Inf")

    # ------------------------------------------------------------------ the step
    def _batches(self) -> Iterator:
        while True:
            yielded = False
            for batch in self.train_loader:
                yielded = True
                yield batch
            if not yielded:
                raise ValueError(f"{self.name}: the training loader yields no batches")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=self.lr)
        raise ValueError(f"unknown optimizer {self.optimizer!r}")

    def solve(self, linear: np.ndarray, weight: float, start: np.ndarray, key: Key) -> np.ndarray:
        self._set(start)
        lin = torch.from_numpy(np.asarray(linear, dtype=np.float32))
        opt = self._make_optimizer()
        self.model.train()
        with torch.random.fork_rng():
            torch.manual_seed(torch_seed(key))
            batches = self._batches()
            for step in range(self.local_steps):
                inputs, targets = next(batches)
                flat = self._flat()
                loss = self.loss_fn(self.model(inputs), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{self.name}: loss is {loss.item()} at iteration {key[2]}, "
                        f"local step {step + 1}; lower lr or rho"
                    )
                total = loss - lin @ flat + 0.5 * weight * (flat @ flat)
                opt.zero_grad()
                total.backward()
                opt.step()
        return self._get()

    def gradient(self, theta: np.ndarray, key: Key) -> np.ndarray:
        """Gradient of the loss on one mini-batch at ``theta`` (drawn as in :meth:`solve`)."""
        self._set(theta)
        self.model.train()
        with torch.random.fork_rng():
            torch.manual_seed(torch_seed(key))
            inputs, targets = next(self._batches())
            loss = self.loss_fn(self.model(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.name}: loss is {loss.item()} at iteration {key[2]}; lower the step"
                )
            grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads]).double().numpy()

    # ------------------------------------------------------------------ reporting
    @torch.no_grad()
    def _pass(self, loader: DataLoader, theta: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) of ``theta`` on ``loader`` (eval mode)."""
        current = self._get()
        self._set(theta)
        self.model.eval()
        loss_sum = correct = count = 0.0
        for inputs, targets in loader:
            out = self.model(inputs)
            loss_sum += float(self.loss_fn(out, targets)) * len(targets)
            correct += float((out.argmax(dim=1) == targets).sum())
            count += len(targets)
        self._set(current)
        return loss_sum / max(count, 1), correct / max(count, 1)

    def objective(self, theta: np.ndarray) -> float:
        """Mean training loss of ``theta`` on the local data."""
        return self._pass(self._train_eval, theta)[0]

    def evaluate(self, theta: np.ndarray) -> dict[str, float]:
        if self.test_loader is None:
            return {}
        return {"accuracy": self._pass(self.test_loader, theta)[1]}

    # ------------------------------------------------------------------ buffers
    def extra_state(self) -> dict[str, np.ndarray]:
        return {name: b.detach().cpu().numpy().copy() for name, b in self.model.named_buffers()}

    def load_extra_state(self, state: Mapping[str, np.ndarray]) -> None:
        buffers = dict(self.model.named_buffers())
        if set(state) != set(buffers):
            raise ValueError(f"{self.name}: saved buffers {sorted(state)} != {sorted(buffers)}")
        with torch.no_grad():
            for name, value in state.items():
                buffers[name].copy_(
                    torch.from_numpy(np.asarray(value)).reshape(buffers[name].shape)
                )
