"""What the README and the docs quote is what the code does (cheap checks only)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from flower_qgadmm.history import read_history
from flower_qgadmm.simulate import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_example_log_and_summary_lines_match_a_default_run(tmp_path, capsys) -> None:
    """The README's example round lines and final summary line (the default problem, 500
    iterations) carry the bits a default run reports now (they went stale when the
    payload header shrank)."""
    assert main(["--log-every", "1", "--out", str(tmp_path / "h.jsonl")]) == 0
    printed = capsys.readouterr().out
    for k, kind in ((69, "disagreement"), (70, "consensus")):
        quoted = re.search(rf"\[ROUND {k}/500\] gap=\S+ {kind}=\S+ bits=(\d+)", README)
        ran = re.search(rf"\[iteration {k}/500\] gap=\S+ {kind}=\S+ bits=(\d+)", printed)
        assert quoted and ran and quoted.group(1) == ran.group(1), k
    pattern = (
        r"500 iterations, final gap .*?, (\d+) bits; gap < 1e-06 from iteration (\d+) "
        r"after (\d+) bits"
    )
    quoted = re.search(r"flower-q-gadmm: " + pattern, README)
    ran = re.search(r"q-gadmm: " + pattern, printed)
    assert quoted and ran and quoted.groups() == ran.groups()


def test_readme_payload_sizes_of_the_default_problem(tmp_path) -> None:
    """ "On the default problem (10 workers, d = 20, 3 bits: a 12-byte payload per message)
    ... (GADMM, 82-byte payloads ...)": one iteration of each, as the history counts it."""
    quoted_q = re.search(r"d = 20, 3 bits: a (\d+)-byte payload per\s+message", README)
    quoted_g = re.search(r"\(GADMM,\s+(\d+)-byte\s+payloads", README)
    assert quoted_q and quoted_g
    for algorithm, quoted in (("q-gadmm", quoted_q), ("gadmm", quoted_g)):
        out = tmp_path / f"{algorithm}.jsonl"
        assert main(["--algorithm", algorithm, "--iterations", "1", "--out", str(out)]) == 0
        row = read_history(out)[-1]
        assert row["payload_bytes"] == 10 * int(quoted.group(1)), algorithm


def test_architecture_add_an_algorithm_names_what_dpsgd_py_defines() -> None:
    """docs/architecture.md's "Add an algorithm" walks through D-PSGD: every method its
    bullets give to `dpsgd.py` is defined there (the rest is inherited from `Gossip`)."""
    from flower_qgadmm.algorithms.dpsgd import Dpsgd
    from flower_qgadmm.algorithms.gossip import Gossip

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Add an algorithm") :]
    recipe = section[section.index("`flower_qgadmm/algorithms/dpsgd.py`") : section.index("2. ")]
    named = re.findall(r"^\s+- `(\w+)\(", recipe, re.M)
    assert named and all(name in vars(Dpsgd) for name in named), named
    for name in ("schedule", "wiring_of", "resolve", "mixed", "descent"):
        assert name in vars(Gossip) and name not in vars(Dpsgd), name


def test_readme_benchmark_summary_quotes_the_current_benchmarks_page() -> None:
    """The README's "Benchmarks" summary quotes `docs/benchmarks.md`: its run's date and
    the reference runner's two ratios (the page is rewritten by `benchmarks/run.py`;
    the summary must follow it)."""
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    summary = README[README.index("## Benchmarks") :]
    date = re.search(r"\| date \(UTC\) \| (\d{4}-\d\d-\d\d) (\d\d:\d\d) \|", page)
    assert date and f"{date.group(1)} {date.group(2)}" in summary.replace("\n  ", " ")
    for algorithm in ("gadmm", "q-gadmm"):
        ratio = re.search(rf"\| {algorithm}: reference runner / plain loop \| ([\d.]+x) \|", page)
        assert ratio and ratio.group(1) in summary, algorithm


def test_readme_source_coder_cost_on_q_gadmm_at_3_bits(tmp_path, capsys) -> None:
    """ "the source coder needs 1.39x the fixed-width bits to gap 1e-6 at 3 bits": the two
    default runs, each to the iteration where the gap stays below 1e-6."""
    quoted = re.search(r"coder needs ([\d.]+)x the fixed-width bits to gap 1e-6 at 3 bits", README)
    assert quoted
    to_target = {}
    for codec in ("fixed-width", "source"):
        out = tmp_path / f"{codec}.jsonl"
        assert main(["--codec", codec, "--iterations", "100", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        found = re.search(r"gap < 1e-06 from iteration (\d+) after (\d+) bits", printed)
        assert found, printed
        to_target[codec] = found.groups()
    assert to_target["source"][0] == to_target["fixed-width"][0]  # the same iterations
    ratio = int(to_target["source"][1]) / int(to_target["fixed-width"][1])
    assert f"{ratio:.2f}" == quoted.group(1)


def test_both_layouts_name_every_script_and_module() -> None:
    """The README's "Layout" and docs/architecture.md's tree name every script under
    simulations/ (bench_*.py as a pattern in the README) and every module of the
    package."""
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = README[README.index("## Layout") : README.index("## Benchmarks")]
    tree = architecture[: architecture.index("## The contract")]
    scripts = sorted(p.name for p in (ROOT / "simulations").glob("*.py"))
    missing = [n for n in scripts if n not in tree]
    missing += [n for n in scripts if n not in layout and not n.startswith("bench_")]
    modules = sorted(
        p.name for p in (ROOT / "flower_qgadmm").glob("*.py") if p.name != "__init__.py"
    )
    missing += [n for n in modules if n not in layout or n not in tree]
    assert not missing


def test_readme_censoring_saving_on_the_geometric_graph() -> None:
    """ "transmissions until the gap stays below 1e-4 drop from 1,600 to 669": the
    README's censoring set-up (seeded geometric graph of 20, 4-bit Q-GADMM, rho = 20)."""
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.data import experiment_datasets
    from flower_qgadmm.history import summarize
    from flower_qgadmm.reference import least_squares_solvers, run_from_config

    quoted = re.search(r"below 1e-4 drop from ([\d,]+) to ([\d,]+)", README)
    assert quoted
    cfg = RunConfig.of(topology="geometric", num_workers=20, num_iterations=300, rho=20.0, bits=4)
    solvers = least_squares_solvers(experiment_datasets(cfg))
    sent = []
    for censoring in (False, True):
        rows = run_from_config(cfg.replace(censoring=censoring), solvers).history
        reached = summarize(rows, 1e-4)["reached_iteration"]
        sent.append(f"{rows[reached - 1]['transmissions']:,}")
    assert tuple(sent) == quoted.groups()


def test_ray_inline_advice_points_at_a_readme_section_that_exists() -> None:
    """The warning is read by users of an installed package: it cites the README (on the
    project page and in the package's metadata), not a file of the repository's docs/,
    and the section it names is there and gives the command."""
    from pathlib import Path

    from flower_qgadmm.flower.transport import ray_inline_advice

    advice = ray_inline_advice(10**6, {})
    assert "docs/" not in advice
    section = advice.split("see the README, '", 1)[1].rstrip("'")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"## {section}\n" in readme
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    assert "RAY_max_direct_call_object_size=" in body


def test_benchmarks_flower_object_counts_of_a_round_and_a_reply() -> None:
    """docs/benchmarks-flower.md, "Twenty-seventh session": the objects one steady round
    pushes (each message and every distinct object of its content, as Flower names
    objects by their content hash) and the objects of one reply, counted on what our
    relay (D-PSGD, ring of 4) and the kit's FedAvg baseline (``run_flower_fedavg``: Flower's
    FedAvg and our handlers) exchange with 4 nodes, itemised as the page itemises them."""
    from collections import Counter

    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from clients.experiment.client_app import app
    from flower_qgadmm.config import RunConfig, SolverSettings
    from flower_qgadmm.flower import RelayStrategy
    from flower_qgadmm.flower.fedavg import run_flower_fedavg
    from flower_qgadmm.testing import FakeGrid

    class Recording(FakeGrid):  # every exchange: (messages, replies)
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.exchanges: list = []

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            replies = list(super().send_and_receive(messages, timeout=timeout))
            self.exchanges.append((messages, replies))
            return replies

    def kinds(objects) -> Counter:
        return Counter(type(o).__name__ for o in objects)

    def steady(grid: Recording, kind: str) -> tuple[Counter, list[Counter]]:
        """(the distinct objects pushed, each reply's objects) of the second exchange of
        ``kind`` (iteration / round 2: no set-up, evaluation or checkpoint)."""
        messages, replies = [
            (m, r) for m, r in grid.exchanges if m and m[0].metadata.message_type == kind
        ][1]
        pushed = {}
        for message in messages:
            pushed.update(get_all_nested_objects(message.content))
        counted = kinds(pushed.values()) + Counter({"Message": len(messages)})
        return counted, [kinds(get_all_nested_objects(r).values()) for r in replies]

    def itemised(text: str) -> Counter:
        kind = (
            r"(\d+) (Message|RecordDict|ArrayRecord|ArrayChunk|ConfigRecord|MetricRecord|Array)s?\b"
        )
        return Counter({k: int(n) for n, k in re.findall(kind, text)})

    page = (ROOT / "docs" / "benchmarks-flower.md").read_text(encoding="utf-8")
    section = page[page.index("## Twenty-seventh session") :]
    section = " ".join(section[: section.index("\n## ")].split())
    push = re.search(
        r"pushes (\d+) objects \((.*?)\), as many as FedAvg's (\d+) \((.*?)\); a reply is "
        r"(\d+) objects \((.*?)\) against FedAvg's (\d+) \((.*?)\)",
        section,
    )
    assert push, "the page no longer itemises the objects of a round and a reply"
    # D-PSGD on a ring of 4, a steady round (no evaluation, no checkpoint)
    rc = RunConfig.of(
        algorithm="d-psgd", topology="ring", num_workers=4, num_iterations=4, dim=5
    ).to_run_config()
    ours = Recording(app, 4, rc)
    RelayStrategy.from_config(RunConfig.from_run_config(rc)).start(ours, num_rounds=4, timeout=5.0)
    pushed, replies = steady(ours, "train.step")
    assert int(push.group(1)) == sum(pushed.values()) and itemised(push.group(2)) == pushed
    assert all(r == replies[0] for r in replies)
    assert int(push.group(5)) == sum(replies[0].values()) and itemised(push.group(6)) == replies[0]
    # the kit's FedAvg baseline: the same RecordDict for every node
    theirs = Recording(app, 4, rc)
    run_flower_fedavg(theirs, 4, np.zeros(5), 3, 5.0, SolverSettings(), 0)
    pushed, replies = steady(theirs, "train")
    assert int(push.group(3)) == sum(pushed.values()) and itemised(push.group(4)) == pushed
    assert all(r == replies[0] for r in replies)
    assert int(push.group(7)) == sum(replies[0].values()) and itemised(push.group(8)) == replies[0]


def test_readme_large_runs_quote_the_size_their_commands_run() -> None:
    """README "Large runs": the measured 100,000-worker commands carry no `--dim`, so
    they run the default problem; the d the text names is that default (it said d = 50
    while the 4.4 GB and 2.2 GB were measured at d = 20: at d = 50 the D-PSGD run
    peaks at 5.3 GB)."""
    from flower_qgadmm.config import RunConfig

    section = README[README.index("**Large runs.**") : README.index("## Compare GADMM")]
    commands = re.findall(r"`([^`]*--workers 100000[^`]*)`", " ".join(section.split()))
    assert len(commands) == 2 and not any("--dim" in c for c in commands)
    quoted = re.search(
        r"Measured here, on the default problem \(d = (\d+)\)", " ".join(section.split())
    )
    assert quoted and int(quoted.group(1)) == RunConfig.of().dim


def test_failures_page_quotes_a_failing_workers_message() -> None:
    """docs/failures.md, "a worker raises": the quoted message is the one a run stops
    with (it quoted ``worker 3 (node …) failed: error …``; the engine says ``<phase>
    phase of iteration k failed: worker 3 (node …): error …``)."""
    import pytest

    from clients.experiment.client_app import app
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.flower import RelayStrategy, WorkerFailure
    from flower_qgadmm.testing import FakeGrid

    page = (ROOT / "docs" / "failures.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| a worker raises"))
    quoted = re.findall(r"`([^`]*)`", row.split(" | ")[1])[0]
    pattern = re.escape(quoted).replace("…", ".*").replace(r"iteration\ k", r"iteration \d+")
    pattern = pattern.replace(r"worker\ 3", r"worker \d+")
    cfg = RunConfig.of(num_workers=5, num_iterations=6, inject_failure="3@2", on_failure="stop")
    with pytest.raises(WorkerFailure) as caught:
        RelayStrategy.from_config(cfg).start(
            FakeGrid(app, 5, cfg.to_run_config()), num_rounds=6, timeout=5.0
        )
    assert re.fullmatch(pattern, str(caught.value)), (pattern, str(caught.value))


def _architecture_tree() -> dict[str, str]:
    """docs/architecture.md's module map as {path under flower_qgadmm/: description}: an
    entry is a line whose name (``x.py`` or ``x/``) starts at an indentation below the
    description column; its indentation (2 per level) says which folder holds it, and
    the lines indented to the description column continue its description."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text[text.index("```\n") + 4 :]
    block = block[: block.index("```")]
    entries: dict[str, str] = {}
    folders: list[str] = []
    current = None
    for line in block.splitlines():
        found = re.match(r"^( {0,8})([\w.]+\.py|\w+/)(?: {2,}(.*))?$", line)
        if found:
            depth = len(found.group(1)) // 2
            folders = folders[:depth]
            path = "".join(folders) + found.group(2)
            if found.group(2).endswith("/"):
                folders.append(found.group(2))
            current = path
            entries[path] = (found.group(3) or "").strip()
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return entries


def test_architecture_module_map_lists_every_module_with_a_description() -> None:
    """Every module of the package, subpackages and ``__init__.py`` files included, has
    its own line in docs/architecture.md's tree, at its place in the folders, with a
    description; and the tree names no module that does not exist."""
    tree = _architecture_tree()
    package = ROOT / "flower_qgadmm"
    modules = {"flower_qgadmm/" + p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    listed = {path for path in tree if path.startswith("flower_qgadmm/") and path.endswith(".py")}
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md's tree"
    assert sorted(listed - modules) == [], "the tree names modules that do not exist"
    assert [path for path in listed if not tree[path]] == [], "entries without a description"


def _settings_table(text: str) -> dict[str, object]:
    """The keys and defaults of a markdown table ``| `key` | `default` | meaning |`` (a row
    may give several keys and their defaults, comma-separated, or one default for all),
    defaults read as TOML values."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    quoted: dict[str, object] = {}
    for keys, defaults in re.findall(r"^\| (`[^|]*`) \| (`[^|]*`) \|", text, re.M):
        names = re.findall(r"`([^`]*)`", keys)
        values = re.findall(r"`([^`]*)`", defaults)
        if len(values) == 1 and len(names) > 1:
            values = [v.strip() for v in values[0].split(",")]
            values = values * len(names) if len(values) == 1 else values
        assert len(names) == len(values), (names, values)
        for name, value in zip(names, values, strict=True):
            quoted[name] = tomllib.loads(f"v = {value}")["v"]
    return quoted


def _app_config() -> dict[str, object]:
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"][
        "app"
    ]["config"]


