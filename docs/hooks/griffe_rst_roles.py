"""Griffe extension for the API reference: reST markup of dalab's docstrings, read as Markdown.

dalab's docstrings use a few reStructuredText constructs (``:class:`X```, ``:math:`...```,
``.. math::`` blocks, ``::`` before a literal block) that Markdown would print as they are. Before
mkdocstrings renders a docstring, this extension turns roles into inline code, ``.. math::`` blocks
into fenced code blocks, and a paragraph-ending ``::`` into ``:``. The source is not changed.
Enabled in ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|math):`~?([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?:(?P=indent)[ \t]+.*)?\n)+)",
                         re.MULTILINE)
_LITERAL_MARK = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)


def _math_block(m: re.Match) -> str:
    indent = m.group("indent")
    lines = [ln.strip() for ln in m.group("body").splitlines() if ln.strip()]
    return f"{indent}```text\n" + "".join(f"{indent}{ln}\n" for ln in lines) + f"{indent}```\n\n"


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles, math blocks and literal-block marks made Markdown."""
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _LITERAL_MARK.sub(r"\1:", text)


class RstRoles(griffe.Extension):
    """Rewrite each object's docstring with :func:`rst_to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
