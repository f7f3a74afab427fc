"""Checkpoint and exact resume: run 20; run 12 (checkpoint at 10), stop, resume to 20:
the same history and final models, in the reference runner and through Flower."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp

from clients.experiment.task import solver_fn
from flower_qgadmm import RunConfig
from flower_qgadmm.checkpoint import latest
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower import RelayStrategy, WorkerFailure, make_client_app
from flower_qgadmm.flower.client import partition_of
from flower_qgadmm.history import read_history
from flower_qgadmm.image_task import image_solver, load_task_data
from flower_qgadmm.reference import ReferenceResult, least_squares_solvers, run_from_config
from flower_qgadmm.testing import FakeGrid

ROOT = Path(__file__).resolve().parents[1]
LINREG = {"num-workers": 5, "samples-per-worker": 20, "dim": 5, "bits": 3}
DIGITS = {
    "task": "digits",
    "num-workers": 3,
    "rho": 1.0,
    "dual-step": 0.01,
    "bits": 4,
    "local-steps": 2,
}

#: how the refusal of changed settings ends: what to do to continue
CONTINUE = r" \(set them as the checkpoint has them to continue that run\)$"


@pytest.fixture(scope="module")
def app():
    sys.path.insert(0, str(ROOT))
    from clients.experiment.client_app import app

    return app


def config(algorithm: str, **extra) -> RunConfig:
    linreg = algorithm in ("gadmm", "q-gadmm") or extra.get("task") == "linreg"
    base = LINREG if linreg else DIGITS
    return RunConfig.from_run_config({**base, "algorithm": algorithm, **extra})


def solvers(cfg: RunConfig):
    if cfg.task == "linreg":
        return least_squares_solvers(experiment_datasets(cfg))
    data = load_task_data(cfg)
    return [image_solver(cfg, w, data) for w in range(cfg.num_workers)]


LINREG_GOSSIP = {"task": "linreg", "topology": "ring", "rho": 0.0, "dual-step": 0.0}


def whole_and_stopped(cfg: RunConfig, at: int, directory) -> ReferenceResult:
    """The whole run of ``cfg``; and the same run stopped after iteration ``at``, with a
    checkpoint of that iteration in ``directory``."""
    whole = run_from_config(cfg, solvers(cfg))
    run_from_config(
        cfg.replace(num_iterations=at),
        solvers(cfg),
        checkpoint_dir=str(directory),
        checkpoint_every=at,
    )
    return whole


@pytest.mark.parametrize(
    "algorithm, extra",
    [
        ("gadmm", {}),
        ("q-gadmm", {}),
        ("q-sgadmm", {}),
        ("choco-sgd", {}),
        # state beyond the models: the adaptive width's memory, the censored copies, a
        # worker that left before the checkpoint (the repaired graph), the source coder
        # and the prox, D-PSGD's deferred combine
        ("q-gadmm", {"adaptive-bits": True}),
        ("q-gadmm", {"censoring": True, "topology": "ring", "num-workers": 6}),
        ("q-gadmm", {"remove-workers": "2@7"}),
        ("malcom-psgd", {**LINREG_GOSSIP, "l1": 0.5}),
        ("d-psgd", {**LINREG_GOSSIP, "dpsgd-form": "adapt-combine"}),
        ("choco-sgd", {**LINREG_GOSSIP, "remove-workers": "1@4"}),
    ],
)
def test_reference_resume_equals_an_uninterrupted_run(algorithm, extra, tmp_path) -> None:
    cfg = config(algorithm, **{"num-iterations": 20, "evaluate-every": 3, **extra})
    whole = run_from_config(cfg, solvers(cfg))
    # 12 iterations with a checkpoint every 5: the run "dies" after iteration 12
    ckpt = str(tmp_path / "ckpt")
    run_from_config(
        cfg.replace(num_iterations=12), solvers(cfg), checkpoint_dir=ckpt, checkpoint_every=5
    )
    assert latest(ckpt) == 10
    resumed = run_from_config(cfg, solvers(cfg), resume=ckpt)
    assert resumed.history == whole.history
    np.testing.assert_array_equal(resumed.models, whole.models)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("latest.json", b""),
        ("latest.json", b"[1]"),
        ("latest.json", b'{"iteration": "ten"}'),
        ("relay-4.npz", b""),
        ("relay-4.npz", b"PK\x03\x04 not a zip"),
        ("relay-4.npz", b"\x93NUMPY garbage"),
        ("workers-4.npz", b""),
        ("workers-4.npz", b"PK\x03\x04 not a zip"),
    ],
)
def test_a_corrupt_checkpoint_file_is_named(tmp_path, name, content) -> None:
    # Prepare: a run checkpointed at iteration 4, then one of its files damaged
    cfg = config("q-gadmm", **{"num-iterations": 4, "checkpoint-every": 2})
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path), checkpoint_every=2)
    (tmp_path / name).write_bytes(content)
    # Execute / Assert: a ValueError naming the file, not numpy's or zipfile's own
    with pytest.raises(ValueError, match=f"checkpoint file .*{name} is corrupt"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path))


def test_a_checkpoint_written_before_a_setting_existed_resumes(tmp_path) -> None:
    # Prepare: a checkpoint whose records lack settings added since (as one written by
    # an earlier version): adaptive-reference (algorithm), same-batch and loss-reduction
    # (local solver)
    import json

    import numpy as np

    from flower_qgadmm.checkpoint import _SCALARS

    cfg = config("q-gadmm", **{"num-iterations": 8, "checkpoint-every": 4})
    whole = whole_and_stopped(cfg, 4, tmp_path)
    path = tmp_path / "relay-4.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    state = json.loads(bytes(arrays[_SCALARS]).decode())
    del state["requested"]["adaptive-reference"]
    for key in ("same-batch", "loss-reduction"):
        del state["run-settings"][key]
    arrays[_SCALARS] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    # Execute: the missing settings count as their defaults (what that run did)
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    # Assert: the same iterations 5..8 and final models as an uninterrupted run (row 4 is
    # the stopped run's last, an evaluation row)
    assert resumed.history[4:] == whole.history[4:]
    np.testing.assert_array_equal(resumed.models, whole.models)
    # a value other than the default is still refused
    other = cfg.replace(adaptive_reference="previous")
    with pytest.raises(ValueError, match="adaptive-reference: 'configured' -> 'previous'"):
        run_from_config(other, solvers(other), resume=str(tmp_path))


def test_only_the_two_latest_checkpoints_are_kept(tmp_path) -> None:
    cfg = config("q-gadmm", **{"num-iterations": 20})
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path), checkpoint_every=4)
    assert sorted(p.name for p in tmp_path.glob("relay-*.npz")) == [
        "relay-16.npz",
        "relay-20.npz",
        "relay-setup.npz",  # the run's set-up part, one for the whole run
    ]
    # the reference runner's workers share one file per checkpoint
    assert sorted(p.name for p in tmp_path.glob("workers-*.npz")) == [
        "workers-16.npz",
        "workers-20.npz",
    ]
    assert not list(tmp_path.glob("worker-*/"))


def test_a_workers_file_is_checked_against_its_index(tmp_path) -> None:
    """The workers' file of the reference runner: every state as saved (dtypes, shapes,
    scalars), a worker it lacks named, an index that does not account for its bytes
    refused as corrupt."""
    from flower_qgadmm.checkpoint import load_workers, save_workers, workers_file

    rng = np.random.default_rng(0)
    states = {
        3: ({"theta": rng.random(4), "grid": rng.random((2, 3)).T, "k": np.int32(7)}, {"a": 1}),
        0: ({"empty": np.zeros(0), "mask": np.array([True, False])}, {"b": [1.5, 2.0]}),
    }
    save_workers(tmp_path, 6, states, run="r1")
    loaded = load_workers(tmp_path, 6, [0, 3], run="r1")
    for n, (arrays, scalars) in states.items():
        assert loaded[n][1] == scalars
        assert loaded[n][0].keys() == arrays.keys()
        for key, value in arrays.items():
            got = loaded[n][0][key]
            assert got.dtype == np.asarray(value).dtype and got.shape == np.shape(value)
            np.testing.assert_array_equal(got, value)
            assert got.flags.writeable  # a copy, not a view of the file's buffer
    with pytest.raises(ValueError, match="worker 5's state is missing from the workers'"):
        load_workers(tmp_path, 6, [0, 5], run="r1")
    # an index whose arrays do not add up to the bytes saved
    states[3][0]["theta"] = rng.random(5)
    save_workers(tmp_path / "b", 6, states)
    good = workers_file(tmp_path / "b", 6).read_bytes()
    with np.load(workers_file(tmp_path, 6)) as data:
        index = data["index"]
    with np.load(workers_file(tmp_path / "b", 6)) as data:
        np.savez(workers_file(tmp_path / "b", 6), data=data["data"], index=index)
    with pytest.raises(ValueError, match="workers-6.npz is corrupt.*accounts for 86 of its 94"):
        load_workers(tmp_path / "b", 6, [0, 3])
    workers_file(tmp_path / "b", 6).write_bytes(good)
    assert load_workers(tmp_path / "b", 6, [3])[3][0]["theta"].size == 5


def test_the_run_set_up_is_written_once_and_resumes_rely_on_it(tmp_path, monkeypatch) -> None:
    """The workers' statistics and set-up reports (most of a relay file of many workers)
    are written once per run, apart; every relay file names the run that wrote them; a
    resumed run relies on them (no second copy) and resumes again identically."""
    import flower_qgadmm.checkpoint as ckpt

    written = []
    save_setup = ckpt.save_setup
    monkeypatch.setattr(
        ckpt, "save_setup", lambda *args: written.append(args[1]) or save_setup(*args)
    )
    cfg = config("q-gadmm", **{"num-iterations": 9, "evaluate-every": 4})
    whole = run_from_config(cfg, solvers(cfg))
    run_from_config(
        cfg.replace(num_iterations=3),
        solvers(cfg),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=1,
    )
    assert len(written) == 1  # three checkpoints, one set-up part
    with np.load(tmp_path / "relay-3.npz") as data:
        assert not {"gram", "xty"} & set(data.files)
        state = json.loads(bytes(data["__scalars__"]))
    assert state["setup"] == written[0] and "described" not in state and state["format"] == 4
    arrays, merged = ckpt.load_relay(tmp_path, 3)
    assert arrays["gram"].shape == (5, cfg.dim, cfg.dim)
    assert sorted(merged["described"]) == list("01234")
    # resumed to 6 with checkpoints into the same folder: the first run's set-up serves
    run_from_config(
        cfg.replace(num_iterations=6),
        solvers(cfg),
        resume=str(tmp_path),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=3,
    )
    assert len(written) == 1 and ckpt.relay_state(tmp_path, 6)["setup"] == written[0]
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    assert resumed.history[6:] == whole.history[6:]
    np.testing.assert_array_equal(resumed.models, whole.models)
    # the set-up part of another run, or none: refused, naming the file
    setup = (tmp_path / "relay-setup.npz").read_bytes()
    run_from_config(
        cfg.replace(num_iterations=1),
        solvers(cfg),
        checkpoint_dir=str(tmp_path / "b"),
        checkpoint_every=1,
    )
    (tmp_path / "b" / "relay-setup.npz").replace(tmp_path / "relay-setup.npz")
    with pytest.raises(ValueError, match="relay-setup.npz is not the set-up part of .*relay-6"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    (tmp_path / "relay-setup.npz").unlink()
    with pytest.raises(FileNotFoundError, match="relay-setup.npz is missing"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    (tmp_path / "relay-setup.npz").write_bytes(setup)
    assert run_from_config(cfg, solvers(cfg), resume=str(tmp_path)).history == resumed.history


def test_checkpoints_append_the_history_rows_to_a_file_per_run(tmp_path) -> None:
    """Each checkpoint appends the rows since the last one to its run's history file (not
    the whole history into the relay's file); the relay's file counts the rows of each
    run's file; rows beyond the count (a run killed after appending) are ignored, fewer
    rows than counted are a corrupt file."""
    from flower_qgadmm.checkpoint import history_file, relay_state

    cfg = config("q-gadmm", **{"num-iterations": 9, "evaluate-every": 4})
    whole = run_from_config(cfg, solvers(cfg))
    run_from_config(
        cfg.replace(num_iterations=4),
        solvers(cfg),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=2,
    )
    state = relay_state(tmp_path, 4)
    ((first, count),) = state["history-parts"]
    assert count == 4 and "history" not in state
    lines = history_file(tmp_path, first).read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(whole.history[:4]))
    # resumed to 7 (checkpoints at 6), killed after appending row 7 and a cut one
    run_from_config(
        cfg.replace(num_iterations=7),
        solvers(cfg),
        resume=str(tmp_path),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=3,
    )
    parts = relay_state(tmp_path, 6)["history-parts"]
    assert parts[0] == [first, 4] and parts[1][1] == 2 and len(parts) == 2
    with history_file(tmp_path, parts[1][0]).open("a") as fh:
        fh.write(json.dumps(whole.history[6]) + '\n{"iteration": 8, "objec')
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    assert resumed.history == whole.history
    # a history file with fewer rows than the checkpoint counts
    history_file(tmp_path, first).write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match=r"history-.*\.jsonl is corrupt .*holds 3 rows, .* 4"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path))


def test_a_checkpoint_of_format_3_resumes_and_writes_the_set_up_apart(tmp_path) -> None:
    """A relay file that holds the statistics itself (format 3) resumes identically; the
    resumed run's first checkpoint writes the set-up part."""
    from flower_qgadmm.checkpoint import load_relay, relay_state, save_relay

    cfg = config("q-gadmm", **{"num-iterations": 8})
    whole = whole_and_stopped(cfg, 4, tmp_path)
    arrays, state = load_relay(tmp_path, 4)
    state.pop("setup")
    state.pop("history-parts")  # load_relay read the rows into state["history"]
    state["format"] = 3
    save_relay(tmp_path, 4, arrays, state)
    (tmp_path / "relay-setup.npz").unlink()
    for path in tmp_path.glob("history-*.jsonl"):
        path.unlink()
    resumed = run_from_config(
        cfg, solvers(cfg), resume=str(tmp_path), checkpoint_dir=str(tmp_path), checkpoint_every=6
    )
    assert resumed.history[4:] == whole.history[4:]
    state = relay_state(tmp_path, 6)
    assert state["setup"] and (tmp_path / "relay-setup.npz").exists()
    assert [count for _, count in state["history-parts"]] == [6]  # all rows, in its own file


