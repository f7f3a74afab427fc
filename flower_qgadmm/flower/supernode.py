"""The node side of the deployment kit: Flower's SuperNode with short waits, and the warm
ClientApp executor (see :mod:`flower_qgadmm.deploy`, which launches them as
``python -m flower_qgadmm.deploy supernode`` / ``executor``).

Both reach into Flower's SuperNode and ClientApp runtime (flwr 1.42), which is why they
live in the Flower binding: :class:`_NodeWaits` stands in for the ``time`` module of
Flower's SuperNode loop, guarded so that Flower's own waits stay when its loop is not the
expected one; :func:`run_executor` imports the app's dependencies once and forks one
child per ClientApp task.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent  # the environment's Flower executables

NODE_POLL = 0.2  # seconds: longest idle wait of a SuperNode between pulls (Flower's: 3)
EXECUTOR_POLL = 0.05  # seconds: longest wait of the warm executor between task polls
FIRST_POLL, POLL_GROWTH = 0.01, 1.5  # waits start at 10 ms and grow by x1.5 while idle
IDLE_AFTER, IDLE_POLL = 10.0, 1.0  # after 10 s without a message, waits may grow to 1 s
REPLY_POLL = 0.01  # seconds between a SuperNode's checks for its ClientApp's reply
PULL_BACKOFF = (0.01, 1.0)  # first and longest retry wait: a SuperNode pulling from the SuperLink
TASK_BACKOFF = (0.01, 0.05)  # the same for a ClientApp child pulling its input from its node
PULL_PATIENCE = 493.0  # seconds a missing object is retried (500 tries of PULL_BACKOFF)
PRELOAD = (  # what the warm executor imports once (the app packages are forgotten again)
    "flwr.supernode.runtime.run_clientapp",
    "flwr.serverapp.strategy",
    "flower_qgadmm.flower",
    "flower_qgadmm.image_task",
    "sklearn.datasets",
    "torch._dynamo",  # imported by the first torch.optim optimizer of a process (~1-2 s)
    "datasets",  # flwr-datasets partitioners (pyarrow, pandas, fsspec, ...: ~1-2 s)
    "flwr_datasets.partitioner",
)
APP_PACKAGES = ("flower_qgadmm", "clients")  # imported from the FAB by each ClientApp
CLIENTAPP_ENV = {  # set in the warm executor (unless already set) before torch is imported
    # torch's OpenMP threads wait for work passively: with spinning ones (the default) a
    # forked ClientApp's first steps took 0.5-0.8 s instead of ~10 ms on a loaded machine
    # (2 cores, 4 SuperNodes, other jobs). Same threads, same work split: same numbers.
    "OMP_WAIT_POLICY": "PASSIVE",
}


# ---------------------------------------------------------------- the node side
class Backoff:
    """The waits of an idle poller (a SuperNode asking the SuperLink for messages, the
    warm executor asking its SuperNode for tasks): from ``FIRST_POLL``, x ``POLL_GROWTH``
    per empty poll, up to ``poll`` while work came less than ``IDLE_AFTER`` seconds ago
    (a run in progress: the next message is seconds away), then up to ``IDLE_POLL``
    (``poll`` if larger): an idle deployment polls once a second instead of 5-20 times
    (measured on loopback, 4 SuperNodes: about 0.7 of a core in all, see the deployment
    notes in docs/benchmarks-flower.md), and only the first message after such a pause
    waits up to ``IDLE_POLL`` longer. :meth:`reset` when work came."""

    def __init__(self, poll: float, clock=time.monotonic) -> None:
        self.poll = poll
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.wait = FIRST_POLL
        self.since = self.clock()

    def next(self) -> float:
        """The wait before the next poll (after an empty one)."""
        idle = self.clock() - self.since >= IDLE_AFTER
        cap = max(self.poll, IDLE_POLL) if idle else self.poll
        wait = min(self.wait, cap)
        self.wait = min(cap, self.wait * POLL_GROWTH)
        return wait


class _NodeWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop
    (``flwr/supernode/start_client_internal.py``): its idle ``time.sleep(3)`` (no message
    on the SuperLink) becomes a :class:`Backoff` wait (``poll`` during a run); its
    ``time.sleep(0.5)`` (the ClientApp's reply not there yet) becomes ``REPLY_POLL``.
    Everything else is the real :mod:`time`. :func:`shorten_supernode_waits` also resets
    the backoff whenever the loop serves a message."""

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self.backoff = Backoff(poll)

    def sleep(self, seconds: float) -> None:
        if seconds >= 3:  # idle: nothing to pull
            time.sleep(self.backoff.next())
        else:  # a message is being served: check for the reply often, then pull soon
            self.backoff.reset()
            time.sleep(min(seconds, REPLY_POLL))

    def __getattr__(self, name: str):
        return getattr(time, name)


