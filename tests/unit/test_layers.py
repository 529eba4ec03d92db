"""Imports point one way, down the layers, and no module imports itself back.

Every ``import`` in the package counts, the ones inside functions and under
``TYPE_CHECKING`` too: a cycle that exists only for types still ties two layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "kokoro_service"

# Bottom first.  A module may import its own package, and any package of a lower rank;
# packages of one rank are independent of each other.
RANKS: dict[str, int] = {
    "kokoro_service": 0,  # the package itself: its version
    "kokoro_service.types": 0,
    "kokoro_service.errors": 0,
    "kokoro_service.logs": 0,
    "kokoro_service.audio": 1,
    "kokoro_service.text": 1,
    "kokoro_service.wire": 2,
    "kokoro_service.synthesis": 2,
    "kokoro_service.config": 3,
    "kokoro_service.ops": 4,
    "kokoro_service.calls": 5,
    "kokoro_service.server": 6,
    "kokoro_service.adapters": 7,
    "kokoro_service.daemon": 8,
    "kokoro_service.cli": 9,
    "kokoro_service.integrations": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    """The entry of RANKS that ``module`` belongs to: its longest prefix there."""
    best = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return best


def imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its file."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = name
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert layer(module) in RANKS, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    mine = layer(module)
    wrong = [
        f"{module} ({mine}) imports {target} ({layer(target)})"
        for target in sorted(GRAPH[module])
        if layer(target) != mine
        and not target.startswith(mine + ".")
        and RANKS[layer(target)] >= RANKS[mine]
        and layer(target) not in ("kokoro_service",)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    # Tarjan's strongly connected components: any of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_a_wrong_import() -> None:
    # The rules above are only as good as the graph: a known import must be in it.
    assert "kokoro_service.wire.codec" in GRAPH["kokoro_service.wire.client"]
    assert "kokoro_service.calls.table" in GRAPH["kokoro_service.server.server"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_long_module_says_why_it_is_long(module: str) -> None:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    if text.count("\n") <= 400:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert "Over 400 lines:" in docstring, f"{path}: give the reason in its docstring, or split it"
