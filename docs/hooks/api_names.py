"""MkDocs hook: the table of the top package's names on the API reference's first page.

``dalab/__init__.py`` exports its public names lazily (``_EXPORTS``: name -> module, attribute), so
no static reader can list them. At build time this hook imports each one and writes a table (name,
first docstring line, a cross-reference to where the reference documents it) in place of the
``<!-- dalab-names -->`` marker of ``reference/index.md``. Enabled in ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

MARKER = "<!-- dalab-names -->"
SRC = Path(__file__).resolve().parents[2] / "src"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from griffe_rst_roles import rst_to_markdown  # noqa: E402  (the sibling file, reST roles -> Markdown)


def _target(module: str, attr: str, obj) -> str:
    """The identifier under which mkdocstrings renders ``obj``: where it is defined."""
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{module}.{attr}"  # a plain value (a registry dict): documented where it is exported


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
    first = rst_to_markdown((doc or "").strip().split("\n\n")[0]).replace("\n", " ")
    return first.replace("|", "\\|")


def names_table() -> str:
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    import dalab

    rows = ["| name | what it is | reference |", "|---|---|---|"]
    for name, (module, attr) in dalab._EXPORTS.items():
        obj = getattr(importlib.import_module(module), attr)
        target = _target(module, attr, obj)
        rows.append(f"| `dalab.{name}` | {_summary(obj)} | [{target}][{target}] |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, names_table())
    return markdown
