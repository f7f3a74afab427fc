"""Run the benchmark suite and write ``docs/benchmarks.md``.

Usage: ``python benchmarks/run.py [--quick] [--only bench_codec,...] [--no-scripts]
[--out docs/benchmarks.md]``

- every ``benchmarks/bench_*.py`` module exposing ``run(quick: bool) -> list[dict]`` is
  imported and run; each row is ``{"name", "measured", "target", "ok"}`` plus optional
  ``"unit"`` (default ``"x"``: a ratio to a baseline measured in the same run) and
  ``"note"``; ``target`` None (and ``ok`` None) for an informative row;
- the existing scripts ``simulations/bench_quantize.py``, ``bench_reference.py`` and
  ``bench_source_coder.py`` run as subprocesses, their output kept verbatim;
- the page lists the machine (CPU model, cores, Python / numpy / torch / flwr versions),
  the date and the commit, a summary of every row that has a target, then one section
  per module. Sections reserved for benchmarks still to come (:data:`SECTIONS`) say so
  until their module exists.

``--quick`` runs tiny sizes and few repeats (a smoke test, not figures to quote) and
writes ``results/benchmarks-quick.md`` unless ``--out`` says otherwise; ``--only`` (some
modules; an unknown name is refused) writes ``results/benchmarks-only.md``. The
exit status is 1 if a module or script failed (its section shows the error; the page is
written anyway), else 0. Missed targets do not fail the run: timings are noisy.

To add a benchmark: create ``benchmarks/bench_<name>.py`` with ``run(quick)``, optionally
``TITLE = "..."`` and ``NOTES = "..."`` (markdown shown under its table); reserved names
are in :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
QUICK_OUT = ROOT / "results" / "benchmarks-quick.md"  # a smoke run never replaces the page
ONLY_OUT = ROOT / "results" / "benchmarks-only.md"  # nor does a run of some modules

SECTIONS = {
    "bench_codec": ("Codec: quantize + pack, unpack + dequantize", "issue 'Scale and speed', 2"),
    "bench_reference_loop": (
        "Reference runner vs a plain numpy loop",
        "to come: add benchmarks/bench_reference_loop.py",
    ),
    "bench_flower_phase": (
        "Flower phase vs FedAvg round",
        "to come: add benchmarks/bench_flower_phase.py",
    ),
    "bench_supernodes": ("100 SuperNodes", "to come: add benchmarks/bench_supernodes.py"),
    "bench_deployment": (
        "Deployment iteration time",
        "to come: add benchmarks/bench_deployment.py",
    ),
}
"""Module stem -> (section title, what the section says while the module is missing).
Modules not listed here get a section of their own (their ``TITLE``), after these."""

SCRIPTS = (
    ("simulations/bench_quantize.py", [], ["--size", "20000", "--repeats", "3"]),
    ("simulations/bench_reference.py", [], ["--repeats", "1"]),
    ("simulations/bench_source_coder.py", [], ["--repeats", "1"]),
)
"""(script, arguments, arguments in --quick mode) of the existing benchmark scripts."""


def machine() -> dict[str, str]:
    """CPU model, cores, versions, date and commit of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "flwr": version("flwr"),
        "commit": commit or "unknown",
    }


def modules(folder: Path = HERE) -> list[Path]:
    """``bench_*.py`` of ``folder``, the reserved sections' order first, then by name."""
    found = sorted(Path(folder).glob("bench_*.py"))
    order = list(SECTIONS)
    return sorted(found, key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))


def run_module(path: Path, quick: bool) -> tuple[str, list[dict], str | None, float, str]:
    """(title, rows, error text or None, seconds, notes) of one benchmark module; the
    notes are the module's optional ``NOTES`` markdown, printed under its table."""
    title = SECTIONS.get(path.stem, (path.stem, ""))[0]
    notes = ""
    t0 = time.perf_counter()
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        title = getattr(module, "TITLE", title)
        notes = str(getattr(module, "NOTES", "")).strip()
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"{path.name} has no run(quick) function")
        rows = [dict(r) for r in module.run(quick)]
        for r in rows:
            missing = {"name", "measured", "target", "ok"} - set(r)
            if missing:
                raise ValueError(f"{path.name}: a row lacks {sorted(missing)}: {r}")
        return title, rows, None, time.perf_counter() - t0, notes
    except Exception:  # a failing benchmark must not hide the others
        return title, [], traceback.format_exc(limit=5), time.perf_counter() - t0, notes


def run_script(script: str, args: list[str]) -> tuple[str, int, float]:
    """(output, exit status, seconds) of one existing benchmark script."""
    t0 = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    out = proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.returncode else "")
    return out.rstrip(), proc.returncode, time.perf_counter() - t0


def fmt_value(value, unit: str = "x") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.2f}{unit}" if unit == "x" else f"{value:.4g} {unit}"
    return str(value)


