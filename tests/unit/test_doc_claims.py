"""The README's and docs/' claims that the code alone can hold (issue 17, item 1).

An outside review checked 13 claims of the documents against the code and found 12 wrong. The
ones a running daemon must show are tested in tests/integration/test_protocol_doc.py (a paused
study's `trial.ask`, `draining`, non-JSON HTTP bodies, events after a loop ended, SIGHUP and
`objectives`, the spec's `mode` default, the OpenAPI route table); dead letters in
tests/integration/test_intake_redelivery.py; a bad ``HPOD_STRATEGIES_FILE`` in
tests/unit/test_config_files.py; one source for throughput figures and for the modes in
tests/unit/test_docs_sources.py. Here: every file, module, command and setting the documents
name exists, what SIGHUP re-reads, how a crashed loop is restarted, how many worker processes
`make run` starts, and the architecture's map of the modules.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hpod.config import RELOADABLE, Settings
from hpod.daemon import supervisor

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "examples" / "hpod-example-objective" / "README.md",
    ]
}
OPERATIONS = DOCS["docs/operations.md"]
ARCHITECTURE = DOCS["docs/architecture.md"]

#: Where a file name in backticks may be found: the repository, the package and the folders
#: whose sections name their files by their base names.
BASES = [
    ROOT,
    *(
        ROOT / "hpod" / sub
        for sub in ("", "daemon", "daemon/web", "workers", "policies", "policies/strategy")
    ),
    ROOT / "hpod" / "data" / "strategy",
    ROOT / "systemd",
    ROOT / "config",
]
#: Named files that are not in the repository: outside it, an example of the reader's own,
#: or written by a benchmark run.
ELSEWHERE = {"../shared/ARCHITECTURE.md", "spec.json", "bench/results/savings.json"}


def test_every_file_the_documents_name_exists() -> None:
    """A module or file named in backticks (``daemon/handler.py``, ``hpod/data/modes.toml``)
    exists, so that a rename that forgets a document fails here (the review found modes said
    to be read from a ``config/modes.toml`` that did not exist)."""
    named = re.compile(r"`([A-Za-z_.][\w./-]*\.(?:py|toml|md|json|service))`")
    missing = [
        f"{doc}: {name}"
        for doc, text in DOCS.items()
        for name in set(named.findall(text))
        if name not in ELSEWHERE and not any((base / name).exists() for base in BASES)
    ]
    assert missing == []


def test_every_module_the_documents_name_imports() -> None:
    """A dotted name in a package of hpod (``hpod.workers.registry``, ``python -m
    hpod.sampling.child``) is a module, or an attribute of one."""
    packages = {p.name for p in (ROOT / "hpod").iterdir() if (p / "__init__.py").exists()}
    missing = []
    for doc, text in DOCS.items():
        for name in set(re.findall(r"\bhpod(?:\.\w+)+", text)):
            parts = name.split(".")
            if parts[1] not in packages:
                continue  # a queue (hpod.trials), a file (hpod.toml), a client method
            if not _resolves(parts):
                missing.append(f"{doc}: {name}")
    assert missing == []


def _resolves(parts: list[str]) -> bool:
    """Whether ``hpod.a.b[.attr…]`` is a module of the source tree, or a module and a name
    its source defines (a class, function or constant)."""
    for n in range(len(parts), 2, -1):
        path = ROOT.joinpath(*parts[:n])
        if n == len(parts) and path.is_dir():
            return True
        module = path.with_suffix(".py")
        if module.exists():
            return n == len(parts) or parts[n] in module.read_text()
    return len(parts) == 2


def test_the_reload_section_lists_what_sighup_applies() -> None:
    """docs/operations.md's reload section names exactly the settings SIGHUP applies
    (`hpod.config.RELOADABLE`), `objectives` among them, and says the strategies file is read
    at start only."""
    section = OPERATIONS[OPERATIONS.index("## Reload settings and modes") :]
    section = section[: section.index("\n## ", 1)]
    applied = section[section.index("applies without a restart:") : section.index("The log line")]
    listed = set(re.findall(r"`(\w+)`", applied))
    assert listed == set(RELOADABLE)
    assert "objectives" in RELOADABLE
    strategies = OPERATIONS[OPERATIONS.index("`HPOD_STRATEGIES_FILE` (in `hpod.env`)") :]
    assert "read at start only" in strategies[:200]
    assert re.search(r"`HPOD_STRATEGIES_FILE` \| unset \|[^|]*read at start", README)
    assert re.search(r"`HPOD_MODES_FILE` \| unset \|[^|]*reloaded on SIGHUP", README)


def test_a_failed_loop_is_restarted_with_the_documented_back_off() -> None:
    """architecture.md and operations.md give the restart back-off of a failed study loop
    (0.5 s doubling up to 30 s), not the fixed 5 s the review found; these are the supervisor's."""
    initial, maximum = supervisor.RESTART_INITIAL_SECONDS, supervisor.RESTART_MAX_SECONDS
    assert (initial, maximum) == (0.5, 30.0)
    assert f"{initial:g} s doubling up to {maximum:g} s" in ARCHITECTURE
    assert f"({initial:g} s, doubling up to {maximum:g} s" in OPERATIONS
    assert not re.search(r"restarted after 5 s", "".join(DOCS.values()))