def _as_format_2(directory) -> None:
    """Rewrite the latest checkpoint in ``directory`` in the layout of format 2: the
    relay's per-worker arrays one entry each, every worker's state in its own file."""
    from flower_qgadmm.checkpoint import (
        load_relay,
        load_workers,
        save_relay,
        save_worker,
        unpack_blobs,
        unstack_rows,
        workers_file,
    )

    k = latest(directory)
    arrays, state = load_relay(directory, k)
    old = {
        f"{kind}.{n}": v
        for kind in ("theta", "gram", "xty")
        for n, v in unstack_rows(arrays, kind).items()
    }
    for (src, dst), blob in unpack_blobs(arrays, "pending").items():
        old[f"pending.{src}.{dst}"] = np.frombuffer(blob, dtype=np.uint8)
    old.update({key: v for key, v in arrays.items() if key in ("optimum", "feature-scale")})
    assert old.keys() - arrays.keys() and not any("." in key for key in arrays)
    state["format"] = 2
    # format 4: the run's set-up part and history apart (load_relay merged them in)
    state.pop("setup")
    state.pop("history-parts")
    graph = state["graph"]
    active = [n for n in range(graph["num_nodes"]) if n not in graph["removed"]]
    for n, (worker, scalars) in load_workers(directory, k, active, state["run"]).items():
        save_worker(directory, n, k, worker, scalars, run=state["run"])
    workers_file(directory, k).unlink()
    save_relay(directory, k, old, state)


@pytest.mark.parametrize(
    "algorithm, extra",
    [("q-gadmm", {}), ("choco-sgd", LINREG_GOSSIP), ("q-gadmm", {"remove-workers": "2@3"})],
)
def test_a_checkpoint_of_format_2_resumes_identically(algorithm, extra, tmp_path) -> None:
    """Checkpoints written before the relay stacked its arrays and the reference runner
    shared one workers' file (format 2) continue as they would have."""
    cfg = config(algorithm, **{"num-iterations": 8, "evaluate-every": 3, **extra})
    whole = whole_and_stopped(cfg, 4, tmp_path)
    _as_format_2(tmp_path)
    assert (tmp_path / "worker-1" / "iteration-4.npz").exists()
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    # row 4 is the stopped run's last, an evaluation row (evaluate-every = 3)
    assert resumed.history[4:] == whole.history[4:] and len(resumed.history) == 8
    np.testing.assert_array_equal(resumed.models, whole.models)


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path) -> None:
    cfg = config("q-gadmm", **{"num-iterations": 6})
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path), checkpoint_every=5)
    with pytest.raises(
        ValueError,
        match=r"differ from the checkpoint's \(checkpoint -> now\): "
        r"bits: 3 -> 2" + CONTINUE,
    ):
        run_from_config(cfg.replace(bits=2), solvers(cfg), resume=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="after iteration 5, beyond the 4 iterations"):
        run_from_config(cfg.replace(num_iterations=4), solvers(cfg), resume=str(tmp_path))
    with pytest.raises(ValueError, match=r"\(checkpoint -> now\): seed: 0 -> 7" + CONTINUE):
        run_from_config(cfg.replace(seed=7), solvers(cfg), resume=str(tmp_path))
    other = cfg.replace(topology="bipartite")
    with pytest.raises(
        ValueError,
        match=r"now\): graph: edges \[\[0, 1\], \[1, 2\], \[2, 3\], \[3, 4\]\] -> "
        r"\[\[0, 2\], \[0, 3\], \[0, 4\], \[1, 2\]\]" + CONTINUE,
    ):
        run_from_config(other, solvers(cfg), resume=str(tmp_path))
    # a workers' file that holds another iteration's states (renamed, or another run's)
    (tmp_path / "workers-5.npz").unlink()
    run_from_config(
        cfg.replace(num_iterations=3),
        solvers(cfg),
        checkpoint_dir=str(tmp_path / "b"),
        checkpoint_every=3,
    )
    (tmp_path / "b" / "workers-3.npz").rename(tmp_path / "workers-5.npz")
    with pytest.raises(ValueError, match="of iteration 5 holds the states of iteration 3"):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path))


