"""Fenced blocks of README.md and docs/*.md, and what the test suite does with each.

The convention (docs/index.md, "Snippets are tested") is:

* A block whose first line names a file (``# polls.py``, ``# plugit.toml``) or whose marker says
  ``file=NAME`` is written to the page's folder under that name (an absolute path is taken below
  the folder: ``/etc/plugit/plugit.toml`` becomes ``etc/plugit/plugit.toml``), then checked.
* ``python`` blocks run, in order, in one namespace per page, in a temporary folder holding the
  files earlier blocks wrote. A Python block that names a file is written and compiled; the
  marker ``run`` imports it too.
* ``toml`` blocks are parsed and loaded through :meth:`plugit_core.config.ProxyConfig.from_mapping`
  (a fragment is laid over a minimal site with one service); a real ``ProxyApp`` is then built.
  ``{ env = "NAME" }`` values get a test value. The marker ``config-only`` stops after the load;
  ``parse-only`` (a ``pyproject.toml``) after parsing.
* ``json`` blocks are parsed.
* ``sh`` and ``console`` blocks run only with the marker ``run`` (each command, in the page's
  folder, must end with status 0; in a ``console`` block the commands are the ``$`` lines), or
  ``serve``: ``export`` lines set the page's environment, ``plugit service`` and ``plugit proxy``
  start in the background (the test waits for their port; every port a ``serve`` block names is
  swapped for a free one in the whole page), other commands must end with status 0.
* Any other block, and any shell block not run, must carry the marker ``illustration`` (a Python
  block so marked is still compiled).

Markers are HTML comments on the line before the fence: ``<!-- test: illustration -->``,
``<!-- test: run -->``, ``<!-- test: file=templates/home.html -->``. A comment
``<!-- test: prelude`` ... ``-->`` holds Python run before the page's next block (hidden set-up,
such as the Flask app a snippet wraps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*test:\s*(?P<body>.*?)\s*(?P<end>-->)?\s*$")
FILE_COMMENT = {
    "python": re.compile(r"^#\s*(?P<name>[\w./-]+\.py)\s*$"),
    "toml": re.compile(r"^#\s*(?P<name>[\w./-]+\.toml)\s*$"),
    "html": re.compile(r"^\{#\s*(?P<name>[\w./-]+\.html)\b.*#\}$"),
}
SHELL = {"sh", "bash", "shell", "console"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    markers: set[str] = field(default_factory=set)
    file: str | None = None
    prelude: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def illustration(self) -> bool:
        return "illustration" in self.markers

    def why_not_tested(self) -> str | None:
        """Why the suite would neither run nor check this block (None: it is tested or marked)."""
        if self.illustration:
            return None
        if self.lang in ("python", "toml", "json"):
            return None
        if self.lang in SHELL:
            return None if {"run", "serve"} & self.markers else "a shell block not run"
        if self.file:
            return None
        return f"a {self.lang or 'plain'} block"


def _marker_before(lines: list[str], index: int) -> tuple[set[str], str | None, str]:
    """The markers, file name and prelude of the comment just above line ``index`` (0-based)."""
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return set(), None, ""
    end = j
    if lines[end].strip() == "-->":  # a multi-line comment: find its start
        while j >= 0 and not lines[j].lstrip().startswith("<!--"):
            j -= 1
        if j < 0:
            return set(), None, ""
    match = MARKER.match(lines[j].strip())
    if not match:
        return set(), None, ""
    words = match.group("body").split()
    markers: set[str] = set()
    name = None
    for word in words:
        if word.startswith("file="):
            name = word[len("file=") :]
        else:
            markers.add(word)
    prelude = ""
    if match.group("end") is None:
        prelude = "\n".join(line for line in lines[j + 1 : end])
    return markers, name, prelude


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        lang = match.group("info").strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        markers, name, prelude = _marker_before(lines, i)
        text = "\n".join(body) + "\n"
        if name is None and lang in FILE_COMMENT and body:
            named = FILE_COMMENT[lang].match(body[0].strip())
            if named:
                name = named.group("name")
        found.append(Block(page, i + 1, lang, text, markers, name, prelude))
        i = j + 1
    return found


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: ``$`` lines of a console block, else every line, with
    backslash continuations joined and comments dropped."""
    raw = block.text.splitlines()
    if block.lang == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    commands: list[str] = []
    pending = ""
    for line in raw:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands
