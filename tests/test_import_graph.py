"""The modules of our apps import each other without cycles, and only the Stripe client imports
the `stripe` library.

Every module of the apps is imported in a fresh interpreter (so each one imports at all, and
the list is what Python finds, not a guess); the graph of their module-level imports is built
from their source with `ast` and must be acyclic. Imports inside a function run when it is
called, not when the module loads, and do not count: that is how tasks reach the services
that queue them (the services import the tasks at module level).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = (
    "billing_project",
    "audit",
    "metering",
    "invoicing",
    "notifications",
    "budgets",
    "billing_cycle",
    "portal",
)

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import django
django.setup()
found = {}
for app in sys.argv[1:]:
    package = importlib.import_module(app)
    found[app] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, prefix=app + "."):
        found[info.name] = importlib.import_module(info.name).__file__
print(json.dumps(found))
"""


@functools.cache
def import_every_module() -> dict[str, Path]:
    """Module name -> source file, for every module of the apps, each imported in one fresh
    interpreter."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "billing_project.settings"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *APPS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name: Path(path) for name, path in json.loads(done.stdout.splitlines()[-1]).items()}


def _module_level(statements: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module loads: at top level, in top-level `if`,
    `try` and `with` blocks and in class bodies; not in functions, nor under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in statements:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                found += _module_level(node.body)
            found += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                found += _module_level(block)
            for handler in node.handlers:
                found += _module_level(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            found += _module_level(node.body)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports at module level.

    `from a.b import c` depends on the module a.b.c if there is one, else on a.b (a name in
    it); `import a.b.c` on the longest of a.b.c, a.b, a that is ours.
    """

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets |= {ours(alias.name) for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in modules else ours(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected component of more
    than one module, found with Tarjan's algorithm; [] if the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, within it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in {component}")  # a component always holds one


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_module_level_imports_only():
    source = (
        "import invoicing.tasks\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from portal import views\n"
        "try:\n    from metering import models\nexcept ImportError:\n    pass\n"
        "class A:\n    from notifications import services\n"
        "def f():\n    from invoicing import admin\n"
    )
    found = [ast.unparse(node) for node in _module_level(ast.parse(source).body)]
    assert found == [
        "import invoicing.tasks",
        "from typing import TYPE_CHECKING",
        "from metering import models",
        "from notifications import services",
    ]


def test_no_import_cycle_among_the_apps_modules():
    modules = import_every_module()
    graph = import_graph(modules)

    # the graph is the real one: every app is in it, and a known edge of each kind is found
    assert {name.partition(".")[0] for name in modules} == set(APPS)
    assert "invoicing.tasks" in graph["invoicing.stripe.invoices"]  # from invoicing import tasks
    assert "invoicing.stripe.client" in graph["invoicing.stripe.outbox"]  # from pkg import mod
    assert "invoicing.models" in graph["invoicing.stripe.invoices"]  # from mod import name
    # tasks reach the services inside their bodies only
    assert not {m for m in graph["invoicing.tasks"] if m.startswith("invoicing.stripe")}

    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_stripe_client_imports_the_stripe_library():
    importers = set()
    for name, path in import_every_module().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                if any(a.name.split(".")[0] == "stripe" for a in node.names):
                    importers.add(name)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                if (node.module or "").split(".")[0] == "stripe":
                    importers.add(name)
    assert importers == {"invoicing.stripe.client"}
