"""The reference runner's command line: outputs, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from flower_qgadmm.history import read_history
from flower_qgadmm.simulate import main

KEYS = {"iteration", "objective", "objective_gap", "edge_disagreement", "bits", "nominal_bits"}


def test_cli_writes_history_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "run" / "h.jsonl"
    code = main(
        [
            "--workers",
            "4",
            "--iterations",
            "30",
            "--dim",
            "5",
            "--bits",
            "3",
            "--rho",
            "5",
            "--log-every",
            "10",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    rows = read_history(out)
    assert len(rows) == 30 and KEYS <= set(rows[0])
    # models are pulled every evaluate-every (10) rounds and in the last
    assert [r["iteration"] for r in rows if "consensus_error" in r] == [10, 20, 30]
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    assert rows[-1]["nominal_bits"] == 30 * 4 * (3 * 5 + 32)
    assert (tmp_path / "run" / "h.png").stat().st_size > 0
    assert "[iteration 30/30] gap=" in printed and "history: " in printed


def test_cli_csv_option_uses_the_users_rows(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    path = tmp_path / "data.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,c,label", comments="")
    out = tmp_path / "h.jsonl"
    assert (
        main(
            [
                "--csv",
                str(path),
                "--target",
                "label",
                "--workers",
                "3",
                "--rho",
                "2",
                "--iterations",
                "200",
                "--bits",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert read_history(out)[-1]["optimum_distance"] < 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algorithm", "sgd"], "unknown algorithm 'sgd'; choose one of ['choco-sgd', 'd-psgd'"),
        (["--algorithm", "q-sgadmm"], "algorithm 'q-sgadmm' does not apply to task 'linreg'"),
        (["--algorithm", "gadmm", "--topology", "ring", "--workers", "5"], "odd cycle"),
        (
            ["--algorithm", "d-psgd", "--topology", "edges", "--topology-edges", "0-1 2-3"],
            "disconnected",
        ),
        (["--bits", "17"], "bits must be in 1..16, got 17"),
        (["--bits", "0"], "bits must be in 1..16, got 0"),
        (["--rho", "-1"], "rho must be a finite number > 0"),  # 0 now means automatic
        (["--rho", "nan"], "rho must be a finite number > 0 (0: automatic), got nan"),
        (["--workers", "1"], "num-workers must be >= 2"),
        (["--csv", "missing.csv", "--target", "y"], "CSV file not found: missing.csv"),
        (["--csv", "CSV"], "data-csv is set but data-target"),
    ],
)
def test_cli_bad_input_gives_one_clear_line(args, message, tmp_path, capsys) -> None:
    args = [str(tmp_path / "d.csv") if a == "CSV" else a for a in args]
    code = main([*args, "--iterations", "2", "--out", str(tmp_path / "h.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rhoo", "3"], "unrecognized arguments: --rhoo 3 (did you mean --rho for --rhoo?)"),
        (["--rhoo=3"], "unrecognized arguments: --rhoo=3 (did you mean --rho for --rhoo?)"),
        (["--results-dir=x"], "--results-dir is a setting of Flower runs only (flwr run)"),
        (["--task", "digts"], "task 'digts' is unknown; this CLI runs linreg, digits"),
        (["--task", "custom"], "task 'custom' runs your own ClientApp, on Flower only"),
        (["--results-dir", "x"], "--results-dir is a setting of Flower runs only (flwr run)"),
        (["--fraction-train", "1"], "--fraction-train is a setting of Flower runs only"),
        (["--bits", "x"], "argument --bits: invalid int value: 'x' (see "),
    ],
)
def test_cli_option_errors_are_one_line_with_a_hint(args, message, capsys) -> None:
    try:
        code = main(args)  # errors of the settings: exit code 2
    except SystemExit as stop:  # errors of the options (argparse)
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_csv_without_target_column(tmp_path, capsys) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n")
    assert main(["--csv", str(path), "--target", "y", "--out", str(tmp_path / "h.jsonl")]) == 2
    assert "has no target column 'y'; columns: ['a', 'b']" in capsys.readouterr().err


def test_cli_semicolon_csv_gets_a_hint(tmp_path, capsys) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a;b;y\n1;2;3\n3;4;5\n5;6;7\n")
    assert main(["--csv", str(path), "--target", "y", "--out", str(tmp_path / "h.jsonl")]) == 2
    assert "(the file looks ';'-separated: save it with commas)" in capsys.readouterr().err


def test_help_describes_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--step-size", "--mixing", "--rho", "--topology", "--workers", "--lr"):
        assert option in text
    assert "gossip: gradient step eta" in text and "(default: metropolis)" in text


def test_a_diverging_run_stops_with_one_line_and_keeps_its_history(tmp_path, capsys) -> None:
    out = tmp_path / "h.jsonl"
    args = ["--algorithm", "d-psgd", "--topology", "ring", "--workers", "5", "--step-size", "0.9"]
    code = main([*args, "--samples-per-worker", "20", "--dim", "5", "--out", str(out)])
    err = capsys.readouterr().err
    # stopped by the relay's watchdog (growth relative to the first iterations) before a
    # worker's model overflows (which happened at iteration 20): every row up to it is kept
    assert code == 2 and "error: the run diverged at iteration 12" in err
    assert "Traceback" not in err
    assert [r["iteration"] for r in read_history(out)] == list(range(1, 13))


def test_paper_sweeps_script_writes_its_tables(tmp_path) -> None:
    # the Q-GADMM paper's sensitivity sweeps, smoke sizes: one table per sweep, GADMM
    # and Q-GADMM reaching the tolerance, fewer bits for Q-GADMM
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "simulations" / "paper_sweeps.py"
    spec = importlib.util.spec_from_file_location("paper_sweeps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--results-dir", str(tmp_path)])
    text = out.read_text()
    assert text.count("## ") == 3 and "diverged" not in text and "> 200" not in text
    ratios = [
        float(line.rsplit("|", 2)[1]) for line in text.splitlines() if line.startswith("| 20 |")
    ]
    assert ratios and all(0 < r < 0.5 for r in ratios)


def test_a_resume_without_out_continues_the_runs_own_history(tmp_path, monkeypatch) -> None:
    # --out h.json checkpoints into h-checkpoint; the resume continues h.json (not h.jsonl)
    monkeypatch.chdir(tmp_path)
    base = ["--workers", "4", "--checkpoint-every", "2"]
    assert main([*base, "--iterations", "4", "--out", "h.json"]) == 0
    assert main([*base, "--iterations", "8", "--resume", "h-checkpoint"]) == 0
    assert [r["iteration"] for r in read_history(tmp_path / "h.json")] == list(range(1, 9))
    assert not (tmp_path / "h.jsonl").exists() and not (tmp_path / "results").exists()


def test_cli_warns_about_options_the_run_does_not_read(tmp_path, caplog) -> None:
    args = ["--algorithm", "d-psgd", "--topology", "ring", "--workers", "4", "--dim", "5"]
    args += ["--iterations", "2", "--out", str(tmp_path / "h.jsonl")]
    with caplog.at_level("WARNING"):
        assert main([*args, "--lr", "0.3", "--levels", "4"]) == 0
    assert "options levels, lr: not read by d-psgd on task 'linreg'; ignored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main([*args, "--out", str(tmp_path / "h2.jsonl")]) == 0
    assert "not read" not in caplog.text


def test_help_states_each_default_once(capsys) -> None:
    """--help names every option's default exactly once (a help text that already says
    its default, as --features does, is not followed by argparse's), empty ones as "",
    and the CLI's own --log-every and --tolerance too."""
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("options:"))
    blocks: list[str] = []
    for line in lines[start:]:
        if line.startswith("  --"):
            blocks.append(line)
        elif line.startswith("   ") and blocks:
            blocks[-1] += " " + line.strip()
    blocks = [b for b in blocks if not b.startswith("  --help")]
    assert len(blocks) > 50
    assert not [b.split()[0] for b in blocks if b.count("(default:") != 1]
    assert not [b.split()[0] for b in blocks if "(default: )" in b]
    text = " ".join(blocks)
    assert "(default: 25)" in text and "(default: 1e-06)" in text