def test_a_refused_flower_resume_leaves_the_run_folder_as_it_was(app, tmp_path) -> None:
    cfg = config("q-gadmm", **{"num-iterations": 6, "checkpoint-every": 5})
    rc = cfg.to_run_config()
    RelayStrategy.from_config(cfg, results_dir=tmp_path).start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=6
    )
    (run,) = tmp_path.iterdir()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = cfg.replace(bits=4)
    with pytest.raises(ValueError, match="bits: 3 -> 4"):
        RelayStrategy.from_config(other, resume=run).start(
            FakeGrid(app, cfg.num_workers, other.to_run_config()), num_rounds=6
        )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # refused before waiting for the SuperNodes: with none connected, no discovery wait

    class Empty(FakeGrid):
        def get_node_ids(self):
            raise AssertionError("the resume should have been refused before discovery")

    for bad, message in ((other, "bits: 3 -> 4"), (cfg, "no checkpoint in")):
        folder = run if bad is other else tmp_path / "nothing-here"
        folder.mkdir(exist_ok=True)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            RelayStrategy.from_config(bad, resume=folder).start(
                Empty(app, cfg.num_workers, bad.to_run_config()), num_rounds=6
            )


def test_resume_refuses_other_solver_settings_but_not_another_device(app, tmp_path) -> None:
    # Prepare: a stochastic run checkpointed at 2 (reference runner, then Flower)
    cfg = config("q-sgadmm", **{"num-iterations": 3, "checkpoint-every": 2, "lr": 0.01})
    ckpt = str(tmp_path / "ckpt")
    run_from_config(cfg, solvers(cfg), checkpoint_dir=ckpt, checkpoint_every=2)
    other = cfg.replace(lr=0.5, local_steps=1)
    # Execute / Assert: the learning rate and the local steps shape the trajectory
    with pytest.raises(ValueError, match=r"local-steps: 2 -> 1; lr: 0\.01 -> 0\.5" + CONTINUE):
        run_from_config(other, solvers(other), resume=ckpt)
    with pytest.raises(ValueError, match=r"optimizer: 'adam' -> 'sgd'" + CONTINUE):
        run_from_config(cfg.replace(optimizer="sgd"), solvers(cfg), resume=ckpt)
    moved = cfg.replace(num_iterations=4, device="cuda")  # spelling only: never built here
    from flower_qgadmm.reference import make_engine

    engine = make_engine(
        cfg.algorithm,
        solvers(cfg),
        cfg.graph,
        cfg.algo,
        cfg.seed,
        evaluate_every=cfg.evaluate_every,  # the checkpoint's (another one is refused)
        run_settings=moved.run_settings(),
    )
    assert engine.resume(ckpt, 4) == 2  # another device: the same numbers, accepted
    # the Flower relay compares the settings it sends to the workers
    rc = cfg.to_run_config()
    RelayStrategy.from_config(cfg, results_dir=tmp_path / "f").start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=3
    )
    (run,) = (tmp_path / "f").iterdir()
    with pytest.raises(ValueError, match=r"local-steps: 2 -> 1" + CONTINUE):
        RelayStrategy.from_config(cfg.replace(local_steps=1), resume=run).start(
            FakeGrid(app, cfg.num_workers, rc), num_rounds=3
        )


def _as_format_1(directory) -> None:
    """Rewrite the latest relay checkpoint in ``directory`` as an earlier version wrote
    it (no ``format`` key, no run settings)."""
    from flower_qgadmm.checkpoint import load_relay, save_relay

    k = latest(directory)
    arrays, state = load_relay(directory, k)
    for key in ("format", "run-settings", "setup", "history-parts"):
        state.pop(key)
    save_relay(directory, k, arrays, state)


@pytest.mark.parametrize(
    "algorithm, extra, refused",
    [
        ("malcom-psgd", {}, "source-coded payloads carry the former 4-byte size field"),
        ("q-sgadmm", {}, "mini-batches were drawn from the quantizer's stream"),
        ("q-gadmm", {}, None),  # fixed-width payloads, exact solves: continues identically
    ],
)
def test_a_checkpoint_of_an_earlier_format_is_refused_where_it_would_differ(
    algorithm, extra, refused, tmp_path
) -> None:
    # Prepare
    base = {**LINREG, "samples-per-worker": 20} if algorithm == "malcom-psgd" else {}
    cfg = config(algorithm, **{"num-iterations": 4, **base, **extra})
    whole = run_from_config(cfg, solvers(cfg))
    ckpt = str(tmp_path / "ckpt")
    run_from_config(  # "dies" after 3, the checkpoint of 2 kept
        cfg.replace(num_iterations=3), solvers(cfg), checkpoint_dir=ckpt, checkpoint_every=2
    )
    _as_format_1(ckpt)
    # Execute / Assert
    if refused is None:
        assert run_from_config(cfg, solvers(cfg), resume=ckpt).history == whole.history
        return
    with pytest.raises(ValueError, match=f"earlier version \\(format 1\\).*{refused}"):
        run_from_config(cfg, solvers(cfg), resume=ckpt)


def test_resume_compares_the_data_settings_and_only_the_solver_settings_in_use(tmp_path) -> None:
    # Prepare: a torch run and a least-squares run, checkpointed at 2
    digits = config("q-sgadmm", **{"num-iterations": 3})
    linreg = config("q-gadmm", **{"num-iterations": 3})
    for name, cfg in (("d", digits), ("l", linreg)):
        run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path / name), checkpoint_every=2)
    # Execute / Assert: the mini-batch size and the partition shape a torch run
    other = digits.replace(batch_size=8, partition="dirichlet")
    changed = r"batch-size: 32 -> 8; partition: 'iid' -> 'dirichlet'"
    with pytest.raises(ValueError, match=changed + CONTINUE):
        run_from_config(other, solvers(other), resume=str(tmp_path / "d"))
    # exact solves use no lr, optimizer or local steps: changing them changes nothing
    faster = linreg.replace(lr=0.5, optimizer="sgd", local_steps=3)
    resumed = run_from_config(faster, solvers(faster), resume=str(tmp_path / "l"))
    assert resumed.history == run_from_config(linreg, solvers(linreg)).history
    with pytest.raises(ValueError, match=r"l2: 0\.0 -> 0\.1" + CONTINUE):
        run_from_config(linreg.replace(l2=0.1), solvers(linreg), resume=str(tmp_path / "l"))


def test_resuming_a_finished_run_gives_evaluate_fn_its_final_model(app, tmp_path) -> None:
    # Prepare: a finished run (its last checkpoint at its last round)
    cfg = config("q-gadmm", **{"num-iterations": 4, "checkpoint-every": 2})
    rc = cfg.to_run_config()

    def evaluate_fn(server_round, arrays):
        return MetricRecord({"norm": float(np.linalg.norm(arrays["theta"].numpy()))})

    first = RelayStrategy.from_config(cfg, results_dir=tmp_path).start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=4, evaluate_fn=evaluate_fn
    )
    (run,) = tmp_path.iterdir()
    # Execute: resumed with nothing left to run (e.g. to write a stopped run's files)
    again = RelayStrategy.from_config(cfg, resume=run).start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=4, evaluate_fn=evaluate_fn
    )
    # Assert: the Result carries the final round's metrics, as the first run's did
    assert (
        again.evaluate_metrics_serverapp[4]["norm"] == first.evaluate_metrics_serverapp[4]["norm"]
    )


def no_flower_bytes(rows):
    return [{k: v for k, v in r.items() if not k.startswith("flower_")} for r in rows]


@pytest.mark.parametrize("algorithm", ["gadmm", "q-sgadmm"])
def test_flower_resume_equals_an_uninterrupted_run(algorithm, app, tmp_path) -> None:
    cfg = config(algorithm, **{"num-iterations": 20, "checkpoint-every": 5})
    rc = cfg.to_run_config()
    whole = RelayStrategy.from_config(cfg, results_dir=tmp_path / "whole")
    whole_result = whole.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=20)
    # the interrupted run: 12 rounds, then its processes are gone (a new grid = new nodes)
    first = RelayStrategy.from_config(cfg, results_dir=tmp_path / "cut")
    first.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=12)
    (run,) = (tmp_path / "cut").iterdir()
    again = RelayStrategy.from_config(cfg, resume=run / "checkpoint")  # or the run folder
    result = again.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=20)
    # the same numbers; only what crossed Flower differs (the resume's own messages)
    assert no_flower_bytes(again.history) == no_flower_bytes(whole.history)
    assert no_flower_bytes(read_history(run / "history.jsonl")) == no_flower_bytes(whole.history)
    for key in whole_result.arrays:
        np.testing.assert_array_equal(result.arrays[key].numpy(), whole_result.arrays[key].numpy())
    assert sorted(result.train_metrics_clientapp) == list(range(1, 21))
    assert sorted(result.evaluate_metrics_serverapp) == sorted(
        whole_result.evaluate_metrics_serverapp
    )
    # and the reference runner gives the same history
    ref = run_from_config(cfg, solvers(cfg))
    assert no_flower_bytes(again.history) == ref.history


