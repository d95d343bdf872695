"""The import graph is the architecture: no cycles (function-level imports included), no
private names taken from another module, and the wheel's package list matches the tree."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import networkx as nx

from evicctl.entry import CHECKOUT_ROOT

PACKAGE_DIRS = {"evicctl": CHECKOUT_ROOT / "evicctl", "evicctl.kernels": CHECKOUT_ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "evicctl" and parts[:1] == ["kernels"]:
                continue
            found[name] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (annotations only, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path):
    """(imported module, imported names) for every import statement, at any depth."""
    is_package = path.name == "__init__.py"
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names]


def _resolve(target: str, names: list[str]) -> list[str]:
    """Project modules an import statement loads (a `from pkg import mod` loads pkg.mod)."""
    out = [target] if target in MODULES else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            for dep in _resolve(target, names):
                # a package importing its own submodule lazily (a registry) is not a cycle edge
                if dep != name and not dep.startswith(name + "."):
                    g.add_edge(name, dep)
    return g


def test_no_import_cycles():
    cycles = sorted(nx.simple_cycles(_graph()), key=len)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def test_no_private_names_across_modules():
    offenders = []
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            if not (target.startswith("evicctl") and target != name):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES:
                    offenders.append(f"{name} imports {target}.{n}")
    assert not offenders, offenders


def test_wheel_package_list_matches_the_tree():
    declared = set(tomllib.loads((CHECKOUT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert declared == on_disk


def _private_names_defined(tree: ast.AST) -> set[str]:
    """Private attributes a module defines itself (methods, assignments to any `x._name`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_no_reaching_into_another_modules_privates():
    """`obj._x` where `_x` is not defined in the same module: an explicit interface belongs there."""
    offenders = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        own = _private_names_defined(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in {"self", "cls"} or node.attr in own:
                continue
            if node.attr in {"_replace", "_asdict", "_fields", "_make", "_C"}:  # public by convention
                continue
            offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert not offenders, offenders
