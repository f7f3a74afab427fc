"""No hangs, no lies: bad settings, data or paths end in one ``error:`` line and exit code
2 (or a correct result), never a traceback, a hang, or exit 0 with a meaningless run.

Cases that could hang inside LAPACK (overflowing statistics) run in a subprocess with a
timeout; the others call ``simulate.main`` in-process under an alarm that fails them
after :data:`LIMIT` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flower_qgadmm import simulate
from flower_qgadmm.history import read_history
from flower_qgadmm.metrics import optimal_model
from flower_qgadmm.simulate import main
from flower_qgadmm.solvers import LeastSquaresSolver

LIMIT = 60  # seconds any one case may take


class Hung(BaseException):
    """Raised by the alarm; a BaseException, so the CLI's handlers do not swallow it."""


@pytest.fixture(autouse=True)
def _bounded():
    def expire(signum, frame):
        raise Hung(f"took more than {LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def cli(capsys, tmp_path, *args: str, iterations: str = "3") -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI with small defaults."""
    out = tmp_path / "h.jsonl"
    argv = ["--iterations", iterations, "--workers", "2", "--dim", "3", "--out", str(out)]
    code = main([*argv, *args])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def assert_one_error_line(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert "[iteration" not in out  # refused before the run started


def regression_csv(path, columns: dict[str, np.ndarray]) -> str:
    names = list(columns)
    data = np.column_stack([columns[n] for n in names])
    np.savetxt(path, data, delimiter=",", header=",".join(names), comments="")
    return str(path)


def features(rows: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 3))
    return {"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": X @ np.array([1.0, -2.0, 0.5])}


def run_python(*args: str, cwd) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd``, killed after LIMIT seconds (without the debug switch)."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != simulate.DEBUG_ENV},
    )


# ---------------------------------------------------------------- 1. overflowing statistics
def test_overflowing_csv_fails_fast_naming_the_cause(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cols = {k: v * 1e160 for k, v in features(6).items()}
    cols["y"] = rng.standard_normal(6) * 1e160
    path = regression_csv(tmp_path / "big.csv", cols)
    args = ["-m", "flower_qgadmm.simulate", "--csv", path, "--target", "y", "--workers", "2"]
    done = run_python(*args, "--iterations", "3", "--out", "h.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()  # no RuntimeWarning either
    assert line.startswith("error: X^T X overflows float64 (|X| up to 1.3e+160, |y| up to")
    assert "rescale the data" in line


def test_solver_refuses_overflowing_statistics_and_non_finite_steps() -> None:
    X = np.full((6, 2), 1e160)
    with pytest.raises(ValueError, match=r"X\^T X overflows float64 \(\|X\| up to 1e\+160"):
        LeastSquaresSolver(X, np.ones(6))
    with pytest.raises(ValueError, match=r"X\^T y overflows float64"):  # X^T X finite
        LeastSquaresSolver(np.ones((6, 2)) * 1e150, np.ones(6) * 1e160)
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0, got nan"):
        LeastSquaresSolver(np.eye(2), np.ones(2), l2=float("nan"))
    solver = LeastSquaresSolver(np.eye(2), np.ones(2))
    with pytest.raises(FloatingPointError, match="right-hand side .* contains NaN/Inf"):
        solver.solve(np.array([np.inf, 0.0]), 1.0)
    with pytest.raises(ValueError, match=r"X\^T X \+ 1e\+308 I overflows"):
        LeastSquaresSolver(np.eye(2) * 1e154, np.ones(2)).solve(np.zeros(2), 1e308)
    with pytest.raises(ValueError, match="not positive definite"):
        LeastSquaresSolver(np.diag([1.0, 0.0]), np.ones(2)).solve(np.zeros(2), 0.0)
    assert np.allclose(solver.solve(np.zeros(2), 1.0), [0.5, 0.5])


def test_optimal_model_refuses_inf_statistics_naming_the_worker(tmp_path) -> None:
    """In a subprocess: an SVD of Inf may never return, so a broken guard must not hang."""
    script = textwrap.dedent(
        """
        import numpy as np
        from flower_qgadmm.metrics import optimal_model
        good = (np.eye(2), np.ones(2))
        bad = (np.array([[np.inf, 0.0], [0.0, 1.0]]), np.ones(2))
        for stats in ({0: good, 3: bad}, [good, bad]):
            try:
                optimal_model(stats)
            except ValueError as exc:
                print(exc)
        """
    )
    done = run_python("-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "worker 3 sent statistics (X^T X, X^T y) containing NaN/Inf",
        "the worker at position 1 sent statistics (X^T X, X^T y) containing NaN/Inf",
    ]


def test_optimal_model_refuses_overflow_when_summed_and_keeps_good_results() -> None:
    huge = (np.eye(2) * 1e308, np.ones(2))
    with pytest.raises(ValueError, match="overflow float64 when summed"):
        optimal_model([huge, huge])
    with pytest.raises(ValueError, match=r"worker 1: statistics of dimension 3, the first has 2"):
        optimal_model({0: (np.eye(2), np.ones(2)), 1: (np.eye(3), np.ones(3))})
    theta = optimal_model([(np.eye(2), np.array([1.0, 2.0]))] * 2)
    assert np.allclose(theta, [1.0, 2.0])


# ---------------------------------------------------------------- 2. meaningless values
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rho", "inf"], "rho must be a finite number > 0 (0: automatic), got inf"),
        (["--rho", "1e300"], "rho must be <= 1e+12, got 1e+300: beyond it the data term"),
        (["--l2", "nan"], "l2 must be a finite number >= 0, got nan"),
        (["--censoring", "--censor-tau0", "inf"], "censor-tau0 must be a finite number > 0"),
        (["--dual-step", "inf"], "dual-step must be a finite number > 0 (0: automatic), got inf"),
        (
            ["--algorithm", "d-psgd", "--topology", "ring", "--step-size", "inf"],
            "step-size must be a finite number >= 0, got inf",
        ),
        (
            ["--algorithm", "choco-sgd", "--topology", "ring", "--consensus-step", "inf"],
            "consensus-step must be a finite number >= 0, got inf",
        ),
    ],
)
def test_meaningless_settings_are_refused(args, message, capsys, tmp_path) -> None:
    assert_one_error_line(*cli(capsys, tmp_path, *args), message)


