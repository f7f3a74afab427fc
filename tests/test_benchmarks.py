"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick`` writes the page.

No timing is asserted (machines are noisy): only that every part ran and the markdown
has its sections.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # seconds: only a hang fails here (a loaded machine is slow)
    )


def test_quick_suite_writes_the_markdown(tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "benchmarks.md"
    proc = suite("--out", str(out))
    # Assert: exit 0, machine, targets, the codec rows, reserved sections, the scripts
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = out.read_text()
    for heading in ("# Benchmarks", "## Machine", "## Targets", "## Existing scripts"):
        assert heading in page
    for field in ("| CPU |", "| cores |", "| Python |", "| numpy |", "| torch |", "| flwr |"):
        assert field in page
    assert "| date (UTC) | 20" in page
    assert "Quick mode" in page
    for b in (2, 4, 8):
        assert f"| encode {b}-bit, d=" in page and f"| decode {b}-bit (codec.decode_values)" in page
    assert "breakdown 2-bit: level arithmetic" in page
    for title in (
        "Reference runner vs a plain numpy loop",
        "Flower phase vs FedAvg round",
        "100 SuperNodes",
        "Deployment iteration time",
        "Bits to accuracy, every algorithm on its reference set-up",
    ):
        assert f"## {title}" in page
    assert "| linreg 24x50x50, Q-GADMM (3-bit): bits to gap 0.0001 |" in page
    for script in ("bench_quantize.py", "bench_reference.py", "bench_source_coder.py"):
        assert f"simulations/{script}" in page
    assert "exit status" not in page and "Failed" not in page


def test_suite_runs_every_module_of_the_folder(tmp_path: Path) -> None:
    # Prepare: a module filling a reserved section, a new one, and a broken one
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_supernodes.py").write_text(
        "def run(quick):\n"
        "    return [{'name': 'round | 100 nodes', 'measured': 1.5, 'target': 2.0, "
        "'ok': True, 'unit': 's'}]\n"
    )
    (folder / "bench_extra.py").write_text(
        "TITLE = 'Something new'\n"
        "def run(quick):\n"
        "    return [{'name': 'thing', 'measured': 3.0, 'target': None, 'ok': None}]\n"
    )
    (folder / "bench_broken.py").write_text("def run(quick):\n    raise RuntimeError('boom')\n")
    out = tmp_path / "page.md"
    # Execute
    proc = suite("--out", str(out), "--no-scripts", "--bench-dir", str(folder))
    # Assert: a failure is reported (exit 1) without hiding the others
    assert proc.returncode == 1
    page = out.read_text()
    assert "## 100 SuperNodes" in page and "| round \\| 100 nodes | 1.5 s | <= 2 s | ok |" in page
    assert "## Something new" in page and "| thing | 3.00x | - |" in page
    assert "**Failed:**" in page and "RuntimeError: boom" in page
    assert "## Deployment iteration time" in page and "_Not measured yet_" in page


