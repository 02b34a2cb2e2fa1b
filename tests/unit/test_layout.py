"""The layer's shape: no import cycle between its modules, and no module reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

LAYER = Path(__file__).resolve().parents[2] / "layers/imagegw/imagegw"


def _module_name(path: Path) -> str:
    parts = path.relative_to(LAYER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, ast.AST]]:
    """(imported imagegw module, node) for every import in the file, function-level ones included."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in _executed_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not base.startswith("imagegw"):
                continue
            for alias in node.names:  # `from . import tasks` imports a module; `from .tasks import Task` a name
                candidate = f"{base}.{alias.name}"
                found.append((candidate if _exists(candidate) else base, node))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names if alias.name.startswith("imagegw")]
    return found


def _executed_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`, which only the type checker reads."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for branch in child.orelse:
                yield branch
                yield from _executed_nodes(branch)
            continue
        yield child
        yield from _executed_nodes(child)


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (LAYER / relative).with_suffix(".py").exists() or (LAYER / relative / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in LAYER.rglob("*.py"):
        name = _module_name(path)
        edges = graph.setdefault(name, set())
        for target, _ in _imports(path):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too.
            parts = target.split(".")
            for cut in range(1, len(parts) + 1):
                step = ".".join(parts[:cut])
                if step != name and not name.startswith(step + "."):  # a package's own modules import it
                    edges.add(step)
    return graph


def test_the_layer_has_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_no_module_but_tasks_touches_a_private_name_of_tasks():
    offenders = []
    for path in LAYER.rglob("*.py"):
        if path.name == "tasks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id == "tasks":
                offenders.append(f"{path.relative_to(LAYER)}:{node.lineno} tasks.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("tasks"):
                offenders += [f"{path.relative_to(LAYER)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert offenders == []


def _readme_module_table() -> set[str]:
    """Every module named in the first column of README's module table ("| `a.py`, `b.py` | role |")."""
    text = (LAYER.parents[2] / "README.md").read_text(encoding="utf-8")
    table = text.split("| module | role |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        names.update(part.strip().strip("`") for part in first.split(","))
    return names


def test_the_readme_module_table_names_every_module_of_the_layer_and_nothing_else():
    layout = {path.name for path in LAYER.glob("*.py") if path.name != "__init__.py"}
    layout |= {f"{path.name}/" for path in LAYER.iterdir() if (path / "__init__.py").exists()}
    assert _readme_module_table() == layout