def test_rho_at_the_bound_is_accepted(capsys, tmp_path) -> None:
    code, out, err = cli(capsys, tmp_path, "--rho", "1e12", iterations="2")
    assert code == 0, err


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"y": np.arange(1.0, 7.0)}, "has only the target column 'y': no feature columns"),
        (
            {k: v * 1e-200 for k, v in features().items()},
            "column(s) ['a', 'b', 'c'] have no value of magnitude >= 1e-150: their squares",
        ),
        (
            {**features(), "y": features()["y"] * 1e-200},
            "target 'y' has no value of magnitude >= 1e-150",
        ),
    ],
)
def test_data_without_a_model_or_below_float64_is_refused(columns, message, capsys, tmp_path):
    path = regression_csv(tmp_path / "d.csv", columns)
    assert_one_error_line(*cli(capsys, tmp_path, "--csv", path, "--target", "y"), message)


# ---------------------------------------------------------------- 3. tracebacks before
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-every", "0"], "log-every must be an integer >= 1, got 0"),
        (["--tolerance", "nan"], "tolerance must be a finite number > 0, got nan"),
        (["--topology-param", "inf"], "topology-param must be a finite number >= 0, got inf"),
        (["--topology-param", "-2"], "topology-param must be a finite number >= 0, got -2"),
        (["--topology-param", "2.5"], "topology-param of a grid is its number of rows"),
    ],
)
def test_run_options_are_checked(args, message, capsys, tmp_path) -> None:
    grid = ["--algorithm", "d-psgd", "--topology", "grid", "--workers", "4"]
    assert_one_error_line(*cli(capsys, tmp_path, *grid, *args), message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,y\n" + "1" * 140_000 + ",2\n1,2\n", "d.csv:2: not a readable CSV (field larger"),
        ("1,2,3\n4,5,6\n7,8,9\n", "has no header row: its first row ['1', '2', '3'] is numbers"),
        ("a,a,y\n1,2,3\n4,5,6\n", "duplicate column name(s) ['a']"),
        ("a,z,y\n1,0,3\n4,0,6\n", "column(s) ['z'] are all zero: drop them"),
        ("a,k,j,y\n1,1,2,3\n4,1,2,6\n", "constant column(s) ['k', 'j']: they are collinear"),
        ("a,y\n1,2\nx,3\n", "d.csv:3: column 'a' has a non-numeric value 'x'"),
        ("a,b,y\n1,2,3\n4,nan,6\n", "d.csv:3: column 'b' is nan (NaN/Inf values are refused)"),
        ("a,y\n1,2\n4,inf\n", "d.csv:3: column 'y' is inf"),
    ],
)
def test_bad_csv_files_give_one_line(text, message, capsys, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    code, out, err = cli(capsys, tmp_path, "--csv", str(path), "--target", "y")
    assert_one_error_line(code, out, err, message)


def test_a_text_column_can_be_dropped_or_left_out(tmp_path) -> None:
    from flower_qgadmm.data import read_csv

    path = tmp_path / "t.csv"
    path.write_text("a,city,b,y\n1,rome,2,3\n4,oslo,5,7\n2,lima,1,4\n")
    for kwargs in ({"drop": "city"}, {"features": "a,b"}):
        X, y = read_csv(path, "y", **kwargs)
        np.testing.assert_array_equal(X, [[1, 2], [4, 5], [2, 1]])
        np.testing.assert_array_equal(y, [3, 7, 4])
    with pytest.raises(ValueError, match="t.csv:2: column 'city' has a non-numeric value 'rome'"):
        read_csv(path, "y")


def test_non_utf8_csv_gives_one_line(capsys, tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("a,\xe9,y\n1,2,3\n".encode("latin-1"))
    code, out, err = cli(capsys, tmp_path, "--csv", str(path), "--target", "y")
    assert_one_error_line(code, out, err, "d.csv is not UTF-8 text")


def test_bom_header_and_one_intercept_column_run_correctly(capsys, tmp_path) -> None:
    cols = features(40)
    cols = {"a": cols["a"], "one": np.ones(40), "y": 2.0 * cols["a"] + 3.0}
    path = tmp_path / "bom.csv"
    plain = regression_csv(tmp_path / "plain.csv", cols)
    path.write_bytes(b"\xef\xbb\xbf" + open(plain, "rb").read())
    args = ["--csv", str(path), "--target", "a", "--rho", "2", "--bits", "8"]
    code, out, err = cli(capsys, tmp_path, *args, iterations="200")  # BOM on the target name
    assert code == 0, err
    assert read_history(tmp_path / "h.jsonl")[-1]["optimum_distance"] < 1e-6


# ---------------------------------------------------------------- 4. output paths
def test_bad_output_paths_fail_before_the_run(capsys, tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    cases = [
        (["--out", str(tmp_path)], f"--out {tmp_path} is a folder: give a file name"),
        (["--out", str(tmp_path / "afile" / "h.jsonl")], "afile is not a folder"),
        (["--plot", str(tmp_path)], "is a folder: give a file name"),
        (["--plot", str(tmp_path / "plot")], "the suffix must be an image format, one of"),
        (["--out", str(tmp_path / "h.png")], "--plot and --out name the same file"),
    ]
    for args, message in cases:
        csv = ["--csv", "none.csv", "--target", "y"]  # the paths are checked first
        assert_one_error_line(*cli(capsys, tmp_path, *csv, *args), message)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_fails_before_the_run(capsys, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = ["--plot", str(locked / "p.png")]
        assert_one_error_line(*cli(capsys, tmp_path, *args), "is not writable")
    finally:
        locked.chmod(0o700)


def test_missing_plot_folder_is_created(capsys, tmp_path) -> None:
    png = tmp_path / "new" / "deeper" / "p.svg"
    code, out, err = cli(capsys, tmp_path, "--plot", str(png), iterations="2")
    assert code == 0, err
    assert png.stat().st_size > 0 and f"plot: {png}" in out


# ---------------------------------------------------------------- 5. the top level
def test_a_bug_is_one_line_with_a_hint_and_the_traceback_on_request(
    capsys, tmp_path, monkeypatch
) -> None:
    def broken(cfg):
        raise AttributeError("'X' object has no attribute 'y'")

    monkeypatch.setattr(simulate, "build_solvers", broken)
    monkeypatch.delenv(simulate.DEBUG_ENV, raising=False)
    code, out, err = cli(capsys, tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: internal error: AttributeError: 'X' object has no attribute")
    assert f"rerun with {simulate.DEBUG_ENV}=1 for the traceback" in err
    monkeypatch.setenv(simulate.DEBUG_ENV, "1")
    code, out, err = cli(capsys, tmp_path)
    assert code == 2 and err.startswith("Traceback")
    assert err.strip().splitlines()[-1].startswith("error: internal error: AttributeError")


def test_interrupt_keeps_the_history_so_far(capsys, tmp_path, monkeypatch) -> None:
    def progress_line(row, first=None):
        if row["iteration"] == 3:
            raise KeyboardInterrupt
        return "ok"

    monkeypatch.setattr(simulate, "progress_line", progress_line)
    code, out, err = cli(capsys, tmp_path, "--log-every", "1", iterations="10")
    assert code == 130 and "error: interrupted" in err and "Traceback" not in err
    assert [r["iteration"] for r in read_history(tmp_path / "h.jsonl")] == [1, 2, 3]


def test_module_entry_point_prints_no_traceback(tmp_path) -> None:
    (tmp_path / "d.csv").write_text("a,y\n" + "1" * 140_000 + ",2\n")
    args = ["-m", "flower_qgadmm.simulate", "--csv", "d.csv", "--target", "y", "--log-every"]
    done = run_python(*args, "0", cwd=tmp_path)
    assert (
        done.returncode == 2 and done.stderr == "error: log-every must be an integer >= 1, got 0\n"
    )
    done = run_python(*args, "1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: d.csv:2: not a readable CSV")
