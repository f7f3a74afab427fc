"""One real ``flwr run .`` (Flower's simulation engine), checked against the reference runner.

Slow (Ray start-up, ~25 s per run on 2 cores): the two runs share one local SuperLink,
which the test stops by its process id. Deselect with ``-m 'not slow'``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.history import read_history
from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator
from flower_qgadmm.reference import least_squares_solvers, run_from_config
from flower_qgadmm.superlink import find_superlinks, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SETTINGS = {"num-workers": 4, "num-iterations": 8, "samples-per-worker": 20, "dim": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr-home")
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    yield env
    # the SuperLink this module started, and only its process tree (SuperExec, Ray), by pid
    assert stop(home, timeout=20) == 0
    assert not find_superlinks(home), "the local SuperLink did not stop"


def flwr_run(
    env: dict, results: Path, algorithm: str, settings: dict = SETTINGS, project: Path = ROOT
) -> tuple[str, list[dict]]:
    """``flwr run`` of ``project`` (this repository's app by default) with ``settings``
    and ``algorithm`` as run-config overrides, one SuperNode per worker; checks its run
    folder in ``results`` and returns the log and the history."""

    def toml(v):
        return f'"{v}"' if isinstance(v, str) else v

    overrides = " ".join(f"{k}={toml(v)}" for k, v in settings.items())
    overrides += f' algorithm="{algorithm}" results-dir="{results}"'
    proc = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            ".",
            "--stream",
            "--federation-config",
            f"num-supernodes={settings['num-workers']}",
            "--run-config",
            overrides,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    runs = sorted(results.glob(f"*-flower-{algorithm}"))
    assert proc.returncode == 0 and len(runs) == 1, log[-4000:]
    for name in ("history.png", "models.npz"):  # a run stopped at set-up still exits 0
        assert (runs[0] / name).is_file() and (runs[0] / name).stat().st_size > 0, log[-4000:]
    assert "ratio to FedAvg" in (runs[0] / "summary.md").read_text()
    assert any((runs[0] / name).exists() for name in ("model.npz", "model.pt"))
    return log, read_history(runs[0] / "history.jsonl")


def reference(settings: dict, algorithm: str, evaluate: bool = False) -> list[dict]:
    """The reference runner on the same settings, data and graph as the flwr run."""
    cfg = RunConfig.from_run_config({**settings, "algorithm": algorithm})
    if cfg.task == "linreg":
        solvers, evaluator = least_squares_solvers(experiment_datasets(cfg)), None
    else:
        data = load_task_data(cfg)
        solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
        evaluator = mean_model_evaluator(cfg, data)
    failure = cfg.failure()  # an injected failure is a departure in the reference
    removals = {failure[0]: failure[1]} if failure else cfg.removals()
    return run_from_config(cfg, solvers, evaluate=evaluator, removals=removals).history


@pytest.mark.slow
def test_flwr_run_equals_reference_for_gadmm_and_qgadmm(flower_env, tmp_path) -> None:
    cfg = RunConfig.from_run_config(SETTINGS)
    for algorithm in ("q-gadmm", "gadmm"):
        # Execute
        log, history = flwr_run(flower_env, tmp_path / algorithm, algorithm)
        expected = reference(SETTINGS, algorithm)
        # Assert: per-round progress was printed; the same numbers as the reference
        assert f"[ROUND {cfg.num_iterations}/{cfg.num_iterations}] gap=" in log
        assert len(history) == cfg.num_iterations
        for got, want in zip(history, expected, strict=True):
            assert {k: got[k] for k in want} == want  # bit for bit
            assert got["flower_bytes_up"] > 0 and got["flower_bytes_down"] > 0
        # lean replies: between two pulls, a round's upload is payloads plus scalars
        k = 5  # no model pull in round 5 (evaluate-every = 10)
        up = history[k - 1]["flower_train_bytes_up"] - history[k - 2]["flower_train_bytes_up"]
        sent = history[k - 1]["payload_bytes"] - history[k - 2]["payload_bytes"]
        assert sent < up < sent + cfg.num_workers * 200, (up, sent)
        assert history[k - 1]["flower_eval_bytes_up"] == 0


DIGITS = {
    "task": "digits",
    "num-workers": 3,
    "num-iterations": 3,
    "rho": 1.0,
    "dual-step": 0.01,
    "bits": 4,
    "local-steps": 2,
}


@pytest.mark.slow
def test_flwr_run_qsgadmm_digits_equals_reference(flower_env, tmp_path) -> None:
    # Q-SGADMM through Flower's engine (Ray actors) follows the reference trajectory
    # and so do SGADMM and the gossip family (one phase per round, mini-batch gradients)
    for algorithm in ("q-sgadmm", "sgadmm", "d-psgd", "choco-sgd", "malcom-psgd"):
        log, history = flwr_run(flower_env, tmp_path / algorithm, algorithm, DIGITS)
        expected = reference(DIGITS, algorithm)
        assert "mean-model-accuracy=" in log
        for got, want in zip(history, expected, strict=True):
            assert {k: got[k] for k in want} == want, algorithm


GOSSIP = {"num-workers": 5, "num-iterations": 30, "samples-per-worker": 20, "dim": 5}


@pytest.mark.slow
def test_flwr_run_dpsgd_on_odd_ring_equals_reference(flower_env, tmp_path) -> None:
    # The command: --run-config "algorithm='d-psgd' topology='ring'", 5 workers
    settings = {**GOSSIP, "topology": "ring"}
    log, history = flwr_run(flower_env, tmp_path, "d-psgd", settings)
    expected = reference(settings, "d-psgd")
    assert len(history) == 30 and "[ROUND 30/30] gap=" in log
    for got, want in zip(history, expected, strict=True):
        assert {k: got[k] for k in want} == want
    assert history[-1]["edge_disagreement"] < history[0]["edge_disagreement"]
    assert "consensus_error" in history[-1] and "consensus_error" not in history[0]
    assert history[-1]["transmissions"] == 5 * 30  # one broadcast per worker per round


@pytest.mark.slow
def test_flwr_run_garbage_sender_is_removed_and_resume_continues(flower_env, tmp_path) -> None:
    # Worker 2 sends truncated payloads from iteration 4 on: it (not its neighbours) leaves
    settings = {**SETTINGS, "num-workers": 5, "num-iterations": 12, "inject-failure": "2@4:garbage"}
    log, history = flwr_run(flower_env, tmp_path / "garbage", "q-gadmm", settings)
    assert "worker 2 leaves the run" in log and "sent a malformed payload" in log
    assert "worker 1 leaves" not in log and "worker 3 leaves" not in log
    # Resume: a 12-round run checkpointed at 10, continued to 20 by a second flwr run
    base = {**SETTINGS, "num-iterations": 12, "checkpoint-every": 5}
    flwr_run(flower_env, tmp_path / "cut", "q-gadmm", base)
    (run,) = (tmp_path / "cut").iterdir()
    resumed = {**base, "num-iterations": 20, "resume": str(run)}
    log, history = flwr_run(flower_env, tmp_path / "cut", "q-gadmm", resumed)
    assert "resumed from the checkpoint of iteration 10" in log
    expected = reference({**SETTINGS, "num-iterations": 20}, "q-gadmm")
    assert [{k: v for k, v in r.items() if not k.startswith("flower_")} for r in history] == (
        expected
    )


DROPOUT = {
    "num-workers": 6,
    "num-iterations": 40,
    "samples-per-worker": 20,
    "dim": 5,
    "bits": 3,
    "inject-failure": "2@10",
}


@pytest.mark.slow
def test_flwr_run_worker_dropout_repairs_the_chain(flower_env, tmp_path) -> None:
    # Worker 2's ClientApp fails from iteration 10 on: the run goes on, repaired
    log, history = flwr_run(flower_env, tmp_path, "q-gadmm", DROPOUT)
    expected = reference(DROPOUT, "q-gadmm")
    assert "worker 2 leaves the run" in log and "graph repaired" in log
    for got, want in zip(history, expected, strict=True):  # the failing worker got an inbox
        assert {k: got[k] for k in want if k != "relayed_bytes"} == {
            k: v for k, v in want.items() if k != "relayed_bytes"
        }
    assert history[-1]["objective_gap"] < 1e-6  # optimum of the remaining workers' data


@pytest.mark.slow
def test_flwr_run_of_a_users_project_outside_the_repo_equals_the_reference(
    flower_env, tmp_path
) -> None:
    # A user's project (clients/torch_example copied out of the repository: its own
    # pyproject, ServerApp, ClientApp, CNN and a Flower Datasets IidPartitioner), run as
    # docs/own-project.md says, equals the reference runner on the same solvers
    # (README: "The reference runner takes the same solvers ... the same history")
    import shutil

    from flwr.app import Context, RecordDict
    from torch import nn

    from flower_qgadmm.flower import torch_solver_fn
    from flower_qgadmm.reference import run_reference
    from flower_qgadmm.torch_solver import seeded_model

    project = tmp_path / "my-project"
    shutil.copytree(ROOT / "clients" / "torch_example", project)
    results = tmp_path / "results"  # absolute: the SuperLink may run from another folder
    run_config = {"num-workers": 3, "num-server-rounds": 3, "evaluate-every": 2}
    sys.path.insert(0, str(project))
    try:
        from torch_example.task import Net, test_loader, train_loader
    finally:
        sys.path.remove(str(project))
    for algorithm in ("q-sgadmm", "choco-sgd"):
        log, history = flwr_run(flower_env, results, algorithm, run_config, project)
        (run,) = results.glob(f"*-flower-{algorithm}")
        assert "final mean-model accuracy" in log, log[-4000:]
        assert (run / "model.pt").stat().st_size > 0
        # the reference runner on the project's own model and loaders, as a user builds it
        pyproject = (project / "pyproject.toml").read_text()
        declared = pytest.importorskip("tomllib").loads(pyproject)["tool"]["flwr"]["app"]
        given = {**declared["config"], **run_config, "algorithm": algorithm}
        cfg = RunConfig.from_run_config(given, strict=False)
        solver_fn = torch_solver_fn(Net, train_loader, test_loader, nn.CrossEntropyLoss())
        solvers = [
            solver_fn(
                Context(1, w, {"partition-id": w, "num-partitions": 3}, RecordDict(), given),
                cfg.solver,
                cfg.seed,
            )
            for w in range(3)
        ]
        initial = {k: v.numpy() for k, v in seeded_model(Net, cfg.seed).state_dict().items()}
        expected = run_reference(
            algorithm,
            solvers,
            3,
            cfg.algo,
            seed=cfg.seed,
            graph=cfg.graph,
            mixing=cfg.mixing_weights(),
            evaluate_every=cfg.evaluate_every,
            initial=initial,
        ).history
        assert len(history) == 3
        for got, want in zip(history, expected, strict=True):
            assert {k: got[k] for k in want} == want, algorithm
