"""Malcom-PSGD's claimed O(1/sqrt(t)) rate, measured on a problem whose full gradient we
compute ourselves.

Run: ``python simulations/malcom_rate.py [--horizons 100 200 400 800 1600] [--seeds 0]
[--algorithms malcom-psgd choco-sgd d-psgd] [--task digits|linreg] [--model softmax|mlp]
[--eta0 0.2] [--gamma 0.1] [--jobs 2]``. The defaults are 14,100 rounds of 8 workers
(about 25 ms a round for Malcom-PSGD, 19 ms for the others, on one core): a few minutes
with two processes; docs/experiments/malcom-rate.md has seeds 0-2.

The claim (Campbell et al., arXiv 2311.05760 v2): with a constant consensus step gamma
and a constant learning rate, Malcom-PSGD reaches an O(1/sqrt(t)) stationarity rate on
smooth non-convex losses plus an l1 term. Read as usual for a constant-step result: for a
horizon T, run with eta = c / sqrt(T) (constant during the run) and report

    A(T) = (1/T) sum_{t=1..T} ||G(xbar_t)||^2,
    G(x) = (x - prox_{eta mu ||.||_1}(x - eta grad f(x))) / eta,
    f(x) = (1/n) sum_i f_i(x)        (G = grad f when mu = 0),

with xbar_t the average of the n workers' models after round t (the package's evaluation
callback receives exactly that mean every round, ``evaluate-every = 1``). The claim is
A(T) = O(1/sqrt(T)): the slope of log A(T) against log T should be -0.5 or steeper.

What runs: the package's own algorithms (``run_from_config``: quantized, source-coded,
with the l1 prox for Malcom-PSGD) on ``--task digits`` (softmax regression on the
scikit-learn digits, d = 650, mini-batches of 32, IID shards; ``--model mlp``: the
package's digits MLP 64-64-10 with ReLU, d = 4810, non-convex) or ``--task linreg``
(the synthetic least squares, full-batch gradients), a ring of 8 by default. The full
gradient and the objective of f are computed here, in numpy, from the workers' shards
(:class:`SoftmaxObjective`, :class:`MlpObjective`, :class:`LeastSquaresObjective`),
independently of the package's solvers; before the runs the script compares them with
the package's solvers at a random point (full-batch ``solver.gradient`` and
``solver.objective``) and prints the relative differences (float32 round-off for torch,
~1e-15 for least squares).

Two schedules per algorithm:

- ``scaled``: eta = eta0 * sqrt(T0 / T) for each horizon T (T0 the smallest horizon):
  one run per horizon and seed. This is the claim's setting.
- ``fixed``: eta = eta0 for every horizon: one run of the largest horizon per seed; A(T)
  for the shorter horizons are its prefix averages (the package draws every random number
  from (seed, worker, iteration), so the run of horizon T is the prefix of the longer
  one; the script checks this at T0, where both schedules have the same eta). A constant
  step converges to a neighbourhood: A(T) flattens at the noise floor.

Each algorithm is measured on its own objective: mu = ``--l1`` for Malcom-PSGD, mu = 0
(G = grad f) for CHOCO-SGD (dithered QSGD s = 16, fixed-width codec) and D-PSGD.

Output (printed, and ``results/<time>-malcom-rate-<task>[-<model>]/summary.md``, with the
per-iteration series of every run in ``runs.jsonl``, written as the runs finish:
``--from-series <folder>`` summarizes an interrupted run). Per algorithm, schedule and
horizon, means over seeds of: A(T) and A(T) sqrt(T) (bounded if the claim holds);
min_t ||G(xbar_t)||^2 and the last ||G(xbar_T)||^2; the consensus error
(1/n) sum_i ||x_i - xbar||^2, averaged over the run and at T (CHOCO / Malcom rows report
the workers' half steps x^{t+1/2}, whose mean equals the mean after the consensus step,
W being symmetric and doubly stochastic); F(xbar_T) = f(xbar_T) + mu ||xbar_T||_1;
``descent`` = eta T A(T) / (F(x_0) - F(xbar_T)), near 1 when the mean model descends as
gradient descent on F does, so that A(T) ~ (F(x_0) - F*) / (eta T), O(1/sqrt(T)) for
eta ~ 1/sqrt(T); the workers' fraction of zero entries; the measured bits (all workers,
cumulative). Then the fitted slopes of log A(T), log min_t, log cons and log(A + cons)
against log T. A ``scaled`` slope of -0.5 or steeper is consistent with the claim; a
flatter one with a bounded A sqrt(T) and descent near 1 is the pre-asymptotic regime of
the same bound (F(xbar_T) still falling); a ``fixed`` slope near 0 is the constant-step
floor.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from flower_qgadmm.settings import positive_int

ALGORITHMS = ("malcom-psgd", "choco-sgd", "d-psgd")


# ---------------------------------------------------------------------- the objective
class SoftmaxObjective:
    """f(theta) = (1/n) sum_i mean_{(x, y) in shard i} -log softmax(W x + b)_y, with
    theta = [W (C x p, row-major), b (C)]: torch's nn.Linear parameter order."""

    def __init__(self, shards: list[tuple[np.ndarray, np.ndarray]], classes: int = 10) -> None:
        self.shards = [(np.asarray(x, np.float64), np.asarray(y, np.int64)) for x, y in shards]
        self.classes = classes
        self.features = self.shards[0][0].shape[1]
        self.dim = classes * self.features + classes

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, p = self.classes, self.features
        return theta[: c * p].reshape(c, p), theta[c * p :]

    def _probabilities(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        weight, bias = self._split(theta)
        logits = x @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def local_value(self, i: int, theta: np.ndarray) -> float:
        x, y = self.shards[i]
        p = self._probabilities(x, theta)
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))

    def local_gradient(self, i: int, theta: np.ndarray) -> np.ndarray:
        x, y = self.shards[i]
        r = self._probabilities(x, theta)
        r[np.arange(len(y)), y] -= 1.0
        r /= len(y)
        return np.concatenate([(r.T @ x).reshape(-1), r.sum(axis=0)])

    def value(self, theta: np.ndarray) -> float:
        return float(np.mean([self.local_value(i, theta) for i in range(len(self.shards))]))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        return np.mean([self.local_gradient(i, theta) for i in range(len(self.shards))], axis=0)


