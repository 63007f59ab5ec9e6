"""The package layering of README §Architecture, checked on the source (ast over every module).

Units are ``<top>.<first>`` (``terminal.web``, ``cityid.chain``, ``server.chain``; a module directly in a
top-level package is its own unit, ``terminal.config``). Every import counts, function-local ones included.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Top-level package → the folder that holds it.
PACKAGES = {
    "cityid": ROOT / "cityid",
    "terminal": ROOT / "terminal",
    "server": ROOT / "server",
    "emulators": ROOT / "firmware-tools" / "emulators",
    "firmware_tools": ROOT / "firmware-tools" / "firmware_tools",
    "citydemo": ROOT / "firmware-tools" / "citydemo",
}


def _module_name(top: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[top]).with_suffix("")
    parts = [top, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            module = _module_name(top, path)
            graph[module] = _imports(path, module)
    return graph


GRAPH = _graph()
MODULES = set(GRAPH)


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (``from pkg import attr`` resolves to ``pkg``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, names in GRAPH.items():
        for name in names:
            target = _resolve(name)
            if target is not None and _unit(target) != _unit(module):
                edges[_unit(module)].add(_unit(target))
    return edges


def _violations(source_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for module, names in GRAPH.items():
        if module != source_prefix and not module.startswith(source_prefix + "."):
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} imports {target}")
    return sorted(bad)


def test_the_graph_sees_the_project() -> None:
    assert len(MODULES) > 100
    assert "terminal.web.app" in MODULES and "emulators.card.os" in MODULES
    assert "cityid.apdu" in GRAPH["terminal.sessions.base"] | {
        _resolve(n) for n in GRAPH["terminal.sessions.base"]
    }


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``edges`` closes (each as the path back to its start)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_no_package_cycles() -> None:
    cycles = find_cycles(_edges())
    assert not cycles, "package cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_a_cycle_would_be_seen() -> None:
    assert find_cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [["a.x", "a.y", "a.z", "a.x"]]
    assert find_cycles({"a.x": {"a.y"}, "a.y": set()}) == []


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("cityid", ("terminal", "server", "emulators", "firmware_tools", "citydemo")),
        ("emulators", ("terminal", "server", "firmware_tools", "citydemo")),
        ("terminal", ("emulators", "firmware_tools", "citydemo", "server")),
        ("server", ("terminal", "emulators", "firmware_tools", "citydemo")),
        ("firmware_tools", ("citydemo", "server")),
        ("terminal.web", ("terminal.sessions", "terminal.pcsc", "terminal.fido")),
        ("terminal.flows", ("terminal.web",)),
        ("terminal.sessions", ("terminal.flows", "terminal.web", "terminal.verifier")),
        ("terminal.fido", ("terminal.flows", "terminal.web", "terminal.verifier")),
        ("terminal.verifier", ("terminal.flows", "terminal.web", "terminal.sessions", "terminal.pcsc")),
    ],
)
def test_layers_point_one_way(source: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(source, forbidden) == []


def test_nothing_imports_the_demo() -> None:
    importers = [
        m
        for m, names in GRAPH.items()
        if not m.startswith("citydemo") and any((_resolve(n) or "").startswith("citydemo") for n in names)
    ]
    assert importers == []