CLI = [sys.executable, "-m", "flower_qgadmm.simulate", "--workers", "4", "--dim", "5"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def long_cli_run(cwd: Path) -> subprocess.Popen:
    """A CLI run of 100,000 iterations into ``cut.jsonl``, checkpointed every 5 (to kill)."""
    return subprocess.Popen(
        [*CLI, "--iterations", "100000", "--checkpoint-every", "5", "--out", "cut.jsonl"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def long_runs():
    """:func:`long_cli_run`, each run killed at teardown if the test did not kill it (a
    failing assertion before the kill left one running for half an hour)."""
    started: list[subprocess.Popen] = []

    def start(cwd: Path) -> subprocess.Popen:
        started.append(long_cli_run(cwd))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_cli_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, long_runs) -> None:
    whole = cli("--iterations", "30", "--out", "whole.jsonl", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    # a long run killed (SIGKILL) once it has 12 rows: every completed row is on disk
    proc = long_runs(tmp_path)
    path = tmp_path / "cut.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 12:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.endswith("}")]
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) >= 12
    done = latest(tmp_path / "cut-checkpoint")
    assert done >= 10 and done % 5 == 0
    # a resume that cannot start (a mistyped folder) leaves the history as it was
    wrong = cli(
        "--iterations", "30", "--resume", "cut-chekpoint", "--out", "cut.jsonl", cwd=tmp_path
    )
    assert wrong.returncode != 0 and "no checkpoint" in wrong.stderr
    assert path.read_text().splitlines() == lines
    # starting over with the same --out is refused: it would bury the checkpoint
    fresh = cli("--iterations", "30", "--out", "cut.jsonl", cwd=tmp_path)
    assert fresh.returncode == 2 and "holds an interrupted run" in fresh.stderr, (
        len(lines),
        done,
        fresh.stdout[-300:],
        fresh.stderr[-300:],
    )
    assert "--resume" in fresh.stderr and path.read_text().splitlines() == lines
    # a resume that fails on a corrupt workers' file names it, and keeps the history
    worker_file = tmp_path / "cut-checkpoint" / f"workers-{done}.npz"
    intact = worker_file.read_bytes()
    worker_file.write_bytes(intact[: len(intact) // 2])
    corrupt = cli(
        "--iterations", "30", "--resume", "cut-checkpoint", "--out", "cut.jsonl", cwd=tmp_path
    )
    assert corrupt.returncode == 2 and "internal error" not in corrupt.stderr
    assert f"workers-{done}.npz is corrupt" in corrupt.stderr
    assert path.read_text().splitlines() == lines
    worker_file.write_bytes(intact)
    # resume to 30 iterations (without --out: the resumed run's own history file): the
    # same history as the uninterrupted run
    again = cli("--iterations", "30", "--resume", "cut-checkpoint", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resumed after iteration {done}" in again.stdout
    assert read_history(path) == read_history(tmp_path / "whole.jsonl")
    # a finished run may be run over again
    over = cli("--iterations", "30", "--out", "cut.jsonl", cwd=tmp_path)
    assert over.returncode == 0, over.stderr
    # ... and once that run is interrupted in turn, the old mark does not cover it
    proc = long_runs(tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            saved = latest(tmp_path / "cut-checkpoint")
        except FileNotFoundError:  # the old run's checkpoints went once the new run
            saved = -1  # had set up, and the new run's first is not written yet
        if saved >= 5 and not (tmp_path / "cut-checkpoint" / "finished.json").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    again = cli("--iterations", "30", "--out", "cut.jsonl", cwd=tmp_path)
    assert again.returncode == 2 and "holds an interrupted run" in again.stderr


class RecordingGrid(FakeGrid):
    """FakeGrid that keeps the type and round of every message sent."""

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        messages = list(messages)
        self.kinds = getattr(self, "kinds", [])
        self.kinds += [(m.metadata.message_type, m.content) for m in messages]
        return super().send_and_receive(messages, timeout=timeout)


def checkpoint_orders(grid: RecordingGrid) -> tuple[list[int], list[int]]:
    """(iterations of the steps that carried a checkpoint order, iterations of the
    ``query.checkpoint`` messages), one entry per message."""
    steps = [
        int(c["round"]["iteration"])
        for kind, c in grid.kinds
        if kind == "train.step" and "checkpoint" in c["round"]
    ]
    queries = [
        int(c["checkpoint"]["iteration"]) for kind, c in grid.kinds if kind == "query.checkpoint"
    ]
    return steps, queries


@pytest.mark.parametrize("algorithm", ["q-gadmm"])
def test_checkpoints_ride_on_the_steps_and_a_repair_saves_again(algorithm, app, tmp_path) -> None:
    # worker 2 leaves in iteration 10, a checkpoint iteration: the others saved with their
    # step, then the repair changed their states (new edge 1-3, copies, duals), so they
    # save again with a checkpoint message; the resumed run still equals the whole run
    extra = {"num-iterations": 20, "checkpoint-every": 5, "remove-workers": "2@10"}
    cfg = config(algorithm, **extra)
    rc = cfg.to_run_config()
    whole = RelayStrategy.from_config(cfg, results_dir=None)
    whole.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=20)
    grid = RecordingGrid(app, cfg.num_workers, rc)
    first = RelayStrategy.from_config(cfg, results_dir=tmp_path / "cut")
    first.start(grid, num_rounds=12)
    steps, queries = checkpoint_orders(grid)
    assert steps == [5] * 5 + [10] * 4  # each worker's (last) step of the iteration
    assert queries == [10] * 4  # after the repair only
    (run,) = (tmp_path / "cut").iterdir()
    again = RelayStrategy.from_config(cfg, resume=run)
    again.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=20)
    assert no_flower_bytes(again.history) == no_flower_bytes(whole.history)
    ref = run_from_config(cfg, solvers(cfg))
    assert no_flower_bytes(again.history) == ref.history
    # the reference runner resumes the same way from its own checkpoints
    ckpt = str(tmp_path / "ref")
    run_from_config(
        cfg.replace(num_iterations=12), solvers(cfg), checkpoint_dir=ckpt, checkpoint_every=5
    )
    assert run_from_config(cfg, solvers(cfg), resume=ckpt).history == ref.history


def unwritable_for(worker: int, also_asked_again: bool):
    """A ClientApp mod: worker ``worker``'s checkpoint order (with its step, and with the
    ``query.checkpoint`` message too if ``also_asked_again``) names a path it cannot
    write (under a regular file)."""

    def mod(msg, context, call_next):
        if partition_of(context)[0] == worker:
            kind = msg.metadata.message_type
            if kind == "train.step" and "checkpoint" in msg.content["round"]:
                order = dict(msg.content["round"].items())
                order["checkpoint"] = "/dev/null/nowhere"
                msg.content["round"] = ConfigRecord(order)
            if kind == "query.checkpoint" and also_asked_again:
                where = dict(msg.content["checkpoint"].items())
                where["directory"] = "/dev/null/nowhere"
                msg.content["checkpoint"] = ConfigRecord(where)
        return call_next(msg, context)

    return mod


def test_a_worker_that_cannot_save_with_its_step_is_asked_again(tmp_path) -> None:
    cfg = config("q-gadmm", **{"num-iterations": 12, "checkpoint-every": 5})
    rc = cfg.to_run_config()
    # the save with the step fails, the checkpoint message succeeds: the run goes on
    app = make_client_app(solver_fn, ClientApp(mods=[unwritable_for(2, False)]))
    grid = RecordingGrid(app, cfg.num_workers, rc)
    strategy = RelayStrategy.from_config(cfg, results_dir=tmp_path / "a")
    strategy.start(grid, num_rounds=12)
    assert checkpoint_orders(grid)[1] == [5, 10]  # worker 2 only, asked again
    (run,) = (tmp_path / "a").iterdir()
    assert latest(run / "checkpoint") == 10
    assert (run / "checkpoint" / "worker-2" / "iteration-10.npz").exists()
    # it fails again: the run stops, naming it, as a failed checkpoint always did
    app = make_client_app(solver_fn, ClientApp(mods=[unwritable_for(2, True)]))
    strategy = RelayStrategy.from_config(cfg, results_dir=tmp_path / "b")
    with pytest.raises(WorkerFailure, match="checkpoint failed: worker 2"):
        strategy.start(FakeGrid(app, cfg.num_workers, rc), num_rounds=12)
    assert len(strategy.history) == 5


def test_the_reference_runner_raises_a_failed_save_after_the_row(tmp_path) -> None:
    # Prepare: a checkpoint directory under a regular file: every save fails
    cfg = config("q-gadmm", **{"num-iterations": 12})
    blocked = tmp_path / "file"
    blocked.write_text("")
    rows = []
    # Execute / Assert: the iteration completes (its row is recorded, every worker at
    # iteration 5), then the save of the workers' states at the boundary raises
    with pytest.raises(OSError):
        run_from_config(
            cfg,
            solvers(cfg),
            checkpoint_dir=str(blocked / "ckpt"),
            checkpoint_every=5,
            on_row=rows.append,
        )
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]


def test_resume_accepts_the_run_folder_or_its_checkpoint_folder(tmp_path) -> None:
    from flower_qgadmm.simulate import resume_folder

    # Prepare: a run folder holding one checkpoint folder (the CLI's or Flower's name)
    for name in ("h-checkpoint", "checkpoint"):
        run = tmp_path / name.replace("checkpoint", "run")
        (run / name).mkdir(parents=True)
        (run / name / "latest.json").write_text('{"iteration": 5}')
        # Execute / Assert
        assert resume_folder(str(run)) == run / name
        assert resume_folder(str(run / name)) == run / name
        # or the run's history file (the CLI's --out, Flower's history.jsonl)
        history = run / ("h.jsonl" if name == "h-checkpoint" else "history.jsonl")
        history.write_text("{}\n")
        assert resume_folder(str(history)) == run / name
        assert resume_folder(str(run / name / "latest.json")) == run / name
    # the Flower path (the run config's resume): the run folder, whatever was given
    from flower_qgadmm.history import RunRecorder

    flower = tmp_path / "run"
    for given in (flower, flower / "checkpoint", flower / "history.jsonl"):
        recorder = RunRecorder(tmp_path, "x", resume=given)
        assert recorder.path == flower.resolve()
        recorder._fh.close()
    # two checkpoint folders: ambiguous, refused naming both (before: the folder itself,
    # which the engine then refused as "no checkpoint in both")
    both = tmp_path / "both"
    for name in ("a-checkpoint", "b-checkpoint"):
        (both / name).mkdir(parents=True)
        (both / name / "latest.json").write_text('{"iteration": 5}')
    with pytest.raises(ValueError, match="holds the checkpoints of 2 runs") as refused:
        resume_folder(str(both))
    assert str(both / "a-checkpoint") in str(refused.value)
    assert str(both / "b-checkpoint") in str(refused.value)


def test_worker_files_another_run_wrote_into_the_folder_are_refused(app, tmp_path) -> None:
    """Two resumptions of one checkpoint running at once write into one folder: a run
    whose relay checkpoint is older than the other's worker files must not mix them."""
    from flower_qgadmm.checkpoint import load_relay, load_workers, save_worker
    from flower_qgadmm.rounds import WorkerFailure

    cfg = config("q-gadmm", **{"num-iterations": 10})
    ckpt = tmp_path / "ckpt"
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(ckpt), checkpoint_every=5)
    first = load_relay(ckpt, 10)[1]["run"]
    # another run (its own run id) saves worker 2's state of iteration 10 into the folder
    # and dies before its relay checkpoint: latest.json still names the first run's
    other = tmp_path / "other"
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(other), checkpoint_every=5)
    assert load_relay(other, 10)[1]["run"] != first
    mine = ckpt / "workers-10.npz"
    kept = mine.read_bytes()
    mine.write_bytes((other / "workers-10.npz").read_bytes())
    longer = cfg.replace(num_iterations=12)
    with pytest.raises(ValueError, match="workers' checkpoint file of iteration 10 was written"):
        run_from_config(longer, solvers(cfg), resume=str(ckpt))
    # the Flower path refuses it the same way (the worker's restore fails, naming it)
    flower = cfg.replace(checkpoint_every=5, results_dir=str(tmp_path / "results"))
    first_flower = RelayStrategy.from_config(flower, discovery_timeout=1.0)
    first_flower.start(FakeGrid(app, cfg.num_workers, flower.to_run_config()), num_rounds=10)
    run = next((tmp_path / "results").iterdir())
    # (a Flower worker keeps its own file: one of the other run's, written worker by worker)
    states = load_workers(other, 10, [2])
    save_worker(other, 2, 10, *states[2], run=load_relay(other, 10)[1]["run"])
    foreign = run / "checkpoint" / "worker-2" / "iteration-10.npz"
    (other / "worker-2" / "iteration-10.npz").replace(foreign)
    again = flower.replace(num_iterations=12)
    strategy = RelayStrategy.from_config(again, discovery_timeout=1.0, resume=str(run))
    with pytest.raises(WorkerFailure, match="worker 2 .*written by another run"):
        strategy.start(FakeGrid(app, cfg.num_workers, again.to_run_config()), num_rounds=12)
    # the first run's own files resume as before
    mine.write_bytes(kept)
    assert len(run_from_config(longer, solvers(cfg), resume=str(ckpt)).history) == 12


