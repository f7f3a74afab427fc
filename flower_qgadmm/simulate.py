"""Command line of the reference runner: ``python -m flower_qgadmm.simulate``.

Takes the same settings as the Flower app's ``[tool.flwr.app.config]`` as options
(``--algorithm d-psgd --topology ring --rho 20 --adaptive-bits``), generated from the
settings classes (one description and default each), plus short aliases
(``--workers``, ``--iterations``, ``--csv``, ``--target``), and writes a JSON Lines
history and a plot.

Errors: the command never ends with a Python traceback. Every failure prints one line
``error: <message>`` on stderr (argparse's own errors, such as a value of the wrong
type, print the usage line before it) and exits with code 2 (a reader of the output
that leaves, ``| head -1``, stops the run quietly, exit code 1, as SIGPIPE would; the
history and plot so far are kept):

- bad settings or data, missing or unreadable files, a diverging run, a failed worker
  (``ValueError``, ``OSError``, ``PayloadError``, ``FloatingPointError``,
  ``WorkerFailure``): the message says what to change;
- a run that diverges is stopped early, when its objective grows 10^4-fold over its
  level in the first iterations (:class:`~flower_qgadmm.metrics.Watchdog`), with the
  likely causes (too few bits, a hand-set rho, unscaled data); the history and the plot
  so far are written. A run that stalls (no progress over 600 iterations) is not an
  error: a warning, and the summary line says so;
- any other exception is a bug: ``error: internal error: <type>: <message>`` and a hint
  to rerun with ``FLOWER_QGADMM_DEBUG=1``, which prints the traceback (of any error)
  before the ``error:`` line.

Settings, ``--log-every``, ``--tolerance``, the output paths (``--out``, ``--plot``:
not a folder, a writable place, a plot suffix matplotlib can write) and the checkpoint
``--resume`` names are checked before the data are loaded; missing parent folders of the
outputs are created just before the run. The history is written row by row as the run
goes (flushed each time), so a run that fails, is interrupted (Ctrl-C: ``error:
interrupted``, exit code 130) or killed keeps every completed iteration.

Checkpoints: every ``--checkpoint-every`` iterations (default 10; 0: never) the workers'
and the engine's states go to ``<out without .jsonl>-checkpoint/``
(:mod:`flower_qgadmm.checkpoint`); ``--resume <that folder>`` (or the run folder holding
it) continues the run from its latest checkpoint with the settings it records (options
given must match them, but more ``--iterations`` and the settings the run does not read;
a checkpoint of an earlier version records none: a warning, and the options given and
the defaults are the run's settings), writing the run's own history (``<out>`` beside
its checkpoint folder) unless ``--out`` says otherwise (the whole history then goes
there, the checkpoints stay in the folder resumed from): the history and final models
equal those of an uninterrupted run. A run folder holding several checkpoint folders is refused,
naming them. A resume that fails (no checkpoint there, other settings) leaves the
history file as it was. A new run over an interrupted run's ``--out``, or a resume
into it from another run's checkpoint, is refused; over a finished run's ``--out``
either deletes that run's checkpoints with its history, once its own set-up (or
resume) succeeded. A run (or resume) whose history or checkpoint folder another run is
writing is refused at once, naming that run's process, before anything is written
(:class:`RunLocks`: advisory locks, none on Windows).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from . import checkpoint
from .algorithms import REGISTRY
from .compression import PayloadError
from .config import BASELINES, FedAvgSettings, RunConfig, setting_fields
from .history import (
    format_summary,
    json_line,
    new_run_dir,
    plot_histories,
    progress_line,
    write_history,
)
from .reference import least_squares_solvers, make_engine
from .rounds import WorkerFailure
from .settings import closest

try:  # advisory locks on a run's files (Linux, macOS); Windows runs without them
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

ALIASES = {
    "num_workers": "--workers",
    "num_iterations": "--iterations",
    "data_csv": "--csv",
    "data_target": "--target",
    "data_features": "--features",
    "data_drop": "--drop",
}
FLOWER_ONLY = {"results_dir", "discovery_timeout", "phase_timeout", "on_failure", "inject_failure"}
#: the FedAvg baseline's settings (it runs on Flower only)
FEDAVG_ONLY = {f.name for cls, f in setting_fields() if cls is FedAvgSettings}
DEBUG_ENV = "FLOWER_QGADMM_DEBUG"
CLI_TASKS = ("linreg", "digits", "mnist", "cifar10")
#: Errors of the input or of the run itself: reported by their message alone.
USER_ERRORS = (ValueError, OSError, PayloadError, FloatingPointError, WorkerFailure)


def _fields():
    return [
        (cls, f)
        for cls, f in setting_fields()
        if f.name not in FLOWER_ONLY and cls is not FedAvgSettings
    ]


def output_path(text: str) -> Path:
    """``--out`` / ``--plot``: a file name (``Path`` drops a trailing slash, which would
    turn ``results/run1/`` into a file ``run1``); ``~`` is the home folder (no shell
    expands it in ``--out=~/h.jsonl``)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text} names a folder: give a file name")
    return Path(text).expanduser()


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: ``error: <message>`` (a misspelt option
    with a hint: ``did you mean --rho?``), then exit code 2; ``--help`` lists the options."""

    def error(self, message: str) -> NoReturn:
        hints = []
        if message.startswith("unrecognized arguments:"):
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            for word in message.split(":", 1)[1].split():
                if not word.startswith("--"):
                    continue
                word = word.split("=", 1)[0]  # --rhoo=3
                if word[2:].replace("-", "_") in FLOWER_ONLY | FEDAVG_ONLY:
                    hints.append(f"{word} is a setting of Flower runs only (flwr run)")
                elif (near := closest(word, known)) is not None:
                    hints.append(f"did you mean {near} for {word}?")
        hint = f" ({'; '.join(hints)})" if hints else f" (see {self.prog} --help)"
        self.exit(2, f"error: {message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """Options generated from the settings classes, so defaults live in one place."""
    parser = _Parser(
        prog="python -m flower_qgadmm.simulate",
        description="Run a decentralized algorithm with all workers in one process (no Flower).",
    )
    groups: dict[type, argparse._ArgumentGroup] = {}
    for cls, f in _fields():
        title = cls.__doc__.splitlines()[0].rstrip(".")  # argparse adds a colon
        group = groups.setdefault(cls, parser.add_argument_group(title))
        names = ["--" + f.name.replace("_", "-")]
        if f.name in ALIASES:
            names.insert(0, ALIASES[f.name])
        text = f.metadata.get("help", "")
        if "(default:" not in text:  # a help that names its default says it once
            shown = '""' if f.default == "" else f.default
            text += f" (default: {shown})"
        if f.name == "algorithm":  # the baselines run on Flower only
            text = f"one of {', '.join(sorted(REGISTRY))} (default: {f.default})"
        if f.name == "task":  # 'custom' is a user's own ClientApp: Flower only
            text = f"one of {', '.join(CLI_TASKS)} (default: {f.default})"
        if f.type in (bool, "bool"):
            group.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(*names, dest=f.name, type=kind, default=None, help=text)
    parser.add_argument(
        "--out",
        type=output_path,
        default=None,
        help="history file (JSON Lines) (default: results/<time>-reference-<algorithm>/"
        "history.jsonl)",
    )
    parser.add_argument(
        "--plot", type=output_path, default=None, help="PNG (default: beside --out)"
    )
    parser.add_argument(
        "--log-every", type=int, default=25, help="progress line every N (default: 25)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        help="the gap the summary line reports reaching (default: 1e-06)",
    )
    return parser


def build_solvers(cfg: RunConfig):
    """(solvers, evaluate) of the task: exact least squares, or torch on an image task."""
    if cfg.task == "linreg":
        from .data import experiment_datasets

        return least_squares_solvers(experiment_datasets(cfg), cfg.l2), None
    from .image_task import image_solver, load_task_data, mean_model_evaluator

    data = load_task_data(cfg)
    solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
    return solvers, mean_model_evaluator(cfg, data)


def lock_path(checkpoints: Path) -> Path:
    """The lock file of the run whose checkpoint folder is ``checkpoints``: the hidden
    ``.<folder name>.lock`` beside it (``.h-checkpoint.lock`` for ``--out h.jsonl``; an
    ``h.json`` beside it shares the checkpoint folder, and so the lock)."""
    return checkpoints.parent / f".{checkpoints.name}.lock"


class RunLocks:
    """Advisory locks (``fcntl.flock``) that keep two runs of this CLI off one run's
    files (its history and its checkpoint folder): the second is refused before it
    writes anything. The OS releases a lock when its process ends, killed too;
    :meth:`release` also deletes the lock files (one a killed run left blocks nobody).
    Without ``fcntl`` (Windows), or on a file system that refuses locks, runs are not
    locked."""

    def __init__(self) -> None:
        self.held: dict[Path, int] = {}  # lock file -> its open descriptor

    def take(self, checkpoints: Path, names: str, fix: str) -> None:
        """Lock the run whose checkpoint folder is ``checkpoints`` (if the folder it goes
        in exists: a run whose folder is not made yet is locked once it is); held by
        another run, refuse with a ``ValueError`` naming ``names``, that run's process
        and ``fix``."""
        path = lock_path(checkpoints.resolve())
        if fcntl is None or path in self.held or not path.parent.is_dir():
            return
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # a folder not writable: the run's own writes will say so
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _pid_in(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "process unknown"
                raise ValueError(
                    f"another run ({who}, lock {path}) is writing {names}: {fix}"
                ) from None
            except OSError:  # no locks on this file system
                os.close(fd)
                return
            try:  # the file locked is still the one named (not deleted by its releaser)
                now = os.stat(path)
                locked = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # released and deleted meanwhile: lock the new one
        self.held[path] = fd
        os.ftruncate(fd, 0)  # the pid a refused run names
        os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Delete the lock files (while still locked: a run that opened one meanwhile
        finds it gone once it holds it, and locks a new one) and release them."""
        for path, fd in self.held.items():
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self.held.clear()