def fmt_target(row: dict) -> str:
    target = row["target"]
    if target is None:
        return "-"
    if isinstance(target, (int, float)):
        return f"<= {fmt_value(target, row.get('unit', 'x'))}"
    return str(target)


def fmt_ok(ok) -> str:
    return {True: "ok", False: "**missed**", None: ""}.get(ok, str(ok))


def cell(text: object) -> str:
    """Text for a markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    lines = ["| benchmark | measured | target | | note |", "| --- | ---: | ---: | --- | --- |"]
    for r in rows:
        cells = (
            r["name"],
            fmt_value(r["measured"], r.get("unit", "x")),
            fmt_target(r),
            fmt_ok(r["ok"]),
            r.get("note", ""),
        )
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return lines


def render(
    info,
    results,
    scripts,
    quick: bool,
    skipped: dict[str, str] | None = None,
    command: str = "python benchmarks/run.py",
) -> str:
    lines = ["# Benchmarks", ""]
    lines += [
        f"Written by `{command}` (do not edit by hand: rerun it). A ratio `x` is a time "
        "divided by the time of its baseline measured in the same run, cases interleaved, "
        "medians over rounds: "
        "only such ratios compare across machines and loads. Missed targets are marked, "
        "they do not fail the run.",
        "",
    ]
    if quick:
        lines += [
            "> **Quick mode**: tiny sizes and few repeats, a smoke test of the suite; "
            "these figures are not the ones to quote.",
            "",
        ]
    lines += ["## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Targets", ""]
    targeted = [r for _, _, rows, _, _, _ in results for r in rows if r["target"] is not None]
    lines += table(targeted) if targeted else ["No benchmark with a target ran."]
    seen = set()
    for stem, title, rows, error, seconds, notes in results:
        seen.add(stem)
        lines += ["", f"## {title}", "", f"`{stem}.py`, {seconds:.1f} s.", ""]
        if error:
            lines += ["**Failed:**", "", "```", error.rstrip(), "```"]
        else:
            lines += table(rows)
        if notes:
            lines += ["", notes]
    for stem, title in (skipped or {}).items():
        seen.add(stem)
        lines += ["", f"## {title}", "", f"_Not run this time_ (`{stem}.py`: not in --only).", ""]
    for stem, (title, todo) in SECTIONS.items():
        if stem not in seen:
            lines += ["", f"## {title}", "", f"_Not measured yet_ ({todo}).", ""]
    lines += ["", "## Existing scripts", ""]
    for script, args, out, status, seconds in scripts:
        command = " ".join(["python", script, *args])
        state = "" if status == 0 else f", **exit status {status}**"
        lines += [f"### `{command}`", "", f"{seconds:.1f} s{state}.", "", "```", out, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown to write (default: {DEFAULT_OUT.relative_to(ROOT)}; with --quick "
        f"{QUICK_OUT.relative_to(ROOT)}, with --only {ONLY_OUT.relative_to(ROOT)})",
    )
    parser.add_argument("--no-scripts", action="store_true", help="skip simulations/bench_*")
    parser.add_argument(
        "--bench-dir", type=Path, default=HERE, help="where the bench_*.py modules are"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated module names (e.g. bench_codec) to run; the others' sections "
        "say they did not run",
    )
    args = parser.parse_args(argv)
    only = {name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()}
    if args.only and not only:
        parser.error(f"--only {args.only!r} names no module")
    unknown = sorted(only - {path.stem for path in modules(args.bench_dir)})
    if unknown:
        parser.error(f"--only: no module {', '.join(unknown)} in {args.bench_dir}")
    if args.out is None:  # a partial run never replaces the suite's page
        args.out = QUICK_OUT if args.quick else ONLY_OUT if only else DEFAULT_OUT
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    info = machine()
    results, failed, skipped = [], False, {}
    for path in modules(args.bench_dir):
        if only and path.stem not in only:
            skipped[path.stem] = SECTIONS.get(path.stem, (path.stem, ""))[0]
            continue
        print(f"running {path} ...", flush=True)
        title, rows, error, seconds, notes = run_module(path, args.quick)
        failed |= error is not None
        results.append((path.stem, title, rows, error, seconds, notes))
        for r in rows:
            print(
                f"  {r['name']}: {fmt_value(r['measured'], r.get('unit', 'x'))} "
                f"(target {fmt_target(r)}) {fmt_ok(r['ok'])}"
            )
        if error:
            print(error, file=sys.stderr)
    scripts = []
    for script, full, quick in () if args.no_scripts else SCRIPTS:
        script_args = quick if args.quick else full
        print(f"running {script} {' '.join(script_args)} ...", flush=True)
        out, status, seconds = run_script(script, script_args)
        failed |= status != 0
        scripts.append((script, script_args, out, status, seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.write_text(render(info, results, scripts, args.quick, skipped, command))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