def test_readme_settings_table_documents_every_key_with_its_default() -> None:
    """README "Settings": one row per key of ``[tool.flwr.app.config]`` (which equals the
    settings classes' defaults: tests/test_topology_config.py), each with that default,
    of the same type, and no row for a key that does not exist."""
    config = _app_config()
    quoted = _settings_table(README[README.index("## Settings") : README.index("## Without")])
    assert sorted(set(config) - set(quoted)) == [], "keys the README's table leaves out"
    assert sorted(set(quoted) - set(config)) == [], "rows for keys that do not exist"
    wrong = {k: (quoted[k], config[k]) for k in config if repr(quoted[k]) != repr(config[k])}
    assert wrong == {}, "README default != pyproject.toml (quoted, code)"


def test_defaults_page_table_quotes_the_code_defaults() -> None:
    """docs/defaults.md's table of the keys it discusses: each key exists and its default
    is the code's."""
    config = _app_config()
    page = (ROOT / "docs" / "defaults.md").read_text(encoding="utf-8")
    quoted = _settings_table(page[: page.index("\n## ")])
    assert quoted and sorted(set(quoted) - set(config)) == []
    assert {k: v for k, v in quoted.items() if repr(v) != repr(config[k])} == {}


DOCS = [
    "README.md",
    "docs/architecture.md",
    "docs/defaults.md",
    "docs/failures.md",
    "docs/encryption.md",
    "docs/own-project.md",
    "docs/benchmarks-flower.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "experiments").glob("*.md")),
]