def test_a_resume_may_change_what_the_algorithm_does_not_read(tmp_path) -> None:
    """D-PSGD reads neither the optimizer's settings nor the compressors' (unused_keys):
    a resume that changes them continues the same run; one that changes its step is
    refused."""
    cfg = config("d-psgd", **{**LINREG_GOSSIP, "num-iterations": 6, "step-size": 0.01})
    whole = whole_and_stopped(cfg, 4, tmp_path)
    other = cfg.replace(lr=0.5, local_steps=9, levels=4, compressor="top-k")
    resumed = run_from_config(other, solvers(other), resume=str(tmp_path))
    assert resumed.history[4:] == whole.history[4:]
    with pytest.raises(ValueError, match="step-size: 0.01 -> 0.02"):
        run_from_config(cfg.replace(step_size=0.02), solvers(cfg), resume=str(tmp_path))


def test_a_resume_on_an_image_task_may_change_the_least_squares_settings(tmp_path) -> None:
    """l2 and scale-features are not read by a torch model's steps (RunConfig.unread)."""
    cfg = config("q-sgadmm", **{"num-iterations": 3})
    whole = whole_and_stopped(cfg, 2, tmp_path)
    other = cfg.replace(l2=0.5, scale_features=False)
    resumed = run_from_config(other, solvers(other), resume=str(tmp_path))
    assert resumed.history[2:] == whole.history[2:]
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.01"):
        run_from_config(cfg.replace(lr=0.01), solvers(cfg), resume=str(tmp_path))


def test_a_resumed_flower_run_gives_the_result_evaluate_fns_metrics_of_the_restored_rounds(
    app, tmp_path
) -> None:
    """The restored rows went into the Result with the model metrics only: a resumed
    run's ``evaluate_metrics_serverapp`` lacked ``evaluate_fn``'s metrics of the rounds
    before the checkpoint, which its history and an uninterrupted run's Result hold."""
    # Prepare: evaluate_fn on every second round; the whole run, and one cut after 5
    cfg = config("q-gadmm", **{"num-iterations": 8, "checkpoint-every": 4, "evaluate-every": 2})
    rc = cfg.to_run_config()

    def evaluate_fn(server_round, arrays):
        return MetricRecord({"norm": float(np.linalg.norm(arrays["theta"].numpy()))})

    def served(result):
        return {k: dict(v) for k, v in result.evaluate_metrics_serverapp.items()}

    whole = RelayStrategy.from_config(cfg, results_dir=tmp_path / "whole").start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=8, evaluate_fn=evaluate_fn
    )
    RelayStrategy.from_config(cfg, results_dir=tmp_path / "cut").start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=5, evaluate_fn=evaluate_fn
    )
    (run,) = (tmp_path / "cut").iterdir()
    # Execute
    again = RelayStrategy.from_config(cfg, resume=run).start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=8, evaluate_fn=evaluate_fn
    )
    # Assert: rounds 2 and 4 (restored) carry "norm" as in the uninterrupted run
    assert sorted(served(again)) == [2, 4, 6, 8]
    assert served(again) == served(whole)


def test_a_cli_run_that_diverged_may_be_run_over_with_other_settings(tmp_path, capsys) -> None:
    """A run the watchdog stopped as diverged has ended, it was not interrupted: the same
    --out with the settings the error advises starts afresh instead of being refused with
    "pass --resume" (a resume would diverge again, or be refused for its new settings)."""
    from flower_qgadmm.simulate import main

    out = tmp_path / "h.jsonl"
    assert main(["--bits", "1", "--rho", "1e4", "--out", str(out)]) == 2
    assert "diverged at iteration 13" in capsys.readouterr().err
    assert latest(tmp_path / "h-checkpoint") == 10
    assert main(["--bits", "3", "--iterations", "5", "--out", str(out)]) == 0
    assert "holds an interrupted run" not in capsys.readouterr().err
    assert [r["iteration"] for r in read_history(out)] == [1, 2, 3, 4, 5]


def test_float32_gadmm_does_not_read_the_quantizer_keys(tmp_path) -> None:
    """GADMM and SGADMM send float32 messages: bits, adaptive-bits, omega, bits-max and
    adaptive-reference do nothing there. Given, they are warned about as unread (as
    D-PSGD's compressor is), and a resume that changes them continues the same run
    (before: no warning, and the resume was refused with ``bits: 3 -> 5``)."""
    quantizer_keys = {"bits", "adaptive-bits", "omega", "bits-max", "adaptive-reference"}
    for algorithm in ("gadmm", "sgadmm"):
        assert quantizer_keys <= config(algorithm).unread(), algorithm
        assert not quantizer_keys & config("q-" + algorithm).unread(), algorithm
    cfg = config("gadmm", **{"num-iterations": 6})
    warning = "bits: not read by gadmm on task 'linreg'; ignored"
    assert cfg.replace(bits=5).unread_given() == [warning]
    whole = whole_and_stopped(cfg, 4, tmp_path)
    other = cfg.replace(bits=5, adaptive_bits=True, bits_max=6, omega=0.5)
    resumed = run_from_config(other, solvers(other), resume=str(tmp_path))
    assert resumed.history[4:] == whole.history[4:]


