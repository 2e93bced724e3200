"""The import structure of the package, read from the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import suprsync

ROOT = Path(suprsync.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every suprsync module this file imports: at module level, in functions and under
    TYPE_CHECKING alike."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from . import x`` may name a module.
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m == "suprsync" or m.startswith("suprsync.")}


def graph(paths: list[Path]) -> dict[str, set[str]]:
    names = {module_name(p): p for p in paths}
    return {n: imports_of(p) & names.keys() - {n} for n, p in names.items()}


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_reader_resolves_relative_imports(tmp_path: Path) -> None:
    store = ROOT / "catalog" / "store.py"
    assert "suprsync.catalog.schema" in imports_of(store)
    assert "suprsync.hashing" in imports_of(store)


def test_catalog_package_has_no_import_cycle() -> None:
    modules = sorted((ROOT / "catalog").glob("*.py"))
    assert len(modules) > 10
    assert cycle_in(graph(modules)) is None


#: The backends' names; only catalog/dialects.py compares anything with them.
BACKENDS = {"sqlite", "postgresql", "postgres"}


def backend_checks(path: Path) -> list[str]:
    """Where a module asks which backend it runs on (by its name) instead of asking the
    catalog's dialect object."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            consts = [n for n in (node.left, *node.comparators) if isinstance(n, ast.Constant)]
            if any(c.value in BACKENDS for c in consts):
                found.append(f"{where} compares with a backend name")
        elif isinstance(node, ast.Attribute) and node.attr == "name":
            inner = node.value
            if (isinstance(inner, ast.Attribute) and inner.attr == "dialect") or (
                    isinstance(inner, ast.Name) and inner.id == "dialect"):
                found.append(f"{where} reads dialect.name")
        elif isinstance(node, ast.Attribute) and node.attr in ("get_backend_name",
                                                               "is_postgresql", "drivername"):
            found.append(f"{where} reads {node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith", "removeprefix")
              and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                      and a.value.split(":")[0] in BACKENDS for a in node.args)):
            found.append(f"{where} matches a URL against a backend name")
    return found


def test_backend_check_finder_finds_each_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('if s.get_bind().dialect.name == "sqlite": pass\n'
                      'if url.startswith("sqlite"): pass\n'
                      'x = url.get_backend_name()\n'
                      'y = manager.is_postgresql\n')
    assert len(backend_checks(sample)) == 5


def test_only_the_dialect_module_checks_the_backend_name() -> None:
    offenders = [hit for path in sorted(ROOT.rglob("*.py"))
                 if path != ROOT / "catalog" / "dialects.py"
                 for hit in backend_checks(path)]
    assert offenders == []
