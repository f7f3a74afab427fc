"""Stochastic local solver for any ``torch.nn.Module`` (SGADMM / Q-SGADMM).

The primal step of the stochastic variants replaces the exact argmin by a few
mini-batch optimizer steps on the local augmented Lagrangian, warm-started from the
worker's current model (ALGORITHMS.md, "SGADMM / Q-SGADMM"):

    f_n(theta; batch) - <linear, theta> + (weight / 2) ||theta||^2,

with ``linear = rho * sum_m theta_hat_m - alpha_n`` and ``weight = rho * c_n``, which is
f_n + <alpha_n, theta> + (rho/2) sum_m ||theta - theta_hat_m||^2 up to a constant.

Parameters travel as one flat float64 numpy vector on the CPU: every parameter with
``requires_grad``, in ``model.parameters()`` order, flattened with ``reshape`` (so
non-contiguous parameters work), whatever the parameters' dtypes and device. Each
parameter keeps its own dtype in the model (float32, float64, float16, bfloat16, ...);
the two terms added to the loss are computed in the parameters' promoted dtype, at least
float32 (float32 for float32 / float16 / bfloat16 models, float64 when any parameter is
float64). Buffers (e.g. BatchNorm running statistics) are *not* communicated: each
worker keeps its own, persisted with the worker state (``extra_state``). When the relay
pulls a model (evaluation, the final model) it gets the whole ``state_dict`` in the
model's own layout (:meth:`TorchSolver.to_arrays`); :func:`load_flat` puts a flat vector
back into a module.

dtype rule for numpy: a tensor becomes a numpy array of its own dtype, except floating
dtypes numpy does not have (bfloat16, the float8 types), which become float32 (exact:
float32 holds every such value). Loading such an array back into the model rounds it to
the tensor's dtype, which gives the original values back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache, reduce
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
)

from .config import LOSS_REDUCTIONS
from .solvers import Key, LocalSolver

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEVICES = "'cpu', 'cuda', 'cuda:N' or 'mps'"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
EVAL_SEED = 104729  # the fixed torch seed of a full pass that iterates the train loader
EVAL_BATCH = 1024  # batch size of the full passes that read the dataset directly


BATCH_STREAM = 0x6261  # tag of the mini-batch stream: key (seed, worker, k, BATCH_STREAM)


def torch_seed(key: tuple[int, ...]) -> int:
    """A 63-bit torch seed derived from ``key`` (the first draw of ``default_rng(key)``)."""
    return int(np.random.default_rng(list(key)).integers(2**63 - 1))


def _nonfinite_cause(
    inputs: Any, targets: Any, data: str, otherwise: str = "", outputs: Any = None
) -> str:
    """Why a loss is not finite, for its error message: NaN/Inf in the batch itself
    (the data, not the model); else, given the model's ``outputs`` on the batch, whether
    they are (the model: ``otherwise``, default the eval-mode advice) or only the loss
    of them (``loss_fn``); else ``otherwise``."""
    for what, value in (("inputs", inputs), ("targets", targets)):
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return f"its {data} data hold NaN/Inf ({what} of this batch): clean the data"
    otherwise = otherwise or "check what the model does in evaluation"
    if torch.is_tensor(outputs) and outputs.is_floating_point():
        if not torch.isfinite(outputs).all():
            return f"the model's outputs hold NaN/Inf: {otherwise}"
        return (
            "the model's outputs are finite, the loss of them is not: check loss_fn "
            "against the model's outputs and the targets"
        )
    return otherwise


def _step_advice(iteration: int, step: int, later: str) -> str:
    """What to do about a non-finite training loss: ``later`` (lower the step) once
    steps were taken; at the first step of iteration 1 the model is the initial one,
    which no step size explains."""
    if iteration <= 1 and step == 0:
        return (
            "this is the initial model, before any step (not the step size): check what "
            "the model does in training mode (model.train())"
        )
    return later


def batch_seed(key: tuple[int, ...]) -> int:
    """The torch seed of the mini-batches of a step with key (seed, worker, iteration).

    Not :func:`torch_seed` of the key itself: the worker's quantizer draws its dither
    from ``default_rng([seed, worker, iteration])`` (:meth:`~flower_qgadmm.algorithms.
    base.Worker.rng`), whose first draw that seed would be, so the batch (hence the
    change being quantized) and the first dither would be functions of one 64-bit word.
    The stochastic quantizers are unbiased only for dithers independent of what they
    round; a tagged key gives an independent stream (numpy's SeedSequence pads short keys
    with zeros, hence a non-zero tag)."""
    return torch_seed((*key, BATCH_STREAM))


def resolve_device(device: str | torch.device, setting: str = "device") -> torch.device:
    """``device`` as a ``torch.device``: one of 'cpu', 'cuda', 'cuda:N', 'mps', available on
    this machine; otherwise a ValueError naming ``setting``."""
    name = str(device)
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"{setting} must be {DEVICES}, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{setting} = {name!r} needs CUDA, but torch.cuda.is_available() is False "
                "on this machine; use 'cpu'"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"{setting} = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"{setting} = 'mps' needs Apple's MPS, but torch.backends.mps.is_available() is "
            "False on this machine; use 'cpu'"
        )
    return torch.device(name)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``tensor`` in its own dtype; floating dtypes numpy lacks
    (bfloat16, float8) become float32, which holds their values exactly."""
    t = tensor.detach().cpu()
    if t.is_floating_point() and t.dtype not in _NUMPY_FLOATS:
        t = t.float()
    return t.numpy().copy()


