"""The layout holds: no import circle between packages, the engine names no method, each
method's halves import only what they share, and the distribution installs every package
under fedsim's own names (README, "Layout")."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.registry import known_methods

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> the import name it installs as (pyproject's package-dir).
FOLDERS = {
    "fedsim": "fedsim",
    "methods": "fedsim_methods",
    "strategies": "fedsim_methods.strategies",
    "clients": "fedsim_methods.clients",
}
# What a plugin may import: fedsim's public API (docs/methods.md, "Writing a method").
PUBLIC = (
    "fedsim.method",
    "fedsim.registry",
    "fedsim.seeding",
    "fedsim.training",
    "fedsim.local",
    "fedsim.federation.strategy",
    "fedsim.federation.sampling",
    "fedsim.federation.replies",
    "fedsim.federation.context",
    "fedsim.federation.callbacks",
    "fedsim.config.schema",
    "fedsim_methods.supervised",
)


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([FOLDERS[folder], *rest])


def python_files() -> Iterator[tuple[Path, str]]:
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, module_name(path)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` never run, so they make no circle."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(path: Path, module: str) -> list[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                package = parts if path.name == "__init__.py" else parts[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def package_of(module: str) -> str | None:
    """The node of the package graph: ``fedsim.<child>`` or a method's ``<half>.<name>``."""
    parts = module.split(".")
    if parts[0] == "fedsim" and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "fedsim_methods" and len(parts) > 1:
        depth = 3 if parts[1] in ("strategies", "clients") else 2
        return ".".join(parts[:depth]) if len(parts) >= depth else None
    return None


def package_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path, module in python_files():
        source = package_of(module)
        if source is None:
            continue
        for target in map(package_of, imports_of(path, module)):
            if target is not None and target != source:
                edges.setdefault(source, set()).add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports():
    """The checker itself: a circle made only by an import inside a function is found."""
    edges = {"fedsim.a": {"fedsim.b"}, "fedsim.b": {"fedsim.a"}, "fedsim.c": {"fedsim.a"}}
    assert cycles(edges) == [["fedsim.a", "fedsim.b"]]
    runner = ROOT / "fedsim" / "runner.py"
    assert "fedsim.resume" in imports_of(runner, "fedsim.runner")  # imported in a function


def test_no_import_circle_between_packages():
    found = cycles(package_graph())
    assert not found, "import circles between packages: " + "; ".join(
        " <-> ".join(c) for c in found
    )


def _method_name_uses(tree: ast.AST, names: set[str]) -> Iterator[tuple[int, str]]:
    def is_name(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if (
                any(is_name(o) for o in operands)
                or any(isinstance(o, ast.Attribute) and o.attr == "method" for o in operands)
                and any(isinstance(o, ast.Constant) for o in operands)
            ):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.List | ast.Tuple | ast.Set) and any(map(is_name, node.elts)):
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Dict) and any(is_name(k) for k in node.keys if k is not None):
            yield node.lineno, ast.unparse(node)[:80]


def test_the_engine_names_no_method():
    """No code under fedsim/ compares a method name (or ``exp.method``) with a literal or keeps
    a collection of method names; the names are the registry's, plugins' included."""
    names = set(known_methods())
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {code}"
        for path, module in python_files()
        if module.split(".")[0] == "fedsim"
        for line, code in _method_name_uses(ast.parse(path.read_text()), names)
    ]
    assert not offending, "the engine names methods:\n" + "\n".join(offending)


def test_the_method_name_check_catches_what_it_should():
    names = {"fedavg", "fedit"}
    caught = list(_method_name_uses(ast.parse('if exp.method == "x": pass'), names))
    caught += list(_method_name_uses(ast.parse('MEAN = ("fedavg", "fedprox")'), names))
    caught += list(_method_name_uses(ast.parse('ok = name in {"fedit": 1}'), names))
    assert len(caught) == 3
    assert not list(_method_name_uses(ast.parse('order = "curriculum"'), names))


@pytest.mark.parametrize(
    ("half", "other"),
    [
        ("strategies", "clients"),
        ("clients", "strategies"),
        ("methods", "strategies"),
        ("methods", "clients"),
    ],  # fmt: skip
)
def test_a_half_does_not_import_the_other(half, other):
    """Server code never imports client code or the reverse; what both use lives in
    ``fedsim_methods.<name>`` (methods/), which imports neither half."""
    forbidden = FOLDERS[other] + "."
    offending = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, module in python_files()
        if path.relative_to(ROOT).parts[0] == half
        for name in imports_of(path, module)
        if name.startswith(forbidden)
    ]
    assert not offending, "\n".join(offending)


def test_every_package_is_installed_under_fedsims_names():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    on_disk = {
        module_name(init) for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")
    }
    assert declared == on_disk, (
        f"missing: {sorted(on_disk - declared)}, extra: {sorted(declared - on_disk)}"
    )
    assert all(p.split(".")[0] in ("fedsim", "fedsim_methods") for p in declared)
    mapped = {v: k for k, v in config["package-dir"].items()}
    assert mapped == {f: n for f, n in FOLDERS.items() if f != "fedsim"}


def test_the_example_plugin_imports_only_the_public_api():
    plugin = ROOT / "tests" / "plugin"
    offending = []
    for path in plugin.rglob("*.py"):
        for name in imports_of(path, "fedsim_toy_probe"):
            top = name.split(".")[0]
            if top in ("fedsim", "fedsim_methods") and not name.startswith(PUBLIC):
                offending.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offending, "\n".join(offending)
