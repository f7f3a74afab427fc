"""History files and summaries of runs that stopped early or carry non-finite values."""

from __future__ import annotations

import json
import math

import numpy as np

from flower_qgadmm.history import (
    format_summary,
    gap_key,
    json_line,
    progress_line,
    read_history,
    summarize,
    write_history,
)


def test_a_summary_of_a_run_stopped_between_evaluation_rounds() -> None:
    # Prepare: accuracy only in evaluation rows (every 3rd); the run stopped at round 5
    rows = [
        {"iteration": k, "objective": 1.0 / k, "train_loss": 0.5, "bits": 10 * k}
        for k in (1, 2, 3, 4, 5)
    ]
    rows[2].update(accuracy=0.8, consensus_error=0.1)
    # Execute
    line = format_summary("q-sgadmm", rows, 1e-6)
    # Assert: the last evaluation row's accuracy, said to be of round 3 (it was a KeyError)
    assert "round 3 accuracy 0.8000" in line and "50 bits" in line


def test_non_finite_values_round_trip_through_a_history_file(tmp_path) -> None:
    rows = [
        {
            "iteration": 1,
            "objective": 2.0,
            "objective_gap": math.nan,
            "bits": 8,
            "extra": [0.5, math.inf],
        },
        {
            "iteration": 2,
            "objective": 1.0,
            "objective_gap": 0.5,
            "bits": 16,
            "consensus_error": 0.2,
        },
        {"iteration": 3, "objective": 1.0, "objective_gap": 0.25, "bits": 24},
    ]
    path = write_history(tmp_path / "h.jsonl", rows)
    # strict JSON on disk, nested values included
    first = json.loads(path.read_text().splitlines()[0])
    assert first["objective_gap"] is None and first["extra"] == [0.5, None]
    assert json_line({"a": {"b": math.nan}}) == '{"a": {"b": null}}\n'
    # read back: NaN again, so summaries compute instead of failing on None
    back = read_history(path)
    assert math.isnan(back[0]["objective_gap"])
    summary = summarize(back, 1e-6)
    assert summary["final_consensus_error"] == 0.2  # the last row that has it
    assert summary["models_iteration"] == 2


def test_a_run_stopped_between_two_pulls_says_which_models_it_measured() -> None:
    from flower_qgadmm.history import format_summary

    rows = [
        {"iteration": k, "objective": 1.0, "objective_gap": 0.5 / k, "bits": 8 * k}
        for k in range(1, 20)
    ]
    rows[9].update(consensus_error=0.25, optimum_error=0.125)  # the pull of iteration 10
    # Execute / Assert: the values of iteration 10, said to be so
    line = format_summary("q-gadmm", rows, 1e-6)
    assert "consensus error 2.500e-01 (models of iteration 10)" in line
    assert "||theta - theta*|| 1.250e-01 (models of iteration 10)" in line
    # no pull at all: not a NaN
    for r in rows:
        r.pop("consensus_error", None), r.pop("optimum_error", None)
    assert "consensus error not measured (no model pulled)" in format_summary("x", rows, 1e-6)
    # a finished run's last row pulled: nothing added
    rows[-1].update(consensus_error=0.5)
    assert "consensus error 5.000e-01, " in format_summary("x", rows, 1e-6)


def test_a_solver_metric_named_like_a_row_field_replaces_nothing() -> None:
    from flower_qgadmm.metrics import history_row

    reports = [{"objective": 1.0, "iteration": 7.0, "accuracy": 0.5}] * 2
    row = history_row(1, reports, {"bits": 0})
    assert row["iteration"] == 1 and row["accuracy"] == 0.5


def test_a_numpy_model_saves_any_key_names_and_loads_back(tmp_path) -> None:
    """np.savez(path, **arrays) raised on keys named like its parameters."""
    from flower_qgadmm.model_arrays import save_model

    arrays = {
        "file": np.arange(3.0),
        "allow_pickle": np.eye(2, dtype=np.float32),
        "layer.0.weight": np.array([[1.5, -2.0]]),
        "empty": np.zeros(0),
    }
    path = save_model(tmp_path, arrays, "numpy")
    assert path.name == "model.npz"
    with np.load(path) as saved:
        assert sorted(saved.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(saved[key], value)
            assert saved[key].dtype == value.dtype


def test_progress_line_uses_the_absolute_gap_when_the_optimum_is_about_zero() -> None:
    # an interpolating problem: F* is round-off, so |F - F*| / |F*| means nothing
    row = {"objective": 3.0, "objective_gap": 4e22, "objective_error": 1e-6, "bits": 8}
    assert progress_line({**row, "optimum_value": 2e-29}).startswith("abs-gap=1.000e-06 ")
    assert progress_line({**row, "optimum_value": 2.0}).startswith("gap=4.000e+22 ")
    assert progress_line({"objective_gap": 0.5, "bits": 8}) == "gap=5.000e-01 bits=8"
    # the summary's choice (gap_key): F* measured against the run's first objective
    late = {**row, "objective": 1e-3, "optimum_value": 9e-11, "objective_error": 1e-12}
    first = {"objective": 1e4}
    assert progress_line(late, first).startswith("abs-gap=1.000e-12 ")
    assert gap_key([first, late]) == "objective_error"