def test_keys_of_another_algorithm_are_warned_about_when_given() -> None:
    """A key only another algorithm reads (rho for CHOCO-SGD, step-size for Q-GADMM,
    fraction-train for D-PSGD) does nothing: set to another value than its default, it
    is named in the warning, as D-PSGD's compressor is (before: silently ignored)."""
    choco = config("choco-sgd", **{**LINREG_GOSSIP, "rho": 5.0, "censoring": True})
    assert {"rho", "bits", "censoring"} <= choco.unread()
    assert not {"step-size", "consensus-step", "codec"} & choco.unread()
    assert choco.unread_given() == [
        "censoring, rho: not read by choco-sgd on task 'linreg'; ignored"
    ]
    gadmm = config("q-gadmm", **{"step-size": 0.5})
    assert gadmm.unread_given() == ["step-size: not read by q-gadmm on task 'linreg'; ignored"]
    assert not {"rho", "bits", "codec", "encrypt"} & gadmm.unread()
    # the defaults Flower passes for every key of the pyproject stay quiet
    assert config("choco-sgd", **{**LINREG_GOSSIP, "rho": 0.0}).unread_given() == []


def test_a_new_run_over_a_finished_one_takes_its_checkpoints_with_its_history(
    tmp_path, capsys, monkeypatch
) -> None:
    """A finished run's --out may be run over. The new run (here too short to write a
    checkpoint of its own) removes the old run's checkpoints with its history: before, the
    old latest checkpoint (iteration 20) outlived it, so the next run over the same --out
    was refused as "an interrupted run at iteration 20", and --resume continued the old
    run under the new history."""
    from flower_qgadmm.rounds import RoundEngine
    from flower_qgadmm.simulate import main

    out, folder = tmp_path / "h.jsonl", tmp_path / "h-checkpoint"
    (folder / "notes.txt").parent.mkdir()
    (folder / "notes.txt").write_text("mine")  # not a checkpoint file: left alone
    assert main(["--iterations", "20", "--out", str(out)]) == 0
    assert latest(folder) == 20
    # a new run whose set-up fails leaves the finished run as it was, and run over-able
    first = out.read_text()

    def broken(self, initial=None):
        raise ValueError("set-up failed")

    with monkeypatch.context() as patch:
        patch.setattr(RoundEngine, "start", broken)
        assert main(["--iterations", "5", "--out", str(out)]) == 2
    assert out.read_text() == first and latest(folder) == 20
    capsys.readouterr()
    # a new, shorter run: no checkpoint (every 10), and none of the old run's left
    assert main(["--iterations", "5", "--out", str(out)]) == 0
    assert [r["iteration"] for r in read_history(out)] == [1, 2, 3, 4, 5]
    with pytest.raises(FileNotFoundError):
        latest(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["finished.json", "notes.txt"]
    capsys.readouterr()
    assert main(["--iterations", "5", "--out", str(out), "--resume", str(folder)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert [r["iteration"] for r in read_history(out)] == [1, 2, 3, 4, 5]
    # and the next run over it is not refused as an interrupted one
    assert main(["--iterations", "12", "--out", str(out)]) == 0
    assert "holds an interrupted run" not in capsys.readouterr().err
    assert latest(folder) == 10 and not (folder / "relay-20.npz").exists()


def test_resume_refuses_other_mixing_weights(tmp_path) -> None:
    # the mixing weights were in no checkpoint: a resume with --mixing max-degree (or
    # another user matrix) went on with the new weights from the checkpoint's models
    base = {**LINREG, "num-iterations": 6, "topology": "erdos-renyi", "num-workers": 6}
    cfg = config("d-psgd", **base)
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path), checkpoint_every=5)
    with pytest.raises(
        ValueError,
        match=r"now\): mixing: 'metropolis' weights -> 'max-degree' weights" + CONTINUE,
    ):
        run_from_config(cfg.replace(mixing="max-degree"), solvers(cfg), resume=str(tmp_path))
    ring4 = {**LINREG, "num-iterations": 6, "topology": "ring", "num-workers": 4}
    quarter = "0.5 0.25 0 0.25; 0.25 0.5 0.25 0; 0 0.25 0.5 0.25; 0.25 0 0.25 0.5"
    third = "0.4 0.3 0 0.3; 0.3 0.4 0.3 0; 0 0.3 0.4 0.3; 0.3 0 0.3 0.4"
    cfg = config("d-psgd", **ring4, mixing="matrix", **{"mixing-matrix": quarter})
    run_from_config(cfg, solvers(cfg), checkpoint_dir=str(tmp_path / "m"), checkpoint_every=5)
    with pytest.raises(
        ValueError,
        match=r"mixing: a user matrix \(sha256 (\w+)\) weights -> "
        r"a user matrix \(sha256 (?!\1)\w+\) weights",
    ):
        run_from_config(cfg.replace(mixing_matrix=third), solvers(cfg), resume=str(tmp_path / "m"))
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path / "m"))  # the same one
    assert resumed.history[-1]["iteration"] == 6


def test_a_new_run_over_an_unreadable_latest_json_is_refused(tmp_path, capsys) -> None:
    """An interrupted run whose latest.json cannot be read (damaged) may still be
    resumed once it is repaired: its relay and worker files are intact. A new run over
    its --out is refused, keeping them and the history (before: taken as "no
    checkpoint", the new run overwrote the history and deleted the checkpoints)."""
    from flower_qgadmm.simulate import main

    out, folder = tmp_path / "h.jsonl", tmp_path / "h-checkpoint"
    argv = ["--workers", "4", "--dim", "5", "--checkpoint-every", "5", "--out", str(out)]
    assert main([*argv, "--iterations", "12"]) == 0
    (folder / "finished.json").unlink()  # as if it had been killed after iteration 12
    history, files = out.read_bytes(), sorted(p.name for p in folder.rglob("*.npz"))
    (folder / "latest.json").write_text('{"iteration": ')
    capsys.readouterr()
    assert main([*argv, "--iterations", "20"]) == 2
    err = capsys.readouterr().err
    assert "latest.json cannot be read" in err and f"--resume {folder}" in err
    assert out.read_bytes() == history
    assert sorted(p.name for p in folder.rglob("*.npz")) == files
    # repaired, the run continues
    (folder / "latest.json").write_text('{"iteration": 10}')
    assert main([*argv, "--iterations", "12", "--resume", str(folder)]) == 0
    assert out.read_bytes() == history


def test_a_run_resumed_without_checkpoints_of_its_own_is_marked_finished(tmp_path, capsys) -> None:
    """A resume with --checkpoint-every 0 that completes leaves the checkpoint it started
    from: it marks it finished, so a new run over its --out is not refused as "an
    interrupted run" (before: refused, though the history was complete)."""
    from flower_qgadmm.simulate import main

    out, folder = tmp_path / "h.jsonl", tmp_path / "h-checkpoint"
    argv = ["--workers", "4", "--dim", "5", "--out", str(out)]
    assert main([*argv, "--iterations", "7", "--checkpoint-every", "5"]) == 0
    (folder / "finished.json").unlink()  # as if it had been killed after iteration 7
    resume = ["--iterations", "8", "--checkpoint-every", "0", "--resume", str(folder)]
    assert main([*argv, *resume]) == 0
    capsys.readouterr()
    assert main([*argv, "--iterations", "3"]) == 0
    assert "holds an interrupted run" not in capsys.readouterr().err
    assert [r["iteration"] for r in read_history(out)] == [1, 2, 3]


def test_a_resume_may_not_change_the_departures_the_checkpoint_has_passed(tmp_path) -> None:
    """remove-workers up to the checkpoint's iteration happened (or not) in the run that
    wrote it: a resume that plans others is refused (before: a departure planned before
    the checkpoint was silently never carried out, one dropped was still made). Later
    departures may change: the run then equals an uninterrupted run with them."""
    cfg = config("q-gadmm", **{"num-iterations": 12, "evaluate-every": 3})
    ckpt = tmp_path / "ckpt"
    run_from_config(
        cfg.replace(num_iterations=8), solvers(cfg), checkpoint_dir=str(ckpt), checkpoint_every=5
    )
    for plan in ("2@3", "2@5"):
        other = cfg.replace(remove_workers=plan)
        with pytest.raises(ValueError, match=f"departures none .*this run plans {plan}"):
            run_from_config(other, solvers(other), resume=str(ckpt))
    later = cfg.replace(remove_workers="2@6")
    resumed = run_from_config(later, solvers(later), resume=str(ckpt))
    assert resumed.history == run_from_config(later, solvers(later)).history
    # a checkpoint after a planned departure: resuming without it is refused
    gone = tmp_path / "gone"
    early = cfg.replace(remove_workers="1@2", num_iterations=8)
    run_from_config(early, solvers(early), checkpoint_dir=str(gone), checkpoint_every=5)
    with pytest.raises(ValueError, match="departures 1@2 .*this run plans none"):
        run_from_config(cfg, solvers(cfg), resume=str(gone))


