"""Imports flow one way through dalab's layers, as docs/architecture.md says.

Each module of ``src/dalab`` is read with ``ast`` (nothing is imported), and every import of
another dalab layer, at module level or inside a function, must point to a lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dalab"

# lowest first; layers on one line may not import each other either
LAYERS = [("errors",), ("data",), ("models",), ("tasks",), ("methods",), ("training",), ("evaluation",),
          ("experiments", "toy"), ("reports",), ("cli",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _imported_layers(path: Path) -> set[str]:
    """The dalab layers (first component below ``dalab``) that the module at ``path`` imports."""
    package = ["dalab", *path.relative_to(SRC).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package[: len(package) - node.level + 1]
                names = [".".join(base + node.module.split("."))] if node.module else \
                    [".".join(base + [a.name]) for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n.split(".")[1] for n in names if n.startswith("dalab.") and n.count(".") >= 1)
    return found


def test_every_module_belongs_to_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    assert tops - {"__init__", "__main__"} <= set(RANK), "add the new layer to LAYERS and docs/architecture.md"


def test_imports_only_flow_down():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        me = rel.parts[0].removesuffix(".py")
        if me not in RANK:  # dalab/__init__.py and __main__.py sit above every layer
            continue
        for other in _imported_layers(path):
            if other in RANK and other != me and RANK[other] >= RANK[me]:
                upward.append(f"{rel} imports dalab.{other}")
    assert not upward, "imports must flow down the layers of docs/architecture.md: " + "; ".join(upward)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the dalab modules it imports (at module level or inside a function), by name."""
    def name_of(p: Path) -> str:
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {name_of(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for m, p in mods.items():
        package = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else [])
                mod = ".".join(base + (node.module.split(".") if node.module else []))
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            # a package above the module is set up before the module runs: not a dependency that can cycle
            deps.update(n for n in names if n in mods and n != m and not m.startswith(n + "."))
        graph[m] = deps
    return graph


def test_no_module_imports_itself_through_others():
    """No import cycle between dalab's modules (functions' own imports count too; a module's own parent
    packages do not)."""
    graph = _module_graph()
    assert "dalab.tasks.segmentation" in graph and "dalab.training.sources" in graph  # the new modules are read
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_outside_the_task_modules_branches_on_a_tasks_name():
    import re

    pattern = re.compile(r'''== *"(segmentation|classification)"|task *(==|!=)|!= *"(segmentation|classification)"''')
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.parent.name != "tasks"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "ask the task object (dalab.tasks) instead: " + ", ".join(found)