class MlpObjective(SoftmaxObjective):
    """The same loss for the digits MLP 64-h-10 with ReLU (non-convex): theta = [W1 (h x p),
    b1 (h), W2 (C x h), b2 (C)], nn.Sequential(Linear, ReLU, Linear)'s parameter order."""

    def __init__(
        self, shards: list[tuple[np.ndarray, np.ndarray]], hidden: int = 64, classes: int = 10
    ) -> None:
        super().__init__(shards, classes)
        self.hidden = hidden
        p, h = self.features, hidden
        self.dim = h * p + h + classes * h + classes

    def _layers(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        p, h, c = self.features, self.hidden, self.classes
        sizes = np.cumsum([h * p, h, c * h])
        w1, b1, w2, b2 = np.split(theta, sizes)
        return w1.reshape(h, p), b1, w2.reshape(c, h), b2

    def _forward(self, x: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w1, b1, w2, b2 = self._layers(theta)
        hidden = np.maximum(x @ w1.T + b1, 0.0)
        logits = hidden @ w2.T + b2
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return hidden, e / e.sum(axis=1, keepdims=True)

    def _probabilities(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return self._forward(x, theta)[1]

    def local_gradient(self, i: int, theta: np.ndarray) -> np.ndarray:
        x, y = self.shards[i]
        _, _, w2, _ = self._layers(theta)
        hidden, r = self._forward(x, theta)
        r[np.arange(len(y)), y] -= 1.0
        r /= len(y)
        back = (r @ w2) * (hidden > 0)
        parts = [back.T @ x, back.sum(axis=0), r.T @ hidden, r.sum(axis=0)]
        return np.concatenate([part.reshape(-1) for part in parts])


class LeastSquaresObjective:
    """f(theta) = (1/n) sum_i [ 1/2 ||X_i theta - y_i||^2 + (l2/2) ||theta||^2 ]."""

    def __init__(self, shards: list[tuple[np.ndarray, np.ndarray]], l2: float = 0.0) -> None:
        self.shards = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in shards]
        self.l2 = float(l2)
        self.dim = self.shards[0][0].shape[1]

    def local_value(self, i: int, theta: np.ndarray) -> float:
        x, y = self.shards[i]
        r = x @ theta - y
        return 0.5 * float(r @ r) + 0.5 * self.l2 * float(theta @ theta)

    def local_gradient(self, i: int, theta: np.ndarray) -> np.ndarray:
        x, y = self.shards[i]
        return x.T @ (x @ theta - y) + self.l2 * theta

    def value(self, theta: np.ndarray) -> float:
        return float(np.mean([self.local_value(i, theta) for i in range(len(self.shards))]))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        return np.mean([self.local_gradient(i, theta) for i in range(len(self.shards))], axis=0)


def shrink(v: np.ndarray, a: float) -> np.ndarray:
    """prox of a ||.||_1 (soft thresholding), written here, not imported."""
    return np.sign(v) * np.maximum(np.abs(v) - a, 0.0)


def gradient_mapping(objective, x: np.ndarray, eta: float, mu: float) -> np.ndarray:
    """G(x) = (x - prox_{eta mu ||.||_1}(x - eta grad f(x))) / eta; grad f(x) if mu = 0."""
    g = objective.gradient(x)
    if mu <= 0:
        return g
    return (x - shrink(x - eta * g, eta * mu)) / eta


# ---------------------------------------------------------------------- the set-up
def base_settings(args: argparse.Namespace, seed: int) -> dict:
    """The run-config keys every run of the task shares."""
    out = {
        "task": args.task,
        "num-workers": args.workers,
        "topology": args.topology,
        "seed": seed,
        "evaluate-every": 1,  # the mean model of every round
        "checkpoint-every": 0,
    }
    if args.task == "digits":
        model = "auto" if args.model == "mlp" else "softmax"  # auto: the MLP 64-64-10
        out.update({"model": model, "batch-size": args.batch_size, "partition": "iid"})
    return out


def algorithm_settings(algorithm: str, eta: float, args: argparse.Namespace) -> dict:
    out = {"algorithm": algorithm, "step-size": eta}
    if algorithm != "d-psgd":
        out["consensus-step"] = args.gamma
    if algorithm == "malcom-psgd":
        out["l1"] = args.l1
    return out


def mu_of(algorithm: str, args: argparse.Namespace) -> float:
    return args.l1 if algorithm == "malcom-psgd" else 0.0


def _keep(batch):
    """collate_fn of :func:`fast_image_solvers`: the batch is already collated."""
    return batch


def fast_image_solvers(cfg, data) -> list:
    """The workers' solvers of ``image_solver`` (the package's TorchSolver, shard, model,
    seed, loss and settings), built for speed: no test loader (the runs need no test
    accuracy; the package evaluates it in every evaluation round) and a dataset that
    hands out a batch at once (torch's ``__getitems__``: the same samples in the same
    order as per-sample indexing and collation). The runs are those of ``image_solver``'s
    solvers (tests/test_malcom_rate.py compares them)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from flower_qgadmm.image_task import model_fn, worker_indices
    from flower_qgadmm.torch_solver import TorchSolver, seeded_model

    class BatchedTensors(TensorDataset):
        def __getitems__(self, indices):
            idx = torch.as_tensor(indices)
            return tuple(t[idx] for t in self.tensors)

    solvers = []
    s = cfg.solver
    for w, idx in enumerate(worker_indices(cfg, data)):
        x, y = torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx])
        train = DataLoader(
            BatchedTensors(x, y), batch_size=cfg.batch_size, shuffle=True, collate_fn=_keep
        )
        solvers.append(
            TorchSolver(
                seeded_model(model_fn(cfg), cfg.seed),
                train,
                nn.CrossEntropyLoss(),
                None,
                optimizer=s.optimizer,
                lr=s.lr,
                local_steps=s.local_steps,
                name=f"worker {w}",
                device=s.device,
                same_batch=s.same_batch,
                loss_reduction=s.loss_reduction,
            )
        )
    return solvers


def task_problem(cfg, full_batch: bool = False, fast: bool = False):
    """(solvers, objective) of a run config: the package's solvers and our objective over
    the same shards (the package's data loading and partition; nothing else shared).
    ``full_batch``: image solvers whose one mini-batch is the whole shard; ``fast``:
    :func:`fast_image_solvers`."""
    if cfg.task == "linreg":
        from flower_qgadmm.data import experiment_datasets
        from flower_qgadmm.reference import least_squares_solvers

        shards = experiment_datasets(cfg)
        return least_squares_solvers(shards, cfg.l2), LeastSquaresObjective(shards, cfg.l2)
    from flower_qgadmm.image_task import image_solver, load_task_data, worker_indices

    data = load_task_data(cfg)
    if full_batch:  # one mini-batch holds the whole shard
        cfg = cfg.replace(**{"batch-size": len(data.y_train)})
    idx = worker_indices(cfg, data)
    shards = [(data.x_train[i], data.y_train[i]) for i in idx]
    if fast:
        solvers = fast_image_solvers(cfg, data)
    else:
        solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
    if cfg.model == "softmax":
        return solvers, SoftmaxObjective(shards)
    if cfg.task == "digits":  # model "auto": the MLP 64-64-10 with ReLU
        return solvers, MlpObjective(shards)
    raise ValueError(f"no numpy objective for task {cfg.task!r}, model {cfg.model!r}")


def check_objective(cfg, seed: int = 12345) -> dict[str, float]:
    """Relative differences between our f, grad f and the package's (the mean over the
    workers of ``solver.objective`` and of a full-batch ``solver.gradient``) at a random
    point: the numpy objective is the function the package optimizes."""
    solvers, objective = task_problem(cfg, full_batch=True)
    theta = np.random.default_rng(seed).standard_normal(objective.dim) * 0.1
    values = [s.objective(theta) for s in solvers]
    grads = [s.gradient(theta, (cfg.seed, w, 0)) for w, s in enumerate(solvers)]
    theirs_f, theirs_g = float(np.mean(values)), np.mean(grads, axis=0)
    ours_f, ours_g = objective.value(theta), objective.gradient(theta)
    return {
        "objective": abs(ours_f - theirs_f) / abs(theirs_f),
        "gradient": float(np.linalg.norm(ours_g - theirs_g) / np.linalg.norm(theirs_g)),
    }


# ---------------------------------------------------------------------- one run
def one_run(job: tuple) -> dict:
    """One reference run: per-round ||G(xbar_t)||^2, F(xbar_t) + mu||xbar_t||_1 and
    consensus error; final bits and sparsity."""
    import torch

    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.reference import run_from_config

    torch.set_num_threads(1)
    algorithm, schedule, horizon, eta, seed, args = job
    fast = getattr(args, "fast", True)
    settings = {
        **base_settings(args, seed),
        **algorithm_settings(algorithm, eta, args),
        "num-iterations": horizon,
    }
    cfg = RunConfig.from_run_config(settings)
    solvers, objective = task_problem(cfg, fast=fast)
    mu = mu_of(algorithm, args)

    def evaluate(xbar: np.ndarray) -> dict[str, float]:
        g = gradient_mapping(objective, xbar, eta, mu)
        value = objective.value(xbar) + mu * float(np.abs(xbar).sum())
        return {"rate_gsq": float(g @ g), "rate_value": value}

    start = solvers[0].initial()  # every worker's (one seeded model)
    value0 = objective.value(start) + mu * float(np.abs(start).sum())
    t0 = time.perf_counter()
    rows = run_from_config(cfg, solvers, evaluate=evaluate).history
    seconds = time.perf_counter() - t0
    return {
        "algorithm": algorithm,
        "schedule": schedule,
        "horizon": horizon,
        "eta": eta,
        "seed": seed,
        "gsq": [r["rate_gsq"] for r in rows],
        "value": [r["rate_value"] for r in rows],
        "consensus": [r["consensus_error"] ** 2 for r in rows],
        "bits": [int(r["bits"]) for r in rows],
        "sparsity": [float(r.get("sparsity", 0.0)) for r in rows],
        "value0": value0,
        "seconds": seconds,
    }


def initial_value(args: argparse.Namespace, algorithm: str, seed: int) -> float:
    """f(x_0) + mu ||x_0||_1 of a run (for series written without it)."""
    from flower_qgadmm.config import RunConfig

    cfg = RunConfig.from_run_config(
        {**base_settings(args, seed), **algorithm_settings(algorithm, args.eta0, args)}
    )
    solvers, objective = task_problem(cfg, fast=True)
    start, mu = solvers[0].initial(), mu_of(algorithm, args)
    return objective.value(start) + mu * float(np.abs(start).sum())


def summarize(run: dict, horizon: int) -> dict[str, float]:
    """The figures of the first ``horizon`` rounds of a run; ``descent`` = eta T A(T) /
    (F(x_0) - F(xbar_T)): about 1 when the mean model descends as gradient descent on F
    does (sum_t eta ||G||^2 ~ the decrease of F), so that A(T) ~ (F(x_0) - F*) / (eta T),
    O(1/sqrt(T)) for eta ~ 1/sqrt(T)."""
    gsq = np.asarray(run["gsq"][:horizon])
    consensus = np.asarray(run["consensus"][:horizon])
    drop = run["value0"] - run["value"][horizon - 1]
    return {
        "descent": run["eta"] * horizon * float(gsq.mean()) / drop if drop > 0 else math.nan,
        "A": float(gsq.mean()),
        "min": float(gsq.min()),
        "last": float(gsq[-1]),
        "consensus_mean": float(consensus.mean()),
        "consensus_last": float(consensus[-1]),
        "value": float(run["value"][horizon - 1]),
        "bits": float(run["bits"][horizon - 1]),
        "sparsity": float(run["sparsity"][horizon - 1]),
    }


def slope(horizons: list[int], values: list[float]) -> float:
    """Least-squares slope of log(values) against log(horizons)."""
    if len(horizons) < 2:
        return float("nan")
    return float(np.polyfit(np.log(horizons), np.log(values), 1)[0])


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits", choices=["digits", "linreg"])
    parser.add_argument(
        "--horizons", type=positive_int, nargs="+", default=[100, 200, 400, 800, 1600]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS)
    )
    parser.add_argument(
        "--eta0",
        type=float,
        default=0.0,
        help="step size at the smallest horizon, and the fixed schedule's step (0: the "
        "task's default: digits 0.2; linreg (1 + lambda_min(W)) / (2 L_max), the package's "
        "automatic gossip step)",
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=0.1,
        help="consensus step (CHOCO, Malcom); 0.1 as measured in docs/experiments/malcom-rate.md, "
        "0: the package's automatic min(0.1, 2 / tau)",
    )
    parser.add_argument("--l1", type=float, default=2e-4, help="Malcom-PSGD's mu")
    parser.add_argument(
        "--model",
        default="softmax",
        choices=["softmax", "mlp"],
        help="digits: softmax regression (convex, d = 650) or the MLP 64-64-10 with ReLU "
        "(non-convex, d = 4810)",
    )
    parser.add_argument("--workers", type=positive_int, default=8)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="digits")
    parser.add_argument(
        "--schedules", nargs="+", default=["scaled", "fixed"], choices=["scaled", "fixed"]
    )
    parser.add_argument("--jobs", type=positive_int, default=2, help="processes")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument(
        "--from-series",
        default="",
        help="a results folder this script wrote (settings.json, runs.jsonl): print its "
        "summary from the runs finished so far, run nothing",
    )
    args = parser.parse_args()
    if args.from_series:
        folder = Path(args.from_series)
        saved = json.loads((folder / "settings.json").read_text())
        for key, value in saved["settings"].items():
            setattr(args, key, value)
        with (folder / "runs.jsonl").open() as fh:
            runs = [json.loads(line) for line in fh if line.strip()]
        seconds = sum(r["seconds"] for r in runs)
        print("\n".join(report(runs, args, saved["check"], seconds)))
        return
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.history import new_run_dir

    horizons = sorted(set(args.horizons))
    t0 = time.perf_counter()
    probe = RunConfig.from_run_config(
        {**base_settings(args, args.seeds[0]), **algorithm_settings("malcom-psgd", 0.1, args)}
    )
    if args.eta0 <= 0:
        if args.task == "digits":
            args.eta0 = 0.2
        else:
            solvers, _ = task_problem(probe)
            smooth = max(float(np.linalg.eigvalsh(s.X.T @ s.X)[-1]) for s in solvers)
            weights = probe.mixing_weights()
            if isinstance(weights, str):
                weights = probe.graph.mixing_matrix(weights)
            lam_min = float(np.linalg.eigvalsh(weights)[0])
            args.eta0 = (1.0 + lam_min) / (2.0 * smooth)
    check = check_objective(probe)
    print(
        f"numpy objective vs the package's solvers at a random point (seed {args.seeds[0]}): "
        f"relative difference of f {check['objective']:.2e}, of grad f {check['gradient']:.2e}",
        flush=True,
    )
    label = f"{args.task}-{args.model}" if args.task == "digits" else args.task
    out = new_run_dir(args.results_dir, f"malcom-rate-{label}")
    settings = {k: v for k, v in vars(args).items() if k != "from_series"}
    (out / "settings.json").write_text(json.dumps({"settings": settings, "check": check}))
    print(f"writing {out} (runs.jsonl as they finish; --from-series {out} for a summary)")

    def eta_of(schedule: str, horizon: int) -> float:
        if schedule == "fixed":
            return args.eta0
        return args.eta0 * math.sqrt(horizons[0] / horizon)

    jobs = []  # seed by seed: an interrupted run leaves whole seeds of every algorithm
    for seed in args.seeds:
        for algorithm in args.algorithms:
            if "scaled" in args.schedules:
                for h in horizons:
                    jobs.append((algorithm, "scaled", h, eta_of("scaled", h), seed, args))
            if "fixed" in args.schedules:  # one run of the largest horizon
                jobs.append((algorithm, "fixed", horizons[-1], args.eta0, seed, args))
    runs: list[dict] = []

    def keep(run: dict) -> None:
        runs.append(run)
        with (out / "runs.jsonl").open("a") as fh:
            fh.write(json.dumps(run) + "\n")
        print_run(run, t0)

    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for run in pool.map(one_run, jobs):
                keep(run)
    else:
        for job in jobs:
            keep(one_run(job))
    lines = report(runs, args, check, time.perf_counter() - t0)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def report(runs: list[dict], args: argparse.Namespace, check: dict, total: float) -> list[str]:
    """The summary's lines (markdown tables) from the runs."""
    horizons = sorted(set(args.horizons))

    def eta_of(schedule: str, horizon: int) -> float:
        if schedule == "fixed":
            return args.eta0
        return args.eta0 * math.sqrt(horizons[0] / horizon)

    table: dict[tuple[str, str], dict[int, list[dict]]] = {}
    starts: dict[tuple[str, int], float] = {}
    for run in runs:
        if "value0" not in run:  # a series written before the script recorded it
            key = (run["algorithm"], run["seed"])
            if key not in starts:
                starts[key] = initial_value(args, *key)
            run["value0"] = starts[key]
    for run in runs:
        key = (run["algorithm"], run["schedule"])
        if run["schedule"] == "fixed":
            for h in horizons:
                table.setdefault(key, {}).setdefault(h, []).append(summarize(run, h))
        else:
            table.setdefault(key, {}).setdefault(run["horizon"], []).append(
                summarize(run, run["horizon"])
            )
    prefix_check = []  # the fixed run's prefix is the scaled T0 run (the same eta)
    for f in (r for r in runs if r["schedule"] == "fixed"):
        for s in runs:
            same = (s["algorithm"], s["seed"]) == (f["algorithm"], f["seed"])
            if same and s["schedule"] == "scaled" and s["horizon"] == horizons[0]:
                n = horizons[0]
                prefix_check.append(f["gsq"][:n] == s["gsq"] and f["bits"][:n] == s["bits"])
    what = f"{args.task} ({args.model})" if args.task == "digits" else args.task
    lines = [
        f"# Malcom-PSGD rate check on {what}: {args.topology} of {args.workers} workers",
        "",
        f"eta0 = {args.eta0:.4g} (scaled: eta = eta0 sqrt({horizons[0]} / T); fixed: eta = "
        f"eta0), gamma = {args.gamma:g}, Malcom mu = {args.l1:g}, seeds {args.seeds}"
        + (f", batch {args.batch_size}" if args.task == "digits" else ", full-batch gradients"),
        "",
        f"numpy objective vs package: relative difference f {check['objective']:.1e}, "
        f"grad f {check['gradient']:.1e}"
        + (
            f"; fixed run's first {horizons[0]} rounds identical to the scaled T0 run: "
            f"{all(prefix_check)} ({len(prefix_check)} pairs)"
            if prefix_check
            else ""
        ),
        "",
        "Means over seeds. A(T) = (1/T) sum_t ||G(xbar_t)||^2; A sqrt(T) (bounded if the "
        "claim holds); min = min_t; last = ||G(xbar_T)||^2; cons = (1/n) sum_i "
        "||x_i - xbar||^2 (mean over the run / at T); F = f(xbar_T) + mu ||xbar_T||_1; "
        "descent = eta T A(T) / (F(x_0) - F(xbar_T)) (near 1: the mean model descends as "
        "gradient descent does, A(T) ~ (F(x_0) - F*) / (eta T)); "
        "zeros = the workers' fraction of zero entries at T; bits = measured, all workers, "
        "cumulative.",
        "",
        "| algorithm | schedule | T | eta | A(T) | A sqrt(T) | min | last | cons (mean) "
        "| cons (T) | F(xbar_T) | descent | zeros | bits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    slopes = []
    for (algorithm, schedule), by_h in table.items():
        hs = sorted(by_h)
        means = {h: {k: float(np.mean([s[k] for s in by_h[h]])) for k in by_h[h][0]} for h in hs}
        for h in hs:
            m = means[h]
            lines.append(
                f"| {algorithm} | {schedule} | {h} | {eta_of(schedule, h):.4g} | {m['A']:.4g} "
                f"| {m['A'] * math.sqrt(h):.3g} | {m['min']:.4g} | {m['last']:.4g} "
                f"| {m['consensus_mean']:.3g} | {m['consensus_last']:.3g} | {m['value']:.5g} "
                f"| {m['descent']:.3f} | {m['sparsity']:.3f} | {m['bits']:,.0f} |"
            )
        tail = hs[-3:]
        slopes.append(
            (
                algorithm,
                schedule,
                slope(hs, [means[h]["A"] for h in hs]),
                slope(tail, [means[h]["A"] for h in tail]),
                slope(hs, [means[h]["min"] for h in hs]),
                slope(hs, [means[h]["consensus_mean"] for h in hs]),
                slope(hs, [means[h]["A"] + means[h]["consensus_mean"] for h in hs]),
            )
        )
    lines += [
        "",
        "Slopes of log(.) against log T (the claim, for the scaled schedule: A(T) slope "
        "<= -0.5; A + cons: the stationarity measure with the consensus error added):",
        "",
        "| algorithm | schedule | A(T), all T | A(T), largest 3 T | min_t, all T "
        "| cons (mean), all T | A + cons (mean), all T | A(T) slope <= -0.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algorithm, schedule, s_all, s_tail, s_min, s_cons, s_both in slopes:
        verdict = "yes" if s_all <= -0.5 + 0.05 else "no"
        lines.append(
            f"| {algorithm} | {schedule} | {s_all:.3f} | {s_tail:.3f} | {s_min:.3f} "
            f"| {s_cons:.3f} | {s_both:.3f} "
            f"| {verdict if schedule == 'scaled' else '(not the claim)'} |"
        )
    lines += ["", f"{len(runs)} runs, {sum(r['horizon'] for r in runs):,} rounds, {total:.0f} s"]
    return lines


def print_run(run: dict, t0: float) -> None:
    s = summarize(run, run["horizon"])
    print(
        f"[{time.perf_counter() - t0:6.0f}s] {run['algorithm']} {run['schedule']} "
        f"T={run['horizon']} eta={run['eta']:.4g} seed {run['seed']}: A {s['A']:.4g} "
        f"last {s['last']:.4g} cons {s['consensus_last']:.3g} bits {s['bits']:,.0f} "
        f"({run['seconds']:.1f}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