def pull_tries(backoff: tuple[float, float], patience: float) -> int:
    """How many tries Flower's ``pull_objects`` (``max_tries_per_object``) makes in about
    ``patience`` seconds with the retry waits of ``backoff`` (first, longest; doubling):
    a shorter backoff tries more often, not for less time."""
    first, cap = backoff
    waited, tries, wait = 0.0, 1, first
    while waited < patience:
        waited += wait
        tries += 1
        wait = min(cap, wait * 2)
    return tries


def _short_backoff(
    module, name: str, backoff: tuple[float, float] = PULL_BACKOFF, patience: float = PULL_PATIENCE
) -> bool:
    """Give ``module.name`` (Flower's ``pull_objects`` or
    ``pull_and_inflate_object_from_tree``) the retry waits ``backoff`` (first, longest)
    instead of its 1 s doubling to 10 s (``flwr/supercore/constant.py``), and as many
    tries as fill ``patience`` seconds (:func:`pull_tries`; Flower: 500 tries). A node
    that pulls as soon as a message exists often asks for its objects before the sender
    has pushed them all; Flower's own 3 s and 1 s polls hide that, our short ones would
    then wait 1-3 s."""
    fn = getattr(module, name, None)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if not {"initial_backoff", "backoff_cap", "max_tries_per_object"} <= set(params):
        return False
    first, cap = backoff
    tries = pull_tries(backoff, patience)
    setattr(
        module,
        name,
        functools.partial(fn, initial_backoff=first, backoff_cap=cap, max_tries_per_object=tries),
    )
    return True


def shorten_supernode_waits(poll: float) -> bool:
    """Make Flower's SuperNode loop wait at most ``poll`` seconds when idle (see
    :class:`_NodeWaits`) and retry a missing object after 10 ms (:func:`_short_backoff`);
    False (and nothing changed) if this Flower's loop is not the one this was written for
    (flwr 1.42: ``time.sleep(3)`` in ``start_client_internal``, ``time.sleep(0.5)`` in
    ``_push_messages``, ``pull_objects`` with a backoff)."""
    from flwr.supernode import start_client_internal as loop

    try:
        main = inspect.getsource(loop.start_client_internal)
        push = inspect.getsource(loop._push_messages)
        pull = inspect.signature(loop.pull_objects).parameters
    except (AttributeError, OSError, TypeError, ValueError):
        return False
    if getattr(loop, "time", None) is not time or "initial_backoff" not in pull:
        return False
    if "time.sleep(3)" not in main or "time.sleep(0.5)" not in push:
        return False
    waits = _NodeWaits(poll)
    serve = loop._push_messages

    @functools.wraps(serve)
    def push_messages(*args, **kwargs):  # a message was pulled: its reply is pushed now
        waits.backoff.reset()
        return serve(*args, **kwargs)

    loop.time = waits
    loop._push_messages = push_messages
    return _short_backoff(loop, "pull_objects")