def test_only_runs_the_named_modules(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    row = "[{'name': 'n', 'measured': 1.0, 'target': 2.0, 'ok': True}]"
    (folder / "bench_supernodes.py").write_text(f"def run(quick):\n    return {row}\n")
    (folder / "bench_extra.py").write_text("def run(quick):\n    raise RuntimeError('ran')\n")
    out = tmp_path / "page.md"
    # Execute
    proc = suite(
        "--out", str(out), "--no-scripts", "--bench-dir", str(folder), "--only", "bench_supernodes"
    )
    # Assert: the other module did not run, its section says so
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = out.read_text()
    assert "| n | 1.00x | <= 2.00x | ok |" in page
    assert "## bench_extra" in page and "_Not run this time_" in page and "RuntimeError" not in page
    # a misspelt name is refused (it ran nothing and exited 0)
    proc = suite("--out", str(out), "--bench-dir", str(folder), "--only", "bench_supernode")
    assert proc.returncode == 2 and "--only: no module bench_supernode in" in proc.stderr


def test_bits_ratio_row_names_the_runs_that_missed_the_target(monkeypatch) -> None:
    # A ratio row without a number said only "a run did not reach the target"; with four
    # CHOCO-SGD baselines (top-1% among them) it names the runs that did not
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_bits

    # Prepare
    bits = {"Malcom-PSGD": 585_400, "CHOCO-SGD (top-1%)": None}
    # Execute
    (row,) = bench_bits._ratio("r", bits, "Malcom-PSGD", "CHOCO-SGD (top-1%)", None)
    (both,) = bench_bits._ratio("r", {}, "Malcom-PSGD", "CHOCO-SGD", None)
    # Assert
    assert row["measured"] is None and row["ok"] is None
    assert row["note"] == "CHOCO-SGD (top-1%) did not reach the target"
    assert both["note"] == "Malcom-PSGD and CHOCO-SGD did not reach the target"
    assert "CHOCO-SGD (top-1%)" in bench_bits.IMAGE_VARIANTS
    assert bench_bits.IMAGE_VARIANTS["CHOCO-SGD (top-1%)"][0]["compressor"] == "top-k"


def test_tick_what_if_patches_only_the_simulation_process_and_shortens_its_tick(
    tmp_path: Path, monkeypatch
) -> None:
    # BENCH_FLOWER_TICK's sitecustomize must replace Flower's dispatch loop in a process
    # started as flwr-simulation (and leave its mark), and nowhere else
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_flower_phase

    # Prepare: a script named like Flower's simulation process that counts the looks of
    # the dispatch loop at the state in 0.35 s
    env = bench_flower_phase.tick_patch(0.01, tmp_path)
    probe = (
        "import threading, queue\n"
        "from flwr.server.superlink.fleet.vce import vce_api\n"
        "class State:\n"
        "    looks = 0\n"
        "    def get_message_ins(self, node_id, limit):\n"
        "        State.looks += 1\n"
        "        return ['m'] if State.looks == 1 else []\n"
        "stop, q = threading.Event(), queue.Queue()\n"
        "loop = vce_api.add_messages_to_queue\n"
        "t = threading.Thread(target=loop, args=(State(), q, {7: 0}, stop))\n"
        "t.start(); stop.wait(0.35); stop.set(); t.join()\n"
        "print(State.looks, q.qsize())\n"
    )
    for name in ("flwr-simulation", "other"):
        (tmp_path / "bin").mkdir(exist_ok=True)
        (tmp_path / "bin" / name).write_text(probe)
    run_env = {**os.environ, **env}

    def looks(name: str) -> tuple[int, int]:
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "bin" / name)],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        count, queued = proc.stdout.split()
        return int(count), int(queued)

    # Execute
    patched, queued = looks("flwr-simulation")
    marks = list(tmp_path.glob("patched-*"))
    flower, _ = looks("other")
    # Assert: about 35 looks at a 0.01 s tick against Flower's 4 at 0.1 s; the message
    # found is queued as Flower's loop queues it; only the first process left a mark
    assert patched >= 15 and queued == 1
    assert flower <= 5
    assert len(marks) == 1 and len(list(tmp_path.glob("patched-*"))) == 1


def test_tick_what_if_refuses_a_run_its_patch_did_not_reach(tmp_path: Path, monkeypatch) -> None:
    # a what-if row measured on Flower's own tick would be a false what-if: every run must
    # have had exactly one patched simulation process
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_flower_phase

    # Prepare: fake runs that leave 1, 0 or 2 marks, and record the environment they got
    seen = []

    def fake_run(config, marks):
        seen.append(config["extra_env"]["PYTHONPATH"].split(os.pathsep)[0])
        for i in range(marks):
            (tmp_path / f"patched-{i}").touch()
        return marks

    run_one = bench_flower_phase.tick_patched(
        lambda marks, extra_env: fake_run({"extra_env": extra_env}, marks), 0.01, tmp_path
    )
    # Execute / Assert
    assert run_one(1) == 1 and not list(tmp_path.glob("patched-*"))  # marks cleared
    for marks in (0, 2):
        with pytest.raises(RuntimeError, match=f"{marks} simulation processes patched"):
            run_one(marks)
    assert seen == [str(tmp_path)] * 3