def test_an_out_ending_in_a_slash_is_refused_not_written_as_a_file(tmp_path, capsys) -> None:
    """``--out results/run1/`` means a folder: refused before the run (before: the history
    went to a file named ``run1`` and the plot to ``run1.png``)."""
    for option in ("--out", "--plot"):
        target = f"{tmp_path / 'run1'}/"
        with pytest.raises(SystemExit) as stop:  # an error of the options (argparse)
            main(["--workers", "2", "--iterations", "2", option, target])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1
        assert f"argument {option}: {target} names a folder: give a file name" in err, err
        assert not (tmp_path / "run1").exists() and not (tmp_path / "run1.png").exists()


def test_running_out_of_memory_is_the_inputs_size_not_an_internal_error(
    tmp_path, capsys, monkeypatch
) -> None:
    """``--samples-per-worker 1000000000`` (a typo) fails numpy's allocation: the error
    names memory and the size settings, not 'internal error ... please report it'."""
    import flower_qgadmm.simulate as simulate

    def too_big(cfg):
        raise MemoryError("Unable to allocate 298. GiB for an array with shape (2000000000, 20)")

    monkeypatch.setattr(simulate, "build_solvers", too_big)
    code = main(["--workers", "2", "--iterations", "2", "--out", str(tmp_path / "h.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: out of memory: Unable to allocate 298. GiB") and "dim" in err
    assert "internal error" not in err


def test_a_file_where_the_checkpoint_folder_goes_is_refused_before_the_run(
    tmp_path, capsys
) -> None:
    """``<out stem>-checkpoint`` existing as a file ended the run with a raw "[Errno 20]
    Not a directory: .../finished.json"; it is refused with what to do."""
    (tmp_path / "h-checkpoint").write_text("not a folder")
    code = main(["--iterations", "2", "--out", str(tmp_path / "h.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"its checkpoint folder {tmp_path / 'h-checkpoint'} is a file" in err
    assert not (tmp_path / "h.jsonl").exists()


def test_a_reader_that_leaves_stops_the_run_quietly_keeping_its_history(tmp_path) -> None:
    """``python -m flower_qgadmm.simulate ... | head -1``: the reader leaves after a line;
    the run stops as SIGPIPE would stop it, with no error line and no traceback, exit
    code 1 (Python's "Note on SIGPIPE"), every completed row in the history (before:
    ``error: [Errno 32] Broken pipe``, exit code 2)."""
    import subprocess
    import sys

    out = tmp_path / "h.jsonl"
    argv = ["--workers", "4", "--dim", "5", "--iterations", "100000", "--log-every", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flower_qgadmm.simulate", *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # as head -1 does
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first.startswith("[iteration 1/100000]")
    assert code == 1, err
    assert "error" not in err and "Traceback" not in err and "Broken pipe" not in err
    rows = read_history(out)
    assert 1 <= len(rows) < 100000
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    assert out.with_suffix(".png").exists()


def test_resume_expands_a_tilde_no_shell_expanded(tmp_path, monkeypatch) -> None:
    """``--resume=~/run`` (no shell expands a ``~`` after ``=``) names the home folder's
    run, as Flower's ``resume`` does (before: 'no checkpoint in ~/h-checkpoint')."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    base = ["--workers", "4", "--checkpoint-every", "2"]
    assert main([*base, "--iterations", "4", "--out", str(tmp_path / "h.jsonl")]) == 0
    assert main([*base, "--iterations", "6", "--resume=~/h-checkpoint"]) == 0
    assert [r["iteration"] for r in read_history(tmp_path / "h.jsonl")] == list(range(1, 7))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_out_and_plot_expand_a_tilde_no_shell_expanded(tmp_path, monkeypatch) -> None:
    """``--out=~/h.jsonl`` writes into the home folder (before: into a folder named ``~``
    under the current one)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = ["--workers", "3", "--iterations", "2", "--out=~/h.jsonl", "--plot=~/p.png"]
    assert main(args) == 0
    assert (tmp_path / "h.jsonl").is_file() and (tmp_path / "p.png").is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_misspelt_csv_column_gets_a_did_you_mean(tmp_path, capsys) -> None:
    """``--target prize`` on a CSV with a ``price`` column: the error suggests it (before:
    "has no target column 'prize'; columns: [...]" and nothing more); so do misspelt
    ``--features`` and ``--drop`` names."""
    path = tmp_path / "d.csv"
    path.write_text("size,rooms,price\n1,2,3\n3,4,5\n5,6,8\n")
    out = ["--out", str(tmp_path / "h.jsonl")]
    assert main(["--csv", str(path), "--target", "prize", *out]) == 2
    err = capsys.readouterr().err
    assert "has no target column 'prize'; columns: ['size', 'rooms', 'price'] (did you mean " in err
    assert "(did you mean 'price'?)" in err and err.count("\n") == 1
    assert main(["--csv", str(path), "--target", "price", "--features", "sise,rooms", *out]) == 2
    assert "(did you mean 'size' for 'sise'?)" in capsys.readouterr().err
    assert main(["--csv", str(path), "--target", "price", "--drop", "romos", *out]) == 2
    assert "(did you mean 'rooms' for 'romos'?)" in capsys.readouterr().err
    assert main(["--csv", str(path), "--target", "cost", *out]) == 2  # nothing close
    assert "did you mean" not in capsys.readouterr().err
    assert not (tmp_path / "h.jsonl").exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys) -> None:
    """Two runs on one ``--out`` interleaved their writes to the history (and the
    checkpoints); the second is now refused at once, naming the file and the first
    run's process, and writes nothing. A killed run's lock blocks nobody."""
    import subprocess
    import sys

    out = tmp_path / "h.jsonl"
    argv = ["--workers", "4", "--dim", "5", "--iterations", "100000", "--log-every", "1"]
    argv += ["--checkpoint-every", "0", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "flower_qgadmm.simulate", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert first.stdout.readline().startswith("[iteration 1/100000]")
        assert main(["--workers", "3", "--iterations", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"error: another run (process {first.pid}, lock " in err
        assert f"is writing {out} and {tmp_path / 'h-checkpoint'}: wait until it ends" in err
        assert "or give another --out" in err
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # SIGKILL: its lock file stays, unlocked
        first.communicate()
    rows = read_history(out)  # the first run's rows alone, from 1 on (none truncated)
    assert rows and [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    assert not (tmp_path / "h-checkpoint").exists()  # the second wrote no checkpoint
    assert (tmp_path / ".h-checkpoint.lock").exists()  # the killed run's, unlocked
    assert main(["--workers", "3", "--iterations", "2", "--out", str(out)]) == 0
    assert [r["iteration"] for r in read_history(out)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h-checkpoint", "h.jsonl", "h.png"]