def _option(args: Sequence[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def run_supernode(args: Sequence[str], poll: float = NODE_POLL, warm: bool = False) -> None:
    """Flower's ``flower-supernode`` with ``args``, in this process, with shorter waits
    (``poll`` > 0, :func:`shorten_supernode_waits`) and/or a warm executor (``warm``:
    adds ``--isolation process`` if absent and starts :func:`run_executor` for this
    SuperNode's runtime API as a child, which exits with it)."""
    args = list(args)
    if poll > 0:  # Flower's own knob for its SuperExec (subprocess isolation; default 1 s)
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", f"{EXECUTOR_POLL:g}")
    if poll > 0 and not shorten_supernode_waits(poll):
        print(
            "flower_qgadmm.deploy: this Flower's SuperNode loop is not the expected one; "
            "keeping its own waits",
            file=sys.stderr,
            flush=True,
        )
    if warm:
        if "--isolation" not in args:
            args += ["--isolation", "process"]
        host = _option(args, "--host", "127.0.0.1")
        address = f"{host}:{_option(args, '--port', '9094')}"
        subprocess.Popen(  # same group as this SuperNode: stopped with it
            [sys.executable, "-m", "flower_qgadmm.deploy", "executor"]
            + ["--runtime-api-address", address, "--watch-pid", str(os.getpid())]
        )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = [str(BIN / "flower-supernode"), *args]
    flower_supernode()


def _forget(packages: Sequence[str]) -> None:
    """Drop ``packages`` (and their submodules) from ``sys.modules``: imported again,
    from wherever ``sys.path`` then points (a ClientApp: its FAB first)."""
    for name in list(sys.modules):
        if name.split(".", 1)[0] in packages:
            del sys.modules[name]


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _serve_task(address: str, token: str, parent: int) -> int:
    """In a forked child: Flower's ``run_clientapp`` for one task; its exit code."""
    code = 1
    try:
        from flwr.supernode.runtime import run_clientapp as task

        # forked as soon as the task exists, maybe before the SuperNode holds the message:
        # its objects are retried every TASK_BACKOFF[1] at most (a cheap local RPC)
        _short_backoff(task, "pull_and_inflate_object_from_tree", TASK_BACKOFF)
        task.run_clientapp(
            runtime_api_address=address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=parent,
        )
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task with sys.exit
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # report, then leave the child
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def clientapp_env(environ=os.environ) -> list[str]:
    """Set :data:`CLIENTAPP_ENV` in ``environ`` where not set already; the names set.
    Only effective before the OpenMP runtime is loaded (with torch)."""
    chosen = [name for name in CLIENTAPP_ENV if name not in environ]
    for name in chosen:
        environ[name] = CLIENTAPP_ENV[name]
    return chosen


def run_executor(
    address: str,
    watch: int | None = None,
    poll: float = EXECUTOR_POLL,
    preload: Sequence[str] = PRELOAD,
) -> int:
    """The warm executor of one SuperNode started with ``--isolation process``: what
    Flower's SuperExec does for ClientApps (poll the SuperNode's runtime API at
    ``address`` for a task, run ``flwr-clientapp --token`` for it), but the process that
    runs a task is a fork of this one, which imported ``preload`` (and so flwr, numpy,
    scipy, torch, ...) once. The app's own packages (``APP_PACKAGES``) are forgotten
    after the preload, so each task imports them from its FAB, as ``flwr-clientapp``
    does. Polls every ``FIRST_POLL`` seconds after a task, backing off to ``poll`` (to
    ``IDLE_POLL`` after ``IDLE_AFTER`` seconds without one: :class:`Backoff`); returns
    when the process ``watch`` (the SuperNode) is gone. The environment of its
    ClientApps gets :data:`CLIENTAPP_ENV`."""
    if "torch" in sys.modules:
        print("warm executor: torch already imported, CLIENTAPP_ENV may not apply", flush=True)
    clientapp_env()
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a preload is an optimisation only
            print(f"warm executor: not preloaded {name}: {exc}", flush=True)
    _forget(APP_PACKAGES)
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    def watched() -> bool:
        return watch is None or _alive(watch)

    host, port = address.rsplit(":", 1)
    while not _port_open(host.strip("[]"), int(port)):
        if not watched():
            return 0
        time.sleep(FIRST_POLL)
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP.value)])
    children: set[int] = set()
    backoff = Backoff(poll)
    print(f"warm executor for {address}: ready (pid {os.getpid()})", flush=True)
    while watched():
        children = {pid for pid in children if not _reaped(pid)}
        try:
            res = client.AcquireTask(request)
        except Exception as exc:  # the SuperNode is stopping or busy
            if not watched():
                break
            print(f"warm executor: polling failed: {exc}", flush=True)
            time.sleep(poll)
            continue
        if res.HasField("task") and res.token:
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                os._exit(_serve_task(address, res.token, parent))
            children.add(pid)
            backoff.reset()
            continue
        time.sleep(backoff.next())
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return stat != "Z"
    except OSError:
        return True
