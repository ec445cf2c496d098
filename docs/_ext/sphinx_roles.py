"""A griffe extension for the API reference: the docstrings' Sphinx roles as Markdown.

The code's docstrings use reStructuredText roles (``:class:`~plugit_core.proxy.ProxyApp```,
``:meth:`close```) and double-backquoted literals; mkdocstrings renders Markdown. Each role
becomes inline code showing the name as Sphinx would (``~`` keeps the last part), and
````literal```` becomes ```literal```.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const|ref):`(~?)([^`]+)`")
LITERAL = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    name = match.group(2).strip()
    if "<" in name and name.endswith(">"):  # :ref:`text <target>`
        name = name[: name.index("<")].strip()
    if match.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"`{name}`"


def markdown(text: str) -> str:
    """``text`` with its Sphinx roles and double-backquoted literals as Markdown code."""
    text = ROLE.sub(_role, text)
    text = LITERAL.sub(r"`\1`", text)
    text = text.replace("PROTOCOL.md", "protocol")  # the code's references to the spec's sections
    return text.replace("::\n", ":\n")


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