def test_a_resume_of_an_algorithm_that_does_not_gossip_ignores_the_mixing(tmp_path) -> None:
    """Q-GADMM reads no mixing weights: a resume with another ``mixing`` continues."""
    grid = {**LINREG_GOSSIP, "topology": "grid", "num-workers": 6, "num-iterations": 8}
    gadmm = config("q-gadmm", **{**grid, "rho": 0.0})
    run_from_config(gadmm, solvers(gadmm), checkpoint_dir=str(tmp_path), checkpoint_every=5)
    other = gadmm.replace(mixing="max-degree")
    resumed = run_from_config(other, solvers(other), resume=str(tmp_path))
    assert resumed.history[-1]["iteration"] == 8


def test_a_resume_of_a_folder_that_is_no_run_writes_nothing_there(app, tmp_path) -> None:
    """``resume`` naming the results folder (which holds run folders) or any other folder
    or file used to be refused only after an empty ``history.jsonl`` had been created in
    it (and "Results go to <that folder>" logged); the refusal of a results folder now
    names the runs it holds."""
    cfg = config("q-gadmm", **{"num-iterations": 6, "checkpoint-every": 5})
    rc = cfg.to_run_config()
    results = tmp_path / "results"
    RelayStrategy.from_config(cfg, results_dir=results).start(
        FakeGrid(app, cfg.num_workers, rc), num_rounds=6
    )
    (run,) = results.iterdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    cases = (
        (results, f"holds the run folders {run.name}: give one of them"),
        (elsewhere, "no checkpoint in"),
        (elsewhere / "notes.txt", "no checkpoint in"),
    )
    for given, message in cases:
        before = sorted(p.name for p in given.parent.rglob("*"))
        with pytest.raises(FileNotFoundError, match=message):
            RelayStrategy.from_config(cfg, resume=given).start(
                FakeGrid(app, cfg.num_workers, rc), num_rounds=6
            )
        assert sorted(p.name for p in given.parent.rglob("*")) == before, given


def test_a_resume_into_another_runs_out_is_checked_as_a_new_run_is(tmp_path, capsys) -> None:
    """``--resume A --out B``: B holding an interrupted run is refused, as a new run over
    it is (before: B's history was overwritten, its run's checkpoint left to be resumed
    later under A's history); over a finished B the resume writes the whole history into
    B and deletes B's old checkpoints, as a new run does; A's history stays as it was."""
    from flower_qgadmm.simulate import main

    base = ["--workers", "4", "--dim", "5", "--checkpoint-every", "5"]
    a, b, whole = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "whole.jsonl"
    for out in (a, b):
        assert main([*base, "--iterations", "12", "--out", str(out)]) == 0
    assert main([*base, "--iterations", "20", "--out", str(whole)]) == 0
    for folder in ("a-checkpoint", "b-checkpoint"):  # both killed after iteration 12
        (tmp_path / folder / "finished.json").unlink()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    resume = [*base, "--iterations", "20", "--resume", str(tmp_path / "a-checkpoint")]
    assert main([*resume, "--out", str(b)]) == 2
    err = capsys.readouterr().err
    assert f"--out {b} holds an interrupted run" in err
    assert f"--resume {tmp_path / 'b-checkpoint'} to continue it" in err
    assert err.rstrip().endswith(f"for the run resumed from {tmp_path / 'a-checkpoint'}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # B finished: the resume continues A into B
    (tmp_path / "b-checkpoint" / "finished.json").write_text('{"iteration": 12}')
    assert main([*resume, "--out", str(b)]) == 0
    assert read_history(b) == read_history(whole)
    assert a.read_bytes() == before[a]
    with pytest.raises(FileNotFoundError):
        latest(tmp_path / "b-checkpoint")
    assert latest(tmp_path / "a-checkpoint") == 20
    # the same with --out naming the resumed run's own history: no refusal
    capsys.readouterr()
    (tmp_path / "a-checkpoint" / "finished.json").unlink()
    assert main([*resume, "--out", str(a)]) == 0
    assert read_history(a) == read_history(whole)


def test_a_resume_may_not_change_evaluate_every(tmp_path) -> None:
    """evaluate-every decides which rows carry the models' metrics (and, over Flower, the
    models' bytes): a resume with another one wrote a history that matched neither run
    (before: accepted silently). The same one continues."""
    cfg = config("q-gadmm", **{"num-iterations": 12, "evaluate-every": 3})
    whole = run_from_config(cfg, solvers(cfg))
    run_from_config(
        cfg.replace(num_iterations=8),
        solvers(cfg),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=5,
    )
    other = cfg.replace(evaluate_every=4)
    with pytest.raises(ValueError, match=r"evaluate-every: 3 -> 4" + CONTINUE):
        run_from_config(other, solvers(other), resume=str(tmp_path))
    resumed = run_from_config(cfg, solvers(cfg), resume=str(tmp_path))
    assert resumed.history == whole.history


def test_resume_names_a_missing_folder_before_loading_the_data(
    tmp_path, capsys, monkeypatch
) -> None:
    """A mistyped --resume is refused before the data are loaded (an image task's take
    seconds), naming the folder it likely meant (before: "no checkpoint in cut-chekpoint
    (no latest.json)" once the data were loaded); a folder without a checkpoint too."""
    from flower_qgadmm import simulate

    def no_data(cfg):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(simulate, "build_solvers", no_data)
    (tmp_path / "cut-checkpoint").mkdir()
    (tmp_path / "cut-checkpoint" / "latest.json").write_text('{"iteration": 5}')
    (tmp_path / "empty").mkdir()
    mistyped = str(tmp_path / "cut-chekpoint")
    assert simulate.main(["--resume", mistyped]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint in {mistyped}: no such folder or file" in err
    assert f"did you mean {tmp_path / 'cut-checkpoint'}?" in err
    assert simulate.main(["--resume", str(tmp_path / "empty")]) == 2
    assert f"no checkpoint in {tmp_path / 'empty'} (no latest.json)" in capsys.readouterr().err


def _interrupted_cli_run(args: list[str], at: int, out: Path, monkeypatch) -> None:
    """The CLI run of ``args`` into ``out``, interrupted (Ctrl-C) in iteration ``at``."""
    from flower_qgadmm.rounds import RoundEngine
    from flower_qgadmm.simulate import main

    run_round = RoundEngine.run_round

    def interrupted(self, k, final=False):
        if k == at:
            raise KeyboardInterrupt
        return run_round(self, k, final=final)

    with monkeypatch.context() as patch:
        patch.setattr(RoundEngine, "run_round", interrupted)
        assert main([*args, "--out", str(out)]) == 130
    assert [r["iteration"] for r in read_history(out)] == list(range(1, at))


#: runs whose settings are far from the defaults (a resume must not need them repeated)
AWAY_FROM_DEFAULTS = {
    "q-gadmm adaptive bits": [
        "--algorithm", "q-gadmm", "--workers", "5", "--dim", "6", "--seed", "2",
        "--bits", "2", "--adaptive-bits", "--bits-max", "6", "--omega", "0.9",
        "--iterations", "14", "--checkpoint-every", "4", "--evaluate-every", "3",
    ],
    "choco-sgd ring, max-degree": [
        "--algorithm", "choco-sgd", "--topology", "ring", "--mixing", "max-degree",
        "--workers", "6", "--dim", "4", "--samples-per-worker", "30", "--seed", "5",
        "--iterations", "13", "--checkpoint-every", "5",
    ],
    "d-psgd edges, matrix mixing": [
        "--algorithm", "d-psgd", "--topology", "edges", "--topology-edges", "0-1 1-2 2-0",
        "--mixing", "matrix", "--mixing-matrix", "0.5 0.25 0.25; 0.25 0.5 0.25; 0.25 0.25 0.5",
        "--workers", "3", "--dim", "3", "--iterations", "11", "--checkpoint-every", "3",
    ],
    "gadmm with a departure": [
        "--algorithm", "gadmm", "--workers", "6", "--rho", "2", "--remove-workers", "2@9",
        "--noise", "0.3", "--iterations", "12", "--checkpoint-every", "4",
    ],
    "q-sgadmm on digits": pytest.param([
        "--algorithm", "q-sgadmm", "--task", "digits", "--workers", "3", "--rho", "1",
        "--dual-step", "0.01", "--bits", "4", "--local-steps", "2", "--lr", "0.01",
        "--batch-size", "16", "--iterations", "6", "--checkpoint-every", "2",
        "--evaluate-every", "2",
    ], marks=pytest.mark.slow),  # 45 s
}  # fmt: skip


@pytest.mark.parametrize("args", AWAY_FROM_DEFAULTS.values(), ids=AWAY_FROM_DEFAULTS)
def test_a_cli_resume_takes_the_settings_from_the_checkpoint(args, tmp_path, monkeypatch) -> None:
    """``--resume <folder>`` alone continues the run with the settings its checkpoint
    records: the history is byte for byte the uninterrupted run's (before: the options
    left out took their defaults, and the resume was refused as 'settings differ')."""
    from flower_qgadmm.simulate import main

    monkeypatch.chdir(tmp_path)
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    assert main([*args, "--out", str(whole)]) == 0
    every = int(args[args.index("--checkpoint-every") + 1])
    _interrupted_cli_run(args, 2 * every + 1, cut, monkeypatch)
    assert main(["--resume", str(tmp_path / "cut-checkpoint")]) == 0
    assert cut.read_bytes() == whole.read_bytes()


def test_a_cli_resume_refuses_a_setting_given_otherwise_than_the_checkpoints(
    tmp_path, monkeypatch, capsys
) -> None:
    """Options given with a resume still must match the checkpoint's run (naming the
    differences), but for those a resume may change: more iterations, settings the run
    does not read."""
    from flower_qgadmm.simulate import main

    args = ["--algorithm", "gadmm", "--workers", "4", "--dim", "7", "--seed", "3"]
    args += ["--iterations", "10", "--checkpoint-every", "3"]
    cut = tmp_path / "cut.jsonl"
    _interrupted_cli_run(args, 5, cut, monkeypatch)
    before = cut.read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(cut), "--dim", "9", "--rho", "4"]) == 2
    err = capsys.readouterr().err
    assert "(checkpoint -> now): rho: 0.0 -> 4.0; dim: 7 -> 9" in err, err
    assert main(["--resume", str(cut), "--seed", "0"]) == 2
    assert "(checkpoint -> now): seed: 3 -> 0 (leave those options out" in capsys.readouterr().err
    assert main(["--resume", str(cut), "--topology", "ring"]) == 2
    err = capsys.readouterr().err
    assert "graph: edges [[0, 1], [1, 2], [2, 3]] -> [[0, 1], [0, 3], [1, 2], [2, 3]]" in err, err
    assert "(leave those options out to continue that run" in err
    assert cut.read_bytes() == before  # a refused resume leaves the history as it was
    # more iterations, and an option gadmm does not read (a warning): accepted
    assert main(["--resume", str(cut), "--iterations", "12", "--lr", "0.5"]) == 0
    out = capsys.readouterr()
    assert "resumed after iteration 3" in out.out
    assert [r["iteration"] for r in read_history(cut)] == list(range(1, 13))


