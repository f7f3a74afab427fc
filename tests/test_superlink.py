"""The local SuperLink tool's ``stop``, without a SuperLink: its process finding and
killing are replaced in a child process (the real ones run in test_flwr_run.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# three SuperLinks whose trees the fake stop_tree "stops"; the first waits until the
# reader of the report has gone away, so every later line meets a closed pipe
CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from flower_qgadmm import superlink as s
from flower_qgadmm.superlink import Proc, SuperLink
links = [SuperLink(Proc(100 + i, 1, 0, "S", ("flower-superlink",)), "/h") for i in range(3)]
s.find_superlinks = lambda home: links
def fake(link, timeout):
    if link is links[0]:
        while not os.path.exists({gone!r}):
            time.sleep(0.01)
    sys.stderr.write(f"stopped {{link.proc.pid}}\\n")
    sys.stderr.flush()
    return [(link.proc, "SIGTERM")] * 20, []
s.stop_tree = fake
sys.exit(s.stop(s.Path("/h"), 1.0))
"""


def test_stop_goes_on_when_the_reader_of_its_report_goes_away(tmp_path) -> None:
    # Prepare: `python -m flower_qgadmm.superlink stop | head -1`
    gone = tmp_path / "gone"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), gone=str(gone))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Execute: read the first line, close the pipe, let the child go on
    first = child.stdout.readline()
    child.stdout.close()
    gone.touch()
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = child.stderr.read()
    # Assert: every SuperLink was stopped, and the exit code is stop's
    assert first.startswith("stopping local SuperLink pid 100")
    assert errors.split() == ["stopped", "100", "stopped", "101", "stopped", "102"], errors
    assert child.returncode == 0
