"""The shape of `core`: each layer imports only the layers below it, nothing imports in a cycle, no Streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
RANK = {"root": 0, "model": 1, "task": 2, "explain": 3, "study": 4, "cli": 5, "__main__": 5}
"""Root modules (errors, settings, progress, metrics, cache) first; a module may import its own rank or below."""


def _module(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in RANK:
        return "root"
    return parts[1]


def _imports(path: Path) -> set[str]:
    """The core modules ``path`` imports (relative imports resolved), at any depth of the file."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if not node.module else []
            for t in [target, *names]:
                if t.startswith("core") and (CORE.parent / (t.replace(".", "/") + ".py")).exists() or \
                        (CORE.parent / t.replace(".", "/") / "__init__.py").exists():
                    found.add(t)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(("core", "streamlit"))}
    found.discard(module)
    return found


GRAPH = {_module(p): _imports(p) for p in sorted(CORE.rglob("*.py"))}


@pytest.mark.parametrize("module", [m for m in GRAPH if m != "core"])
def test_no_upward_imports(module: str) -> None:
    upward = [t for t in GRAPH[module] if RANK[_layer(t)] > RANK[_layer(module)]]
    assert not upward, f"{module} ({_layer(module)}) imports from a higher layer: {upward}"


def test_core_never_imports_streamlit() -> None:
    offenders = [m for m, targets in GRAPH.items() if any(t.startswith("streamlit") for t in targets)]
    for path in CORE.rglob("*.py"):
        if "import streamlit" in path.read_text(encoding="utf-8"):
            offenders.append(_module(path))
    assert not offenders


def test_no_import_cycles() -> None:
    packages = {m for m in GRAPH if (CORE.parent / m.replace(".", "/") / "__init__.py").exists()}
    edges = {m: {t for t in ts if t in GRAPH and t not in packages} for m, ts in GRAPH.items() if m not in packages}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in edges.get(m, ()):
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*path, m, t])}"
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])
