"""The rules of the house (ARCHITECTURE.md), checked from the source: arrows point down, no
import cycles, private names stay home, the engine never imports napari or Qt, short modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_emdiffuse"
PKG = "napari_emdiffuse"

# What each engine part may import (besides itself); errors and events sit under everything.
BASE = {"engine.errors", "engine.events"}
ALLOWED = {
    "engine.core": BASE,
    "engine.io": BASE,
    "engine.models": BASE | {"engine.core", "engine.io"},
    "engine.inference": BASE | {"engine.core", "engine.io", "engine.models"},
    "engine.training": BASE | {"engine.core", "engine.io", "engine.models", "engine.inference.normalise"},
    "engine.parallel": BASE | {"engine.core", "engine.io", "engine.models", "engine.inference"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every import at any depth, package-relative."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([p for p in base if p] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith(PKG):
                target = node.module[len(PKG) + 1 :]
            else:
                target = node.module or ""
                if target.split(".")[0] in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"):
                    found.append((f"!{target}", [], node.lineno))
                continue
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"):
                    found.append((f"!{a.name}", [], node.lineno))
                elif a.name.startswith(PKG + "."):
                    found.append((a.name[len(PKG) + 1 :], [], node.lineno))
    return found


MODULES = _modules()


def _resolve(target: str, names: list[str]) -> list[str]:
    """Modules an import statement depends on (``from pkg import module`` counts the module)."""
    deps = []
    for n in names:
        if f"{target}.{n}".strip(".") in MODULES:
            deps.append(f"{target}.{n}".strip("."))
    if not deps and target in MODULES:
        deps.append(target)
    return deps


GRAPH = {
    name: {d for target, names, _ in _imports(name, path) if not target.startswith("!") for d in _resolve(target, names)} - {name}
    for name, path in MODULES.items()
}


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "engine" and len(parts) > 1 else parts[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, deps in graph.items():
        part = _part(name)
        if part not in ALLOWED:
            continue
        for d in deps:
            if _part(d) == part or d == "engine":
                continue
            if not any(d == a or d.startswith(a + ".") for a in ALLOWED[part]):
                bad.append(f"{name} -> {d}")
    return bad


def _cyclic(graph: dict[str, set[str]]) -> list[str]:
    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return seen

    # The package __init__ ("") only maps names to modules lazily.
    return sorted(m for m in graph if m and m in reach(m))


def test_engine_parts_import_only_downwards():
    assert not _upward(GRAPH), _upward(GRAPH)


def test_engine_and_api_import_no_gui():
    bad = [
        f"{name}:{line} {target[1:]}"
        for name, path in MODULES.items()
        if name.startswith("engine") or name in ("api", "cli", "")
        for target, _, line in _imports(name, path)
        if target.startswith("!")
    ]
    assert not bad, bad


def test_no_import_cycles():
    assert not _cyclic(GRAPH), _cyclic(GRAPH)


def test_private_names_stay_in_their_module():
    bad = []
    for name, path in MODULES.items():
        for target, names, line in _imports(name, path):
            if target.startswith("!") or target.split(".")[0] not in ("engine", "widgets", "api", "cli", "_sample_data"):
                continue
            for n in names:
                if n.startswith("_") and f"{target}.{n}" not in MODULES:
                    bad.append(f"{name}:{line} imports {target}.{n}")
    assert not bad, bad


@pytest.mark.parametrize("limit", [800])
def test_modules_stay_short(limit):
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > limit}
    assert not long, long


def test_the_checks_can_fail():
    """Control: an upward import and a cycle in a made-up graph are caught."""
    graph = {"engine.core.a": {"engine.inference.b"}, "engine.inference.b": {"engine.core.a"}}
    assert _upward(graph) == ["engine.core.a -> engine.inference.b"]
    assert _cyclic(graph) == ["engine.core.a", "engine.inference.b"]
    assert _upward({"engine.inference.b": {"engine.parallel.runner"}}) == ["engine.inference.b -> engine.parallel.runner"]