def test_a_cli_resume_of_a_checkpoint_without_the_run_config_says_so(
    tmp_path, monkeypatch, capsys, caplog
) -> None:
    """A checkpoint of an earlier version keeps no config record: the resume says so and
    takes the settings from the command line (and the defaults), as before."""
    from flower_qgadmm.checkpoint import _SCALARS
    from flower_qgadmm.simulate import main

    args = ["--algorithm", "gadmm", "--workers", "4", "--dim", "7", "--iterations", "9"]
    args += ["--checkpoint-every", "3"]
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    assert main([*args, "--out", str(whole)]) == 0
    _interrupted_cli_run(args, 5, cut, monkeypatch)
    path = tmp_path / "cut-checkpoint" / "relay-3.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    state = json.loads(bytes(arrays[_SCALARS]).decode())
    del state["run-config"]
    arrays[_SCALARS] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    capsys.readouterr()
    assert main(["--resume", str(cut)]) == 2
    assert "does not record its run's settings (written by an earlier version" in caplog.text
    assert "the checkpoint is of 'gadmm', this run is 'q-gadmm'" in capsys.readouterr().err
    # the settings given, as before: the same history as the uninterrupted run
    assert main([*args, "--resume", str(cut)]) == 0
    assert cut.read_bytes() == whole.read_bytes()


def test_a_refused_flower_resume_names_the_run_config_that_continues_the_run(
    app, tmp_path, caplog
) -> None:
    """Flower passes every key of the project's config (and the ClientApps read theirs
    from it), so a resume takes no setting from the checkpoint: one refused for other
    settings logs the ``--run-config`` that gives the checkpoint's (its record), but for
    those a resume may change (more rounds)."""
    import logging

    cfg = config("gadmm", **{"num-workers": 6, "num-iterations": 6, "checkpoint-every": 5})
    cfg = cfg.replace(seed=4, topology="ring", rho=2.5, evaluate_every=3)
    RelayStrategy.from_config(cfg, results_dir=tmp_path).start(
        FakeGrid(app, cfg.num_workers, cfg.to_run_config()), num_rounds=6
    )
    (run,) = tmp_path.iterdir()
    # the project's config, as Flower gives it: the defaults, but the workers and rounds
    plain = config("gadmm", **{"num-workers": 6, "num-iterations": 9, "resume": str(run)})
    with caplog.at_level(logging.WARNING, logger="flwr"), pytest.raises(ValueError):
        RelayStrategy.from_config(plain, resume=run).start(
            FakeGrid(app, plain.num_workers, plain.to_run_config()), num_rounds=9
        )
    wanted = (
        "flwr run . --run-config \"evaluate-every=3 rho=2.5 seed=4 topology='ring' "
        f"resume='{run}'\""
    )
    assert f"Resume: to continue that run, give its settings: {wanted}" in caplog.text


def test_a_refused_cli_resume_says_to_leave_the_options_out(tmp_path, monkeypatch, capsys) -> None:
    """``--resume`` alone continues a run with its checkpoint's settings, so an option
    given otherwise is refused with "leave those options out" (before: "set them as the
    checkpoint has them", which asked for options the resume does not need); the other
    callers, which take no setting from the checkpoint, keep that advice."""
    from flower_qgadmm.simulate import main

    args = ["--algorithm", "q-gadmm", "--workers", "4", "--dim", "7", "--bits", "4"]
    args += ["--iterations", "10", "--checkpoint-every", "3"]
    cut = tmp_path / "cut.jsonl"
    _interrupted_cli_run(args, 5, cut, monkeypatch)
    capsys.readouterr()
    assert main(["--resume", str(cut), "--bits", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(checkpoint -> now): bits: 4 -> 3 (leave those " in err
    assert err.rstrip().endswith(
        "(leave those options out to continue that run: --resume alone takes its settings "
        "from the checkpoint)"
    ), err
    # the Python API: the settings are the caller's, to set as the checkpoint has them
    cfg = RunConfig.from_run_config(
        {"algorithm": "q-gadmm", "num-workers": 4, "dim": 7, "bits": 3, "num-iterations": 10}
    )
    with pytest.raises(ValueError, match=r"bits: 4 -> 3" + CONTINUE):
        run_from_config(cfg, solvers(cfg), resume=str(tmp_path / "cut-checkpoint"))


def test_a_resume_is_refused_while_another_run_writes_its_checkpoints(
    tmp_path, monkeypatch, capsys
) -> None:
    """A resume (into the run's own history or another ``--out``) of a checkpoint folder
    another run is writing is refused at once, naming the folder and that run's process,
    and writes nothing; a run stopped by Ctrl-C releases its lock (and deletes its file)."""
    import os

    from flower_qgadmm.simulate import RunLocks, main

    args = ["--algorithm", "gadmm", "--workers", "4", "--dim", "5", "--iterations", "8"]
    args += ["--checkpoint-every", "2"]
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    assert main([*args, "--out", str(whole)]) == 0
    _interrupted_cli_run(args, 4, cut, monkeypatch)  # Ctrl-C in iteration 4
    assert not list(tmp_path.glob(".*.lock"))  # released on the interruption
    history = cut.read_bytes()
    other = RunLocks()  # another run writing into cut's checkpoint folder
    other.take(tmp_path / "cut-checkpoint", "cut", "wait")
    before = sorted(tmp_path.rglob("*"))
    try:
        for extra in ([], ["--out", str(tmp_path / "elsewhere" / "h.jsonl")]):
            capsys.readouterr()
            assert main(["--resume", str(tmp_path / "cut-checkpoint"), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: another run (process {os.getpid()}, lock ")
            assert f"is writing the checkpoint folder {tmp_path / 'cut-checkpoint'}: " in err
            assert err.rstrip().endswith("wait until it ends (or stop it) before resuming from it")
            assert sorted(tmp_path.rglob("*")) == before and cut.read_bytes() == history
    finally:
        other.release()
    assert main(["--resume", str(tmp_path / "cut-checkpoint")]) == 0
    assert cut.read_bytes() == whole.read_bytes()
    assert not list(tmp_path.glob(".*.lock"))


def test_a_refused_resume_summarizes_a_large_graph() -> None:
    """A graph of more than topology.EDGES_SHOWN (30) edges is named by its size and one edge that
    differs, not printed whole (a chain of 10,000 would make a 100 KB message)."""
    from flower_qgadmm.rounds import _edges_text

    chain = [[i, i + 1] for i in range(100)]
    assert (
        _edges_text(chain, chain[:50] + chain[51:]) == "100 edges -> 99 edges (edge [50, 51] gone)"
    )
    assert _edges_text(chain, [*chain, [0, 100]]) == "100 edges -> 101 edges (edge [0, 100] new)"
    assert _edges_text(chain, chain[::-1]) == "100 edges -> 100 edges (reordered)"
    assert _edges_text([[0, 1]], [[0, 2]]) == "edges [[0, 1]] -> [[0, 2]]"
