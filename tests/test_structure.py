"""The package's structure, read with `ast` (nothing is imported): the import graph has no cycle, model/ imports only
the library (torch, transformers, ...) and itself, so its files run as remote code where normgpt is not installed,
and the Trainer declares every attribute it sets.

Imports inside functions count: a cycle hidden in a function body is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from train.arguments import REPO_ROOT

PACKAGES = ("model", "train")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in the file; `from package import name` counts as importing the
    submodule `package.name` where there is one, else the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, modules) & modules.keys() - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert len(edges) > 40 and "train.trainer" in edges["train.train"]  # the reader sees the real graph
    assert cycles(edges) == []


def test_the_reader_finds_a_cycle_where_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_model_imports_only_the_library_and_itself():
    modules = project_modules()
    for name, path in modules.items():
        if name.split(".")[0] != "model":
            continue
        foreign = sorted(m for m in imported(path, modules) if m.split(".")[0] != "model")
        assert foreign == [], f"{path.relative_to(REPO_ROOT)} imports {foreign}"


def test_the_trainer_declares_every_attribute_it_sets():
    """Its state is read at the top of the class, group by group: an attribute set anywhere else is undeclared
    state, and `getattr(self, name, default)` hides one."""
    source = (REPO_ROOT / "train" / "trainer.py").read_text()
    trainer = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    declared = {n.target.id for n in trainer.body if isinstance(n, ast.AnnAssign)}
    targets = [t for n in ast.walk(trainer) if isinstance(n, ast.Assign) for t in n.targets]
    targets += [n.target for n in ast.walk(trainer) if isinstance(n, ast.AugAssign)]
    assigned = {
        e.attr
        for target in targets
        for e in ast.walk(target)  # `self.a, self.b = ...` too
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self"
    }
    assert assigned and assigned <= declared, sorted(assigned - declared)
    assert "getattr(self," not in source