def test_make_run_starts_one_worker_with_a_process_per_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make run` runs `hpod demo`, which starts `hpod run` with the settings' defaults: one
    local Celery worker whose pool has `local_workers` processes, one per core (the review
    found "two workers" in the README)."""
    for name in [k for k in os.environ if k.startswith("HPOD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HPOD_CONFIG", str(tmp_path / "none.toml"))
    assert Settings().local_workers == os.cpu_count()
    make = (ROOT / "Makefile").read_text()
    run = make[make.index("\nrun:") :].split("\n\n")[0]
    assert "hpod demo" in run and "LOCAL_WORKERS" not in run
    assert "one local Celery worker whose pool has one process per core" in " ".join(README.split())
    assert re.search(r"`HPOD_LOCAL_WORKERS` \| number of cores \|", README)


def test_the_readme_command_table_is_the_cli() -> None:
    """Every `hpod` command the README's table names exists, and every command of the CLI is
    in the table, with its subcommands (``hpod policy status``, ``hpod cache clear``)."""
    from hpod.cli import _parser

    table = README[README.index("| command | what it does |") :]
    table = table[: table.index("\n\n")]
    named: set[tuple[str, ...]] = set()
    for cell in (row.split("|")[1] for row in table.splitlines()[2:]):
        base: tuple[str, ...] = ()
        for slash, item in re.findall(r"(/ )?`([^`]*)`", cell):
            # the command's words: the lowercase ones before an argument or option
            leading = tuple(itertools.takewhile(re.compile("[a-z]+").fullmatch, item.split()))
            if leading[:1] == ("hpod",):
                named.add(leading[1:])
                base = leading[1:-1]
            elif slash and leading:  # `hpod policy status` / `reset`: a sibling command
                named.add((*base, leading[0]))
    commands = _commands(_parser())
    assert {c[0] for c in named} == {c[0] for c in commands}
    assert {c for c in named if len(c) == 2} <= commands


def _commands(parser: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The CLI's commands and subcommands, as tuples of words."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.add((*prefix, name))
                found |= _commands(sub, (*prefix, name))
    return found


#: Variables the README's table names that are read from the environment directly, not
#: settings (`hpod.modes` and the strategy catalog read them; `HPOD_CONFIG` names the file).
ENVIRONMENT_ONLY = {"HPOD_MODES_FILE", "HPOD_STRATEGIES_FILE", "HPOD_CONFIG"}


def test_the_readme_settings_table_names_real_settings_and_their_defaults() -> None:
    """Each ``HPOD_*`` of the README's settings table is a setting (or a variable read
    directly), and a default given as a plain number is the setting's default."""
    table = README[README.index("| setting | default | meaning |") :]
    table = table[: table.index("\n\n")]
    fields = Settings.model_fields
    for row in table.splitlines()[2:]:
        names_cell, default_cell = row.split("|")[1:3]
        names = re.findall(r"`(HPOD_\w+)`", names_cell)
        defaults = [d.strip().strip("`") for d in default_cell.split(" / ")]
        for i, name in enumerate(names):
            if name in ENVIRONMENT_ONLY:
                continue
            key = name.removeprefix("HPOD_").lower()
            assert key in fields, name
            default = defaults[i] if len(defaults) == len(names) else ""
            if re.fullmatch(r"\d+", default):
                assert fields[key].get_default(call_default_factory=True) == int(default), name


def test_the_architecture_map_names_every_module() -> None:
    """docs/architecture.md's "Where to look" names every module of hpod/ (the shipped
    objectives and packages' ``__init__`` aside), each one that exists."""
    section = ARCHITECTURE[ARCHITECTURE.index("## Where to look") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line.split("|")[2] for line in section.splitlines() if line.startswith("| ")][1:]
    named: set[str] = set()
    for cell in rows:
        folder = ""  # `policies/strategy/`: the names after it are its modules
        for name in re.findall(r"`([\w/.]+)`", cell):
            if name.endswith("/"):
                folder = name
            elif name.endswith(".py"):
                named.add(name if "/" in name or not folder else folder + name)
    package = ROOT / "hpod"
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "objectives" not in path.parts
    }
    assert sorted(modules - named) == []
    assert sorted(named - modules) == []
