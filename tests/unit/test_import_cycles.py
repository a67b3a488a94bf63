"""No import cycle in hpod/ (issue 17, item 6): a test walks every import of every module.

Imports inside functions count (a lazy import hides a cycle, it does not remove it); imports
under ``if TYPE_CHECKING:`` do not, since they never run. An import of ``a.b.c`` depends on
the module ``a.b.c`` if it exists, else on the package that defines the name. Cycles are
looked for between modules and between hpod's top-level parts (``hpod.workers``,
``hpod.policies``, ...), where a cycle means two parts that cannot be understood apart.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "hpod"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every module name imported in `tree`, but in ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (name for child in node.orelse for name in _imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        yield from _imports(node)


def _graph(part_of: int | None) -> dict[str, set[str]]:
    """Module -> the hpod modules it imports (or, with `part_of`, the same between the
    first `part_of` levels of the names, e.g. 2 for ``hpod.workers``)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        source = name if part_of is None else ".".join(name.split(".")[:part_of])
        targets = graph.setdefault(source, set())
        for imported in _imports(ast.parse(path.read_text())):
            if imported not in MODULES or imported == name:
                continue
            target = imported if part_of is None else ".".join(imported.split(".")[:part_of])
            if target != source and not name.startswith(target + "."):
                targets.add(target)
    return graph


@pytest.mark.parametrize("part_of", [None, 2], ids=["modules", "parts"])
def test_hpod_has_no_import_cycle(part_of: int | None) -> None:
    try:
        graphlib.TopologicalSorter(_graph(part_of)).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_walk_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    """The walker itself: a function-level import is an edge, a TYPE_CHECKING one is not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import hpod.daemon.studies\n"
        "def f():\n    from hpod.engine import make_sampler\n"
    )
    found = set(_imports(tree))
    assert "hpod.engine" in found and "hpod.daemon.studies" not in found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others (at run time)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), set()) - seen:
            seen.add(target)
            todo.append(target)
    return seen


#: The modules that may import the manager: those that start it or serve it over HTTP.
MANAGER_USERS = {
    "hpod.daemon.service",
    "hpod.daemon.http",
    "hpod.daemon.web",
    "hpod.daemon.web.keys",
    "hpod.daemon.web.routes",
    "hpod.daemon.web.events",
    "hpod.cli",
    "hpod.__main__",
}
#: Parts of the daemon that need nothing of a study's loop (issue 17: narrow interfaces).
LOOP_FREE = (
    "hpod.daemon.running",
    "hpod.daemon.slots",
    "hpod.daemon.ticker",
    "hpod.daemon.observers",
    "hpod.daemon.reports",
    "hpod.daemon.policy_requests",
    "hpod.daemon.told",
    "hpod.daemon.strategy",
)


def test_the_manager_s_parts_never_reach_back_to_the_manager_or_the_loop() -> None:
    """`StudyManager` wires its parts; none of them imports it (they are handed what they
    need), and the parts that need no loop do not import `hpod.daemon.studies`."""
    graph = _graph(None)
    for name in MODULES:
        if name not in MANAGER_USERS and name != "hpod.daemon.manager":
            assert "hpod.daemon.manager" not in _reachable(graph, name), name
    for name in LOOP_FREE:
        assert "hpod.daemon.studies" not in _reachable(graph, name), name