def test_docs_name_only_files_that_exist() -> None:
    """Every repository path the docs name (``flower_qgadmm/...``, ``simulations/...``,
    ``benchmarks/...``, ``tests/...``, ``docs/...``, ``clients/...``) exists, and so does
    every test file the failure tables cite."""
    missing = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        top = "flower_qgadmm|simulations|benchmarks|tests|docs|clients"
        for path in set(re.findall(rf"(?<![\w/.-])((?:{top})/[\w./*-]*)", text)):
            path = path.rstrip(".")
            if "*" in path:  # a pattern: some file must match it
                if not list(ROOT.glob(path)):
                    missing.append((doc, path))
            elif not (ROOT / path).exists():
                missing.append((doc, path))
        for name in set(re.findall(r"\b(test_\w+\.py)\b", text)):
            if not (ROOT / "tests" / name).exists():
                missing.append((doc, name))
    assert missing == [], missing


def test_docs_code_references_resolve() -> None:
    """A backticked ``module.name`` in the docs/ pages (``rounds.MAX_RANGE``,
    ``choco.auto_consensus_step``, ``Worker.receive_all``, ...) names an attribute that
    exists: of one of the package's modules of that name, or of a class of the package of
    that name (its instance attributes included)."""
    import importlib
    import inspect
    import pkgutil

    import flower_qgadmm

    by_name: dict[str, list[object]] = {}
    for info in pkgutil.walk_packages(flower_qgadmm.__path__, "flower_qgadmm."):
        module = importlib.import_module(info.name)
        by_name.setdefault(info.name.rsplit(".", 1)[-1], []).append(module)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__.startswith("flower_qgadmm"):
                by_name.setdefault(name, []).append(value)

    def has(owner: object, attr: str) -> bool:
        if hasattr(owner, attr):
            return True
        if not inspect.isclass(owner):
            return False
        fields = getattr(owner, "__dataclass_fields__", {})  # instance attributes too
        return attr in fields or f"self.{attr} =" in inspect.getsource(owner)

    files = ("py", "md", "json", "jsonl", "png", "npz", "pt", "toml", "log", "db")
    broken = []
    for doc in DOCS[1:]:  # not the README, whose examples name instances (strategy.start)
        text = (ROOT / doc).read_text(encoding="utf-8")
        for code in re.findall(r"`([^`\n]+)`", text):
            for owner, attr in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)", code):
                if owner in by_name and attr not in files:
                    if not any(has(o, attr) for o in by_name[owner]):
                        broken.append((doc, f"{owner}.{attr}"))
    assert broken == [], broken