def _pid_in(fd: int) -> int | None:
    """The process id a lock file holds (None while its run has not written it yet)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


@dataclass
class _Run:
    """What a failed run still needs: the history file and the rows so far."""

    out: Path | None = None
    png: Path | None = None
    label: str = ""
    rows: list[dict] = field(default_factory=list)
    saved: bool = False  # the complete history is written
    locks: RunLocks = field(default_factory=RunLocks)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0, 2 on any error, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = _Run()
    try:
        return _report(args, run)
    finally:  # after the history so far is written
        run.locks.release()


def _report(args: argparse.Namespace, run: _Run) -> int:
    """:func:`_run`, its errors reported as one line (the exit code returned)."""
    try:
        return _run(args, run)
    except BrokenPipeError:  # the reader of stdout left (| head -1): stop, as SIGPIPE
        return _reader_gone(run)  # would, quietly, keeping the history so far
    except KeyboardInterrupt as exc:
        error, message, code = exc, "interrupted", 130
    except USER_ERRORS as exc:
        error, message, code = exc, str(exc) or type(exc).__name__, 2
    except MemoryError as exc:  # the input's size (a typo in dim, ...), not a bug
        error, code = exc, 2
        message = (
            f"out of memory: {exc or 'an allocation failed'}; the data or the model is too "
            "large for this machine: lower dim, samples-per-worker or num-workers"
        )
    except Exception as exc:  # a bug: say so, and how to see the traceback
        error, code = exc, 2
        message = (
            f"internal error: {type(exc).__name__}: {exc} "
            f"(please report it; rerun with {DEBUG_ENV}=1 for the traceback)"
        )
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(error)
    print("error: " + " ".join(message.splitlines()), file=sys.stderr)
    if run.saved:
        print(f"history (complete): {run.out}", file=sys.stderr)
    elif run.rows and run.out is not None:
        try:
            write_history(run.out, run.rows)
            print(f"history so far ({len(run.rows)} rows): {run.out}", file=sys.stderr)
        except OSError as exc:
            print(f"could not write the history so far: {exc}", file=sys.stderr)
    if run.rows and run.png is not None:  # the plot of what was run, for a look at why
        try:
            png = plot_histories({run.label: run.rows}, run.png)
            print(f"plot so far: {png}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - the error above is what matters
            print(f"could not plot the history so far: {exc}", file=sys.stderr)
    return code


def _reader_gone(run: _Run) -> int:
    """The run stopped because its standard output's reader left (``| head -1``): no
    error line (the Python docs' "Note on SIGPIPE": stdout goes to devnull, so that
    Python's own flush at exit does not fail too), the history and plot so far written
    as for any stopped run, exit code 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (tests capture it)
        pass
    if run.rows and run.out is not None and not run.saved:
        try:
            write_history(run.out, run.rows)
            plot_histories({run.label: run.rows}, run.png)
        except Exception:  # noqa: BLE001 - the rows were written as they came already
            pass
    return 1


def _run(args: argparse.Namespace, run: _Run) -> int:
    if args.log_every < 1:
        raise ValueError(f"log-every must be an integer >= 1, got {args.log_every}")
    if not (args.tolerance > 0 and math.isfinite(args.tolerance)):
        raise ValueError(f"tolerance must be a finite number > 0, got {args.tolerance}")
    given = {f.name: getattr(args, f.name) for _, f in _fields()}
    given = {k: v for k, v in given.items() if v is not None}
    check_task(given.get("task"))
    # the checkpoint resumed, found before the data are loaded (a mistyped folder fails
    # at once), and the config record it keeps of its run: the settings not given here
    resumed = resume_folder(given["resume"]) if given.get("resume") else None
    record = recorded_config(resumed) if resumed is not None else None
    if resumed is not None and record is None:
        logging.getLogger(__name__).warning(
            "warning: the checkpoint in %s does not record its run's settings (written by an "
            "earlier version of flower-qgadmm): give them as the interrupted run had them "
            "(--algorithm, --workers, ...); the options left out take their defaults",
            resumed,
        )
    if record is not None:  # the checkpoint's run, with the options given here over it
        cfg = RunConfig.continuing(record, given)
        check_task(cfg.task, f" (the run in {resumed})")
    else:
        cfg = RunConfig.from_run_config(given)
    if cfg.algorithm in BASELINES:
        raise ValueError(f"{cfg.algorithm} runs on Flower only (flwr run .)")
    for line in cfg.unread_given():  # e.g. --lr for d-psgd: its step is --step-size
        logging.getLogger(__name__).warning("warning: options %s", line)
    check_outputs(args.out, args.plot)
    out = args.out
    if out is None and resumed is not None:  # a resume continues its run's own history
        out = history_of(resumed)
        if out is not None:
            check_outputs(out, args.plot)
    # another run writing this run's files refuses it before anything is written (files
    # in folders not made yet are locked once the folders are, below)
    lock_run(run.locks, out, resumed)
    # an --out of another run than the one resumed (or of a new run): refused if it holds
    # an interrupted run, whose history this run would overwrite
    foreign = args.out is not None and not same_path(checkpoints_of(args.out), resumed)
    if foreign:
        check_fresh(checkpoints_of(args.out), args.out, resumed)
    solvers, evaluate = build_solvers(cfg)
    out = out or new_run_dir("results", f"reference-{cfg.algorithm}") / "history.jsonl"
    png = args.plot or out.with_suffix(".png")
    for path in (out, png):
        path.parent.mkdir(parents=True, exist_ok=True)
    lock_run(run.locks, out, resumed)
    run.out, run.png, run.label = out, png, cfg.algorithm

    checkpoints = resumed if resumed is not None else checkpoints_of(out)
    files = []  # the history file, opened once the run could start or resume: a resume
    # that fails (wrong folder, other settings) leaves an existing history as it was

    def progress(row: dict) -> None:
        (history,) = files
        history.write(json_line(row))
        history.flush()
        k = row["iteration"]
        if k == 1 or k % args.log_every == 0 or k == cfg.num_iterations:
            line = progress_line(row, engine.history[0] if engine.history else row)
            print(f"[iteration {k}/{cfg.num_iterations}] {line}", flush=True)

    engine = make_engine(
        cfg.algorithm,
        solvers,
        cfg.graph,
        cfg.algo,
        cfg.seed,
        cfg.mixing_weights(),
        on_row=progress,
        evaluate=evaluate,
        removals=cfg.removals(),
        evaluate_every=cfg.evaluate_every,
        checkpoint_dir=str(checkpoints) if cfg.checkpoint_every else None,
        checkpoint_every=cfg.checkpoint_every,
        run_settings=cfg.run_settings(),
        unread=cfg.unread(),
        run_config=cfg.record(),
    )
    if record is not None:  # the settings not given came from the checkpoint: the
        # options given that differ from its run's are what stops the resume
        engine.resume_advice = (
            "leave those options out to continue that run: --resume alone takes its "
            "settings from the checkpoint"
        )
    try:
        done = engine.resume(checkpoints, cfg.num_iterations) if cfg.resume else 0
        if not cfg.resume:
            engine.start()
        if foreign:
            # a run over a finished one's --out (check_fresh): that run's checkpoints go
            # with its history, or a resume would continue it under this history and its
            # latest one would later look like this run's interruption (a resume into
            # another --out keeps its checkpoints in the folder it resumed from)
            checkpoint.clear(checkpoints_of(out))
        # this run is not finished (yet): an interruption must not look like the last
        # run's completion (check_fresh); a resume or set-up that failed left both
        (checkpoints / FINISHED).unlink(missing_ok=True)
        files.append(out.open("w", buffering=1))
        # the rows a failure writes: only once the resume succeeded (a failed one leaves
        # the history file as it was)
        run.rows = engine.history
        for row in engine.history:  # those of the checkpoint when resumed
            files[0].write(json_line(row))
        if cfg.resume:
            print(f"resumed after iteration {done} from {checkpoints}", flush=True)
        for k in range(done + 1, cfg.num_iterations + 1):
            engine.run_round(k, final=k == cfg.num_iterations)
        engine.finish()
        if cfg.checkpoint_every or cfg.resume:  # this run completed (a resume without
            # checkpoints of its own leaves those it started from): it may be run over
            checkpoints.mkdir(parents=True, exist_ok=True)
            (checkpoints / FINISHED).write_text(json.dumps({"iteration": cfg.num_iterations}))
    except FloatingPointError:
        # the run diverged: it ended (a resume would only diverge again), so its folder
        # may be run over, with the settings the error advises, as a finished one may
        mark_diverged(checkpoints)
        raise
    finally:
        for history in files:
            history.close()
    run.saved = True
    png = plot_histories({cfg.algorithm: engine.history}, png)
    print(format_summary(cfg.algorithm, engine.history, args.tolerance))
    for d in engine.departures:
        when = f"iteration {d['iteration']}" if d["iteration"] else "set-up"
        print(f"worker {d['worker']} left in {when}: {d['reason']}")
    print(f"history: {out}\nplot: {png}")
    return 0


def lock_run(locks: RunLocks, out: Path | None, resumed: Path | None) -> None:
    """Lock the files this run writes: the checkpoint folder ``resumed`` from (which a
    resume writes, into another ``--out`` too), and ``out`` with its checkpoint folder."""
    if resumed is not None:
        locks.take(
            resumed,
            f"the checkpoint folder {resumed}",
            "wait until it ends (or stop it) before resuming from it",
        )
    if out is not None:
        folder = checkpoints_of(out)
        locks.take(
            folder,
            f"{out} and {folder}",
            "wait until it ends (or stop it), or give another --out",
        )


def check_task(task: str | None, whose: str = "") -> None:
    """Refuse a task this CLI does not run (``custom`` is a user's ClientApp: Flower)."""
    if task is not None and task not in CLI_TASKS:
        why = "runs your own ClientApp, on Flower only (flwr run)" if task == "custom" else ""
        near = closest(str(task), CLI_TASKS) if not whose else None
        raise ValueError(
            f"task {task!r}{whose} {why or 'is unknown'}; this CLI runs {', '.join(CLI_TASKS)}"
            + (f" (did you mean {near!r}?)" if near else "")
        )


def recorded_config(checkpoints: Path) -> dict | None:
    """The config record (:meth:`RunConfig.record`) the latest checkpoint in
    ``checkpoints`` keeps of its run, or None for a checkpoint that keeps none (written
    by an earlier version)."""
    state = checkpoint.relay_state(checkpoints, checkpoint.latest(checkpoints))
    record = state.get("run-config")
    return dict(record) if isinstance(record, dict) else None


def checkpoints_of(out: Path) -> Path:
    """The checkpoint folder of the run whose history is ``out``: ``<out stem>-checkpoint``."""
    return out.with_name(out.stem + "-checkpoint")


def history_of(checkpoints: Path) -> Path | None:
    """The history file of the run a checkpoint folder belongs to (the inverse of
    :func:`checkpoints_of`; ``history.jsonl`` beside a Flower run's ``checkpoint``), or
    None for a folder of another name."""
    if checkpoints.name.endswith("-checkpoint"):
        # <stem>-checkpoint belongs to <stem>.<any suffix> (--out h.json: h-checkpoint)
        stem = checkpoints.name[: -len("-checkpoint")]
        histories = [
            p
            for p in checkpoints.parent.glob(glob.escape(stem) + ".*")
            if p.is_file() and p.stem == stem and not is_image(p)
        ]
        return histories[0] if len(histories) == 1 else checkpoints.with_name(stem + ".jsonl")
    if checkpoints.name == "checkpoint":
        return checkpoints.parent / "history.jsonl"
    return None


def resume_folder(given: str) -> Path:
    """The checkpoint folder of ``--resume``: the folder itself, the one
    ``<history>-checkpoint`` folder (or Flower's ``checkpoint``) inside a run folder, or
    that of a history file (:func:`checkpoints_of`; Flower's ``checkpoint`` beside
    its ``history.jsonl``)."""
    folder = Path(given).expanduser()  # --resume=~/run: no shell expands that ~
    if folder.is_file() and folder.name == "latest.json":  # a checkpoint folder's index
        return folder.parent
    if folder.is_file():
        flower = folder.with_name("checkpoint")
        ours = checkpoints_of(folder)
        return flower if (flower / "latest.json").exists() and not ours.exists() else ours
    if not folder.exists():
        near = closest(folder.name, [p.name for p in _entries(folder.parent)])
        hint = f" (did you mean {folder.with_name(near)}?)" if near else ""
        raise FileNotFoundError(
            f"no checkpoint in {given}: no such folder or file{hint}; --resume takes the "
            "checkpoint folder of the run to continue, its run folder or its history file"
        )
    if (folder / "latest.json").exists() or not folder.is_dir():
        return folder  # a missing checkpoint is reported by the engine, naming the folder
    inside = sorted(p.parent for p in folder.glob("*checkpoint/latest.json"))
    if len(inside) > 1:
        raise ValueError(
            f"--resume {given}: the folder holds the checkpoints of {len(inside)} runs, "
            f"{', '.join(str(p) for p in inside)}: pass the one to continue "
            f"(--resume {inside[0]}, ...)"
        )
    return inside[0] if inside else folder


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds (nothing if it cannot be listed)."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def same_path(a: Path, b: Path | None) -> bool:
    """``a`` and ``b`` name the same place (``h-checkpoint``, ``./h-checkpoint``)."""
    return b is not None and a.resolve() == b.resolve()


FINISHED = "finished.json"
"""Written into a run's checkpoint folder when the run completed: a folder without it (or
with an older one than its latest checkpoint) belongs to an interrupted run."""


def mark_diverged(checkpoints: Path) -> None:
    """Mark the latest checkpoint of a run that diverged as :data:`FINISHED` (the run
    ended; :func:`check_fresh` lets a new run take its ``--out``)."""
    from .checkpoint import latest

    try:
        saved = latest(checkpoints)
        (checkpoints / FINISHED).write_text(json.dumps({"iteration": saved, "diverged": True}))
    except (OSError, ValueError):  # no checkpoint: nothing to mark
        pass


def check_fresh(checkpoints: Path, out: Path, resumed: Path | None = None) -> None:
    """Refuse a new run (or one ``resumed`` from another run's checkpoint folder) over an
    interrupted one (its checkpoint folder beside ``--out`` has no :data:`FINISHED` mark
    for its latest checkpoint): it would overwrite that run's history and bury its
    checkpoint under the new run's. A finished run (or one that diverged,
    :func:`mark_diverged`) may be run over."""
    from .checkpoint import latest

    instead = "to start over" if resumed is None else f"for the run resumed from {resumed}"

    try:
        saved = latest(checkpoints)
    except FileNotFoundError:  # no checkpoint: nothing to keep
        return
    except (OSError, ValueError) as exc:  # it may name an interrupted run's checkpoint:
        # starting over would delete that run's files (checkpoint.clear) with its history
        raise ValueError(
            f"--out {out}: its checkpoint folder {checkpoints} may hold an interrupted run, "
            f"but its latest.json cannot be read ({exc}); repair it and pass --resume "
            f"{checkpoints} to continue that run, or delete the folder (or give another "
            f"--out) {instead}"
        ) from exc
    try:
        finished = int(json.loads((checkpoints / FINISHED).read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        finished = -1
    if finished < saved:
        raise ValueError(
            f"--out {out} holds an interrupted run (its checkpoint in {checkpoints} at "
            f"iteration {saved}): pass --resume {checkpoints} to continue it, or another "
            f"--out (or delete both) {instead}"
        )


def check_outputs(out: Path | None, plot: Path | None) -> None:
    """Check ``--out`` and ``--plot`` (or the plot beside ``--out``) before the run."""
    if out is not None:
        check_output(out, "--out")
        folder = checkpoints_of(out)
        if folder.exists() and not folder.is_dir():
            raise ValueError(
                f"--out {out}: its checkpoint folder {folder} is a file: move it, or give "
                "another --out"
            )
    if plot is not None:
        check_output(plot, "--plot")
        check_plot_suffix(plot)
    elif out is not None:
        plot = out.with_suffix(".png")
        check_output(plot, "the plot beside --out")
    if out is not None and plot.resolve() == out.resolve():
        raise ValueError(f"--plot and --out name the same file {out}: give the plot its own")


def check_output(path: Path, what: str) -> None:
    """Refuse an output path that cannot be written: a folder, a read-only file, or a
    place under a file or a read-only folder (missing folders are created later)."""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: folder {parent} is not writable")


def is_image(path: Path) -> bool:
    """``path`` names a format matplotlib writes (a plot, not a history)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return path.suffix.lower().lstrip(".") in FigureCanvasBase.get_supported_filetypes()


def check_plot_suffix(path: Path) -> None:
    """The plot's suffix must name a format matplotlib writes (else it appends .png or
    fails after the run)."""
    from matplotlib.backend_bases import FigureCanvasBase

    if not is_image(path):
        kinds = FigureCanvasBase.get_supported_filetypes()
        raise ValueError(
            f"--plot {path}: the suffix must be an image format, one of "
            f"{', '.join('.' + k for k in sorted(kinds))}"
        )


if __name__ == "__main__":
    sys.exit(main())
