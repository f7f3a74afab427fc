"""simulations/history_hashes.py: the identity check of speed work (same seed, same
numbers) must itself be deterministic and see every run's numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "simulations" / "history_hashes.py"


def hashes(iterations: int) -> list[tuple[str, str]]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", str(iterations)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(line.split(" ", 1)) for line in proc.stdout.splitlines()]


def test_same_seed_gives_the_same_hashes_and_every_run_its_own() -> None:
    # Execute: the script twice, each in its own process (nothing shared but the seeds)
    first, second = hashes(12), hashes(12)
    # Assert: 33 runs, identical from one process to the next
    assert len(first) == 33 and first == second
    # every run differs from every other (a hash that missed the history, the models or
    # the settings' effect would collide), the repair run included
    assert len({h for h, _ in first}) == 33
    assert '"remove-workers": "3@4"' in first[-1][1]


def test_a_changed_number_changes_the_hash(monkeypatch) -> None:
    # the hash covers the final models: one ulp in one worker's model changes it
    monkeypatch.syspath_prepend(str(ROOT / "simulations"))
    import history_hashes

    import flower_qgadmm.reference as reference

    config = history_hashes.runs(5)[0]
    before = history_hashes.run_hash(config)
    real = reference.run_from_config

    def nudged(*args, **kwargs):
        result = real(*args, **kwargs)
        result.models[0, 0] = np.nextafter(result.models[0, 0], np.inf)
        return result

    monkeypatch.setattr(history_hashes, "run_from_config", nudged)
    assert history_hashes.run_hash(config) != before