def test_docs_quote_commits_of_this_repository() -> None:
    """A measurement the docs date by its commit (``commit 0d06258``, ``825d190's package
    code``) names a commit of this repository's history (skipped without git or in a
    shallow clone, which may lack it)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True
    )
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("not a full git history")
    quoted = set()
    for doc in DOCS:
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        quoted |= {(doc, c) for c in re.findall(r"\bcommits? ([0-9a-f]{7,40})\b", text)}
        quoted |= {(doc, c) for c in re.findall(r"\b([0-9a-f]{7,40})'s (?:package )?code\b", text)}
    assert quoted
    unknown = [
        (doc, commit)
        for doc, commit in sorted(quoted)
        if subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True
        ).returncode
        != 0
    ]
    assert unknown == [], unknown


def test_readme_install_list_is_the_declared_dependencies_and_covers_every_import() -> None:
    """Every third-party package the package imports is a declared dependency (networkx,
    cryptography and datasets came only through torch, flwr and flwr-datasets), and the
    README's "installs ..." list names exactly the declared ones."""
    import ast
    import importlib.metadata
    import sys

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    def canonical(name: str) -> str:
        return re.split(r"[\[<>=!~ ;]", name)[0].lower().replace("_", "-")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonical(d) for d in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in (ROOT / "flower_qgadmm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top == "flower_qgadmm":
                    continue
                dists = {canonical(d) for d in distributions.get(top, [top])}
                if not dists & declared:
                    undeclared.add((top, path.relative_to(ROOT).as_posix()))
    assert sorted(undeclared) == [], "imported but not in [project] dependencies"
    installs = re.search(r"installs ([^)]*)\)", " ".join(README.split()))
    assert installs
    listed = {canonical(name.strip()) for name in installs.group(1).split(",")}
    assert listed == declared, (sorted(listed - declared), sorted(declared - listed))


def test_benchmarks_flower_page_names_the_current_benchmarks_page() -> None:
    """docs/benchmarks-flower.md's opening names the run ``docs/benchmarks.md`` holds
    (date, time and commit; it still named the 2026-12-02 08:55 run after the page was
    rewritten on 2026-12-03)."""
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    date = re.search(r"\| date \(UTC\) \| (\d{4}-\d\d-\d\d \d\d:\d\d) \|", page)
    commit = re.search(r"\| commit \| ([0-9a-f]{7,40}) \|", page)
    history = (ROOT / "docs" / "benchmarks-flower.md").read_text(encoding="utf-8")
    opening = " ".join(history[: history.index("\n## ")].split())
    quoted = re.search(r"latest figures are in `docs/benchmarks.md` \(([^)]*)\)", opening)
    assert date and commit and quoted
    assert f"{date.group(1)} UTC" in quoted.group(1) and commit.group(1) in quoted.group(1)


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, program, options) of every ``python -m flower_qgadmm.<module>`` and ``python
    <simulations|benchmarks>/<script>.py`` command the docs show: each line of a code
    block (``\\`` continuations joined, ``#`` comments dropped) and each inline code span;
    the options stop at a `` -- `` (what follows goes to Flower) or another command."""
    command = re.compile(
        r"python (?:-m (flower_qgadmm\.\w+)|((?:simulations|benchmarks)/\w+\.py))(.*)"
    )
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        pieces = []
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            block = re.sub(r"\\\n\s*", " ", block)
            pieces += [line.split(" #", 1)[0] for line in block.splitlines()]
        inline = re.sub(r"```.*?```", "", text, flags=re.S)
        pieces += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", inline)]
        for piece in pieces:
            for part in re.split(r"&&|;|\bflwr run\b", piece):
                match = command.search(part)
                if match:
                    rest = match.group(3).split(" -- ", 1)[0]
                    options = re.findall(r"(?<!\S)(--[a-z][\w-]*)", rest)
                    found.append((doc, match.group(1) or match.group(2), options))
    return found


def test_documented_commands_use_options_their_programs_have() -> None:
    """Every option a documented command passes exists: the reference CLI's (generated
    from the settings), the deployment kit's and the SuperLink helper's subcommands, and
    each script's argparse options."""
    from flower_qgadmm.simulate import build_parser

    simulate_help = build_parser().format_help()
    commands = _documented_commands()
    assert len(commands) > 40
    unknown = []
    for doc, program, options in commands:
        if program == "flower_qgadmm.simulate":
            known = simulate_help
        elif program.startswith("flower_qgadmm."):
            known = (ROOT / (program.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        else:
            assert (ROOT / program).exists(), (doc, program)
            known = (ROOT / program).read_text(encoding="utf-8")
        for option in options:
            if not re.search(rf"[\"\s\[]{re.escape(option)}\b(?![\w-])", known):
                unknown.append((doc, program, option))
    assert unknown == [], unknown


def test_own_project_page_lists_the_declared_dependencies() -> None:
    """docs/own-project.md says what installing flower-qgadmm into a user's project brings
    along: exactly ``[project] dependencies`` (networkx, cryptography and datasets used to
    come only through torch, flwr and flwr-datasets, and the page did not list them)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=;, ]", d, maxsplit=1)[0] for d in declared}
    page = (ROOT / "docs" / "own-project.md").read_text(encoding="utf-8")
    brings = re.search(r"brings the dependencies too \(([^)]*)\)", page.replace("\n", " "))
    assert brings is not None
    assert {n.strip(" `").split("[")[0] for n in brings.group(1).split(",")} == names
