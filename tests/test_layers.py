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