def load_flat(module: nn.Module, theta: np.ndarray) -> nn.Module:
    """Copy a flat model vector (every parameter with ``requires_grad``, in
    ``module.parameters()`` order, as the workers exchange it) into ``module``; returns it.
    Each entry is rounded to its parameter's dtype and copied to its device.
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


@cache
def _cpu_only() -> bool:
    """No accelerator torch could draw on in this process (asked once: each answer can
    load a driver library)."""
    return not (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
    )


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside the block, its state restored after:
    ``torch.random.fork_rng()`` + ``torch.manual_seed(seed)``. On a machine without an
    accelerator only the CPU generator exists, and it alone is seeded and restored: the
    same numbers, without the 1-2 ms ``torch.manual_seed`` spends queueing lazy seeds for
    absent devices (it formats the Python stack for each), three times a training message."""
    if not _cpu_only():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            yield
        return
    state = torch.default_generator.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        yield
    finally:
        torch.default_generator.set_state(state)


def seeded_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build the model with a seeded torch RNG (same initial model on every worker)."""
    with seeded_rng(torch_seed((seed, 7919))):
        return model_fn()


def _count(targets: Any) -> int:
    """Samples in a batch (its targets' first dimension)."""
    if isinstance(targets, torch.Tensor) and targets.ndim == 0:
        return 1
    return len(targets)


def _is_classification(out: Any, targets: Any) -> bool:
    """Accuracy applies: outputs (B, C) with C > 1 and integer class targets (B,)."""
    return (
        isinstance(out, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and out.ndim == 2
        and out.shape[1] > 1
        and targets.shape == out.shape[:1]
        and not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
    )


def _whole_dataset(loader: DataLoader) -> bool:
    """The loader draws every sample of its (map-style) dataset once per epoch."""
    sampler = loader.sampler
    if (
        type(loader.batch_sampler) is not BatchSampler
        or loader.batch_sampler.sampler is not sampler
    ):
        return False
    if type(sampler) is SequentialSampler:
        return True
    return (
        type(sampler) is RandomSampler
        and not sampler.replacement
        and sampler.num_samples == len(sampler.data_source)  # type: ignore[arg-type]
    )


def _generators(loader: DataLoader) -> list[torch.Generator]:
    """The torch generators a loader's iteration draws from besides the global RNG."""
    found = [loader.generator, getattr(loader.sampler, "generator", None)]
    inner = getattr(loader.batch_sampler, "sampler", None)
    found += [getattr(loader.batch_sampler, "generator", None), getattr(inner, "generator", None)]
    out: list[torch.Generator] = []
    for g in found:
        if isinstance(g, torch.Generator) and all(g is not h for h in out):
            out.append(g)
    return out


@contextmanager
def _fixed_seed(loader: DataLoader, seed: int) -> Iterator[None]:
    """Iterate ``loader`` in one fixed order: torch's RNG and the loader's own generators
    seeded with ``seed``, their states restored afterwards (training is unaffected)."""
    gens = _generators(loader)
    states = [g.get_state() for g in gens]
    try:
        with seeded_rng(seed):
            for g in gens:
                g.manual_seed(seed)
            yield
    finally:
        for g, state in zip(gens, states, strict=True):
            g.set_state(state)


class TorchSolver(LocalSolver):
    """A few optimizer steps on the local augmented Lagrangian of a torch model.

    Parameters
    ----------
    model : nn.Module
        The worker's model; its initial parameters are theta^0 (build it with
        :func:`seeded_model` so every worker starts from the same model). It needs at
        least one parameter with ``requires_grad``; any floating dtype (see the module
        docstring for the float64 / bfloat16 rule). Its ``state_dict`` must hold tensors
        only (no ``get_extra_state``).
    train_loader : DataLoader
        Local training data, yielding ``(inputs, targets)`` pairs (not dicts): map-style or
        ``IterableDataset``, any sampler. Batches are drawn in a seeded order (torch's
        RNG and the loader's and sampler's own generators, seeded per (seed, worker,
        iteration) and then restored). A loader yielding no batches is refused at
        construction when it has a ``len()``, otherwise at its first use.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar`` mean over the batch (e.g.
        ``nn.CrossEntropyLoss()``, ``nn.MSELoss()``).
    test_loader : DataLoader, optional
        Data for :meth:`evaluate`: ``accuracy`` for classification (outputs ``(B, C)``
        with C > 1 and integer targets ``(B,)``), else ``test_loss``.
    optimizer : str
        ``"adam"`` or ``"sgd"``, created fresh for every primal step (default: "adam").
    lr : float
        Learning rate (default: 1e-3).
    local_steps : int
        Mini-batch steps per primal update (default: 5).
    same_batch : bool
        The local steps of one update all take one mini-batch (the SGADMM authors'
        notebook; default: False, a new batch per step).
    loss_reduction : str
        What the local steps minimise on a batch: ``"mean"`` (default), ``loss_fn`` as
        given, or ``"sum"``, ``loss_fn`` times the batch's sample count (the sum over the
        batch of a mean-reduced loss, as the SGADMM paper writes it). The losses reported
        (:meth:`objective`, :meth:`evaluate`) stay means.
    name : str
        How errors name this worker (default: "worker").
    device : str or torch.device
        Where the model and batches live: 'cpu' (default), 'cuda', 'cuda:N', 'mps'. The
        flat vectors (models, payloads) stay CPU float64 numpy arrays.

    Notes
    -----
    :meth:`objective` is the mean training loss over *this worker's* data, in eval mode:

    - a loader that draws every sample of its dataset once (default sampler, or
      ``shuffle=True``): the dataset in order, in batches of 1024;
    - a ``SubsetRandomSampler(indices)`` (a shared dataset, a sampler per worker): the
      samples at ``indices``, in the order given, in batches of 1024;
    - any other loader (an ``IterableDataset``, other samplers, a ``batch_sampler``):
      one pass of the train loader itself. An ``IterableDataset`` must yield the same
      data on every pass under a given torch seed.

    Every evaluation pass (:meth:`objective`, :meth:`evaluate`) runs under the fixed
    torch seed :data:`EVAL_SEED`, also given to the loader's and sampler's own
    generators, whose states are restored afterwards: every call sees the same batches
    and the same random augmentations, and the caller's RNG is untouched. Training
    batches (:meth:`solve`, :meth:`gradient`) are drawn the same way under
    :func:`batch_seed` of (seed, worker, iteration), so a solver rebuilt for every
    message (Flower) draws what a long-lived one does.

    A loss that is NaN/Inf in an evaluation pass (:meth:`objective`, :meth:`evaluate`;
    eval mode: e.g. BatchNorm running statistics, an eval-only branch) is a fault, not a
    value to report: FloatingPointError naming the worker and the data, as for a NaN
    loss in a training step.
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
        device: str | torch.device = "cpu",
        same_batch: bool = False,
        loss_reduction: str = "mean",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{name}: the model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if not isinstance(train_loader, DataLoader):
            raise TypeError(
                f"{name}: the training loader must be a torch DataLoader, got "
                f"{type(train_loader).__name__}"
            )
        if test_loader is not None and not isinstance(test_loader, DataLoader):
            raise TypeError(
                f"{name}: the test loader must be a torch DataLoader, got "
                f"{type(test_loader).__name__}"
            )
        other = [k for k, v in model.state_dict().items() if not torch.is_tensor(v)]
        if other:
            raise ValueError(
                f"{name}: the model's state_dict has entries that are not tensors {other} "
                "(a module's get_extra_state()): only tensors can be exchanged, averaged "
                "and saved"
            )
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"{name}: loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}"
            )
        try:
            empty = len(train_loader) == 0
        except (TypeError, NotImplementedError):  # no len(): an IterableDataset, a sampler
            empty = False  # checked when the first batch is drawn
        if empty:
            raise ValueError(f"{name}: empty partition (the training loader yields no batches)")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.lr = float(lr)
        self.local_steps = int(local_steps)
        self.same_batch = bool(same_batch)
        self.summed = loss_reduction == "sum"
        self.name = name
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{name}: model has no trainable parameters (none requires_grad)")
        if any(p.is_complex() for p in self.params):
            raise ValueError(f"{name}: complex parameters are not supported")
        # dtype of the linear and quadratic terms: float32 (float64 if any parameter is)
        self._dtype = reduce(torch.promote_types, (p.dtype for p in self.params), torch.float32)
        self._np_dtype = np.float64 if self._dtype == torch.float64 else np.float32
        self._param_names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        self.dim = int(sum(p.numel() for p in self.params))
        self._train_eval = self._objective_loader(train_loader)
        self._theta0 = self._get()

    def report(self) -> dict:
        """The set-up report (:meth:`LocalSolver.report`), after checking that the model,
        the loss and the training data fit together: one evaluation pass of the initial
        model (:meth:`objective`). A mismatch (the model's outputs against the loss's
        targets, a loader's dtype against the model's, ...) is refused here, at set-up,
        naming the worker and torch's reason, instead of at every worker's first step.
        ``shapes`` lists the ``state_dict``'s arrays with their shapes: the relay refuses
        workers whose models differ (another architecture of the same size)."""
        try:
            self.objective(self._theta0)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            if str(exc).startswith(self.name):  # ours (an empty partition, ...): as it is
                raise
            raise ValueError(
                f"{self.name}: the model, the loss and the training data do not fit "
                f"together ({type(exc).__name__}: {exc})"
            ) from exc
        shapes = tuple(f"{k} {tuple(v.shape)}" for k, v in self.model.state_dict().items())
        return {**super().report(), "shapes": shapes}

    def _objective_loader(self, loader: DataLoader) -> DataLoader:
        """What :meth:`objective` iterates (class notes)."""
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset):
            return loader
        if _whole_dataset(loader):  # in order
            return DataLoader(
                dataset, batch_size=EVAL_BATCH, shuffle=False, collate_fn=loader.collate_fn
            )
        sampler = loader.sampler
        if (
            type(sampler) is SubsetRandomSampler
            and type(loader.batch_sampler) is BatchSampler
            and loader.batch_sampler.sampler is sampler
        ):
            indices = [int(i) for i in sampler.indices]
            subset = Subset(dataset, indices)
            return DataLoader(
                subset, batch_size=EVAL_BATCH, shuffle=False, collate_fn=loader.collate_fn
            )
        return loader

    # ------------------------------------------------------------------ flat vectors
    def _get(self) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([p.reshape(-1).to("cpu", torch.float64) for p in self.params]).numpy()

    def _set(self, theta: np.ndarray) -> None:
        if theta.shape != (self.dim,):
            raise ValueError(f"{self.name}: model vector has {theta.shape}, expected ({self.dim},)")
        load_flat(self.model, theta)

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1).to(self._dtype) for p in self.params])

    def initial(self) -> np.ndarray:
        return self._theta0.copy()

    def _to_device(self, batch: Any) -> Any:
        """A batch (tensors, possibly in tuples, lists, dicts) on the solver's device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device)
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*(self._to_device(b) for b in batch))
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, Mapping):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _pair(self, batch: Any, data: str) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch of the ``data`` loader; anything else (a dict
        of a Hugging Face dataset, one tensor, a triple) is refused naming the worker."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        example = ""
        if isinstance(batch, Mapping):
            what = f"dict batches (keys {list(batch)})"
            keys = tuple(batch)[:2] if len(batch) >= 2 else ("<inputs>", "<targets>")
            example = (
                "; for a Hugging Face dataset's rows, e.g. DataLoader(dataset.with_format("
                f"'torch'), ..., collate_fn=lambda rows: tuple(default_collate(rows)[k] for k "
                f"in {keys!r})) with torch.utils.data.default_collate, the inputs' key first"
            )
        elif isinstance(batch, (tuple, list)):
            what = f"batches of {len(batch)} items"
        else:
            what = f"{type(batch).__name__} batches"
        raise ValueError(
            f"{self.name}: its {data} loader yields {what}; the solver needs (inputs, "
            "targets) pairs: return them from the dataset's __getitem__ or the loader's "
            f"collate_fn{example}"
        )

    # ------------------------------------------------------------------ model layout
    framework = "torch"

    def parameter_keys(self) -> tuple[str, ...]:
        """``state_dict`` keys of the trainable parameters, in ``parameters()`` order."""
        return self._param_names

    def to_arrays(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The model's ``state_dict`` (parameters from ``theta``, this worker's buffers),
        as CPU numpy arrays in the model's own dtypes, except that bfloat16 (and float8)
        tensors, which numpy lacks, come back as float32 arrays (exact values)."""
        current = self._get()
        self._set(np.asarray(theta, dtype=np.float64))
        arrays = {k: to_numpy(v) for k, v in self.model.state_dict().items()}
        self._set(current)
        return arrays

    def set_initial(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Start from the user's ``state_dict`` (all keys, same shapes; strict). Values are
        rounded to the model's dtypes (e.g. float32 arrays into a bfloat16 model)."""
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
                yield self._to_device(batch)
            if not yielded:
                raise ValueError(
                    f"{self.name}: empty partition (the training loader yields no batches)"
                )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=self.lr)
        raise ValueError(f"unknown optimizer {self.optimizer!r}")

    def solve(self, linear: np.ndarray, weight: float, start: np.ndarray, key: Key) -> np.ndarray:
        self._set(start)
        lin = torch.from_numpy(np.asarray(linear, dtype=self._np_dtype)).to(self.device)
        opt = self._make_optimizer()
        self.model.train()
        with _fixed_seed(self.train_loader, batch_seed(key)):
            batches = self._batches()
            batch = next(batches)
            for step in range(self.local_steps):
                if step and not self.same_batch:
                    batch = next(batches)
                inputs, targets = self._pair(batch, "training")
                flat = self._flat()
                loss = self._training_loss(inputs, targets)
                if not torch.isfinite(loss):
                    why = _nonfinite_cause(
                        inputs,
                        targets,
                        "training",
                        _step_advice(key[2], step, "lower lr or rho"),
                        self._outputs(inputs),
                    )
                    raise FloatingPointError(
                        f"{self.name}: loss is {loss.item()} at iteration {key[2]}, "
                        f"local step {step + 1}; {why}"
                    )
                total = loss - lin @ flat + 0.5 * weight * (flat @ flat)
                opt.zero_grad()
                total.backward()
                opt.step()
        return self._get()

    @torch.no_grad()
    def _outputs(self, inputs: Any) -> Any:
        """The model's outputs on ``inputs``, for the message of a non-finite loss."""
        try:
            return self.model(inputs)
        except Exception:  # noqa: BLE001 - a diagnosis only: without it, the plain advice
            return None

    def _training_loss(self, inputs: Any, targets: Any) -> torch.Tensor:
        """:meth:`_batch_loss` of a training batch; a model failing on a batch of one
        sample (BatchNorm in training mode: ``Expected more than 1 value per channel``) is
        named with the fix, ``drop_last=True``."""
        try:
            return self._batch_loss(inputs, targets)
        except (RuntimeError, ValueError) as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            raise ValueError(
                f"{self.name}: the model fails on a training batch of 1 sample "
                f"({type(exc).__name__}: {exc}); BatchNorm and other batch statistics "
                "need 2 or more in training mode: pass drop_last=True to the training "
                "DataLoader (or a batch size that leaves no batch of 1)"
            ) from exc

    def _batch_loss(self, inputs: Any, targets: Any) -> torch.Tensor:
        """The training loss of one batch (``loss_fn``, times the batch's sample count
        with ``loss_reduction="sum"``)."""
        loss = self._loss(self.model(inputs), targets)
        if not loss.requires_grad:
            raise ValueError(
                f"{self.name}: the training loss does not depend on the model's trainable "
                "parameters (it has no grad_fn): loss_fn must return the loss as a tensor "
                "of the outputs, not detached from them"
            )
        return loss * _count(targets) if self.summed else loss

    def _loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """``loss_fn(outputs, targets)``, which must be a one-element tensor (the mean over
        the batch), else a ValueError naming the worker and what it returned."""
        loss = self.loss_fn(outputs, targets)
        if not torch.is_tensor(loss) or loss.numel() != 1:
            got = f"shape {tuple(loss.shape)}" if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(
                f"{self.name}: loss_fn must return a one-element tensor (the batch's mean "
                f"loss), got {got}"
            )
        return loss

    def gradient(self, theta: np.ndarray, key: Key) -> np.ndarray:
        """Gradient of the loss on one mini-batch at ``theta`` (drawn as in :meth:`solve`)."""
        self._set(theta)
        self.model.train()
        with _fixed_seed(self.train_loader, batch_seed(key)):
            inputs, targets = self._pair(next(self._batches()), "training")
            loss = self._training_loss(inputs, targets)
            if not torch.isfinite(loss):
                why = _nonfinite_cause(
                    inputs,
                    targets,
                    "training",
                    _step_advice(key[2], 0, "lower the step"),
                    self._outputs(inputs),
                )
                raise FloatingPointError(
                    f"{self.name}: loss is {loss.item()} at iteration {key[2]}; {why}"
                )
            # a parameter the loss does not use has a zero gradient
            grads = torch.autograd.grad(
                loss, self.params, allow_unused=True, materialize_grads=True
            )
        return torch.cat([g.reshape(-1).to("cpu", torch.float64) for g in grads]).numpy()

    # ------------------------------------------------------------------ reporting
    @torch.no_grad()
    def _pass(
        self, loader: DataLoader, theta: np.ndarray, data: str = "test"
    ) -> tuple[float, float | None]:
        """(mean loss, accuracy) of ``theta`` on ``loader`` (eval mode); the accuracy is
        None unless every batch is classification (outputs (B, C > 1), integer targets
        (B,)). Iterated under the fixed seed :data:`EVAL_SEED` (:func:`_fixed_seed`): the
        same numbers on every call (random augmentations included), and the caller's RNG
        untouched."""
        current = self._get()
        self._set(theta)
        self.model.eval()
        loss_sum = correct = count = 0.0
        classify = True
        try:
            with _fixed_seed(loader, EVAL_SEED):
                for batch in loader:
                    inputs, targets = self._pair(self._to_device(batch), data)
                    out = self.model(inputs)
                    loss = float(self._loss(out, targets))
                    if not math.isfinite(loss):
                        why = _nonfinite_cause(inputs, targets, data, outputs=out)
                        raise FloatingPointError(
                            f"{self.name}: loss is {loss} on its {data} data in eval mode "
                            f"(model.eval()); {why}"
                        )
                    n = _count(targets)
                    loss_sum += loss * n
                    classify = classify and _is_classification(out, targets)
                    if classify:
                        correct += float((out.argmax(dim=1) == targets).sum())
                    count += n
        finally:
            self._set(current)
        if count == 0:
            raise ValueError(
                f"{self.name}: empty partition (the training loader yields no batches)"
                if data == "training"
                else f"{self.name}: the {data} loader yields no batches"
            )
        return loss_sum / count, (correct / count if classify else None)

    def objective(self, theta: np.ndarray) -> float:
        """Mean training loss of ``theta`` on this worker's data (class notes)."""
        return self._pass(self._train_eval, theta, "training")[0]

    def evaluate(self, theta: np.ndarray) -> dict[str, float]:
        """``{"accuracy"}`` on the test loader for classification, else ``{"test_loss"}``
        (mean loss); ``{}`` without a test loader."""
        if self.test_loader is None:
            return {}
        loss, accuracy = self._pass(self.test_loader, theta, "test")
        return {"test_loss": loss} if accuracy is None else {"accuracy": accuracy}

    # ------------------------------------------------------------------ buffers
    def _kept(self) -> dict[str, torch.Tensor]:
        """What the model holds beyond theta: its buffers and its frozen parameters (those
        without ``requires_grad``, e.g. a backbone from ``set_initial``)."""
        kept = dict(self.model.named_buffers())
        kept.update((n, p) for n, p in self.model.named_parameters() if not p.requires_grad)
        return kept

    def extra_state(self) -> dict[str, np.ndarray]:
        """This worker's buffers and frozen parameters as numpy arrays (bfloat16 ones as
        float32, exact): what a solver rebuilt for the next message must get back."""
        return {name: to_numpy(t) for name, t in self._kept().items()}

    def load_extra_state(self, state: Mapping[str, np.ndarray]) -> None:
        kept = self._kept()
        if set(state) != set(kept):
            raise ValueError(
                f"{self.name}: saved buffers and frozen parameters {sorted(state)} != "
                f"{sorted(kept)}"
            )
        with torch.no_grad():
            for name, value in state.items():
                kept[name].copy_(torch.from_numpy(np.array(value)).reshape(kept[name].shape))
