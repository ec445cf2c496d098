"""The translator: walks one template's tokens and writes Jinja source.

It is driven by two tables it does not define: the tag table (Django tag name -> small
translate function, :mod:`.tags`) given to :class:`Translator`, and the filter table
(:mod:`.filters`). ``{% if %}`` conditions are parsed by :class:`IfParser`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from jinja2 import TemplateSyntaxError

from .filters import ARG_NONE, ARG_REQUIRED, FILTERS
from .lexer import (
    BLOCK,
    CONSTANT_RE,
    FILTER_RE,
    FORLOOP_ATTRS,
    NUMBER_RE,
    TEXT,
    VAR,
    VARIABLE_RE,
    Token,
    is_plain_name,
    jinja_text,
    number_literal,
    split_bits,
    string_literal,
    tokenize,
    unquote,
)

# --------------------------------------------------------------------------------------------
# Translator
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """An open block tag (``if``, ``for``, ``block``...) waiting for its end tag."""

    tag: str  # the Django tag that opened it
    ends: tuple[str, ...]  # Django tags that close it
    close: str  # Jinja source written for the end tag
    lineno: int
    name: str | None = None  # block name, for ``endblock <name>``
    seen_else: bool = False  # an else/empty branch was seen
    out_index: int = -1  # for loops: output piece holding ``{% for %}``
    alias: str | None = None  # for loops: name the loop is saved under for ``forloop.parentloop``


#: A tag's translate function: gets the translator, the tag's token and the bits after its name.
TagFunction = Callable[["Translator", Token, list[str]], None]


class Translator:
    """Translates one template: walks the tokens and writes Jinja source to ``self.out``."""

    def __init__(self, source: str, name: str | None, tags: Mapping[str, TagFunction]) -> None:
        self.source = source
        self.tags = tags
        self.name = name
        self.tokens = tokenize(source)
        self.pos = 0
        self.out: list[str] = []
        self.frames: list[Frame] = []

    # -- driver -------------------------------------------------------------------------------

    def translate(self) -> str:
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            self.pos += 1
            if token.kind == TEXT:
                self.emit(jinja_text(token.content))
            elif token.kind == VAR:
                if not token.content:
                    self.error("Empty variable tag", token)
                self.emit(f"{{{{ {self.expression(token.content, token)} }}}}")
            elif token.kind == BLOCK:
                self.block_tag(token)
            # Django comments ({# #}) produce nothing.
        if self.frames:
            frame = self.frames[-1]
            raise self.syntax_error(
                f"Unclosed tag '{frame.tag}' (opened on line {frame.lineno}): "
                f"expected '{frame.ends[0]}'",
                frame.lineno,
            )
        result = "".join(self.out)
        # Django outputs a template's final newline; Jinja drops it (unless the environment sets
        # keep_trailing_newline). An empty comment after it keeps it either way.
        return result + "{##}" if result.endswith(("\n", "\r")) else result

    def block_tag(self, token: Token) -> None:
        bits = split_bits(token.content)
        if not bits:
            self.error("Empty block tag", token)
        handler = self.tags.get(bits[0])
        if handler is None:
            self.error(
                f"Unknown template tag '{bits[0]}': not supported by the PlugIt django dialect",
                token,
            )
        handler(self, token, bits[1:])

    # -- helpers used by tag functions ----------------------------------------------------------

    def emit(self, jinja_source: str) -> None:
        self.out.append(jinja_source)

    def emit_value(self, expression: str, target: str | None, token: Token) -> None:
        """Print ``expression``, or store it in ``target`` (the ``... as var`` forms)."""
        if target is None:
            self.emit(f"{{{{ {expression} }}}}")
        else:
            self.emit(f"{{% set {self.target(target, token)} = {expression} %}}")

    def syntax_error(self, message: str, lineno: int) -> TemplateSyntaxError:
        error = TemplateSyntaxError(message, lineno, self.name)
        error.source = self.source
        return error

    def error(self, message: str, token: Token) -> NoReturn:
        raise self.syntax_error(message, token.lineno)

    def push(self, frame: Frame) -> Frame:
        self.frames.append(frame)
        return frame

    def top(self, token: Token, *tags: str) -> Frame:
        """The innermost open frame, which must have been opened by one of ``tags``."""
        if not self.frames or self.frames[-1].tag not in tags:
            self.error(f"'{token.tag_name}' is not allowed here", token)
        return self.frames[-1]

    def loops(self) -> list[Frame]:
        return [frame for frame in self.frames if frame.tag == "for"]

    def skip_until(self, end: str, opener: Token) -> list[Token]:
        """Consume the tokens up to the block tag whose content is ``end``; return them."""
        skipped: list[Token] = []
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            self.pos += 1
            if token.kind == BLOCK and token.content == end:
                return skipped
            skipped.append(token)
        self.error(f"Unclosed tag '{opener.tag_name}': expected '{end}'", opener)

    def target(self, name: str, token: Token) -> str:
        """A variable name assigned by a tag (``for x``, ``with x=``, ``as x``)."""
        if not is_plain_name(name) or name.startswith("_"):
            self.error(f"Invalid variable name {name!r} in '{token.tag_name}'", token)
        return name

    def assignments(self, bits: list[str], token: Token) -> str:
        """``a=b c=d`` bits as Jinja ``a=<expr>, c=<expr>``."""
        pairs = []
        for bit in bits:
            name, equals, value = bit.partition("=")
            if not equals or not value:
                self.error(f"'{token.tag_name}' expects name=value pairs, got {bit!r}", token)
            pairs.append(f"{self.target(name, token)}={self.expression(value, token)}")
        return ", ".join(pairs)

    # -- expressions ----------------------------------------------------------------------------

    def expression(self, text: str, token: Token) -> str:
        """A Django filter expression (``var|filter:arg|...``) as a Jinja expression."""
        base, pos = self.primary(text, 0, token)
        filters = self.filters(text, pos, token)
        return base + "".join(f"|{call}" for call in filters)

    def filter_chain(self, text: str, token: Token) -> str:
        """A chain of filters without a value (the ``{% filter %}`` tag) as Jinja source."""
        return "|".join(self.filters("|" + text, 0, token))

    def primary(self, text: str, pos: int, token: Token) -> tuple[str, int]:
        match = CONSTANT_RE.match(text, pos)
        if match:
            return string_literal(unquote(match.group())), match.end()
        match = VARIABLE_RE.match(text, pos) or NUMBER_RE.match(text, pos)
        if match:
            return self.variable(match.group(), token), match.end()
        self.error(f"Could not parse {text[pos:]!r} in {text!r}", token)

    def filters(self, text: str, pos: int, token: Token) -> list[str]:
        calls = []
        while pos < len(text):
            match = FILTER_RE.match(text, pos)
            if match is None:
                self.error(f"Could not parse the remainder {text[pos:]!r} of {text!r}", token)
            name, pos = match.group(1), match.end()
            argument = None
            if text.startswith(":", pos):
                argument, pos = self.primary(text, pos + 1, token)
            calls.append(self.filter_call(name, argument, token))
        return calls

    def filter_call(self, name: str, argument: str | None, token: Token) -> str:
        spec = FILTERS.get(name)
        if spec is None:
            self.error(
                f"Unknown filter '{name}': not supported by the PlugIt django dialect", token
            )
        if argument is None and spec.arg == ARG_REQUIRED:
            self.error(f"Filter '{name}' requires an argument", token)
        if argument is not None and spec.arg == ARG_NONE:
            self.error(f"Filter '{name}' takes no argument", token)
        return spec.jinja_name if argument is None else f"{spec.jinja_name}({argument})"

    def variable(self, text: str, token: Token) -> str:
        """A Django variable (``a.b.0``) or number as a Jinja expression."""
        number = number_literal(text)
        if number is not None:
            return number
        if text.startswith("_") or "._" in text:
            self.error(f"Variables and attributes may not begin with underscores: {text!r}", token)
        parts = text.split(".")
        if "" in parts:
            self.error(f"Could not parse variable {text!r}", token)
        if parts == ["block", "super"] and any(f.tag == "block" for f in self.frames):
            # Django gives "" when there is no parent block (a base template's own blocks, as
            # in the original proxy's base-withBlocks.html); Jinja's super() would raise.
            return "(super() if super is defined else '')"
        head, rest = parts[0], parts[1:]
        if head == "forloop" and self.loops():
            base, rest = self.forloop(rest)
        elif head in ("True", "False", "None"):
            base = head
        elif is_plain_name(head):
            base = head
        else:
            base = f"dj_var({head!r})"
        if rest:
            base = f"dj_get({base}, {', '.join(map(repr, rest))})"
        return base

    def forloop(self, rest: list[str]) -> tuple[str, list[str]]:
        """``forloop[.parentloop...][.attribute]`` as Jinja's ``loop`` (or a saved outer loop)."""
        loops = self.loops()
        level = len(loops) - 1
        while rest and rest[0] == "parentloop":
            level, rest = level - 1, rest[1:]
        if level < 0:
            return "dj_var('forloop')", rest  # the parent of the outermost loop: nothing
        if level == len(loops) - 1:
            base = "loop"
        else:
            frame = loops[level]
            if frame.alias is None:
                frame.alias = f"dj_loop{level + 1}"
                self.out[frame.out_index] += f"{{% set {frame.alias} = loop %}}"
            base = frame.alias
        if rest and rest[0] in FORLOOP_ATTRS:
            base, rest = f"{base}.{FORLOOP_ATTRS[rest[0]]}", rest[1:]
        return base, rest

    def condition(self, bits: list[str], token: Token) -> str:
        return IfParser(self, token, bits).parse()


# Django ``{% if %}`` operators and their binding powers (``not`` as a prefix binds with 8).
_IF_INFIX = {
    "or": 6,
    "and": 7,
    "in": 9,
    "not in": 9,
    "is": 10,
    "is not": 10,
    "==": 10,
    "=": 10,  # old Django spelling of ==
    "!=": 10,
    "<": 10,
    ">": 10,
    "<=": 10,
    ">=": 10,
}
_IF_NOT_POWER = 8


class IfParser:
    """Top-down operator precedence parser for ``{% if %}`` conditions.

    Produces fully parenthesised Jinja; comparisons go through ``dj_compare`` so that they never
    raise (Django treats a failing comparison as false).
    """

    def __init__(self, translator: Translator, token: Token, bits: list[str]) -> None:
        self.translator = translator
        self.token = token
        self.words: list[str] = []
        i = 0
        while i < len(bits):
            word = bits[i]
            if (word, bits[i + 1 : i + 2]) in (("is", ["not"]), ("not", ["in"])):
                word, i = f"{word} {bits[i + 1]}", i + 1
            self.words.append(word)
            i += 1
        self.pos = 0

    def parse(self) -> str:
        if not self.words:
            self.translator.error(f"'{self.token.tag_name}' needs a condition", self.token)
        result = self.expression(0)
        if self.pos < len(self.words):
            self.translator.error(
                f"Unused {self.words[self.pos]!r} at end of if expression", self.token
            )
        return result

    def expression(self, right_power: int) -> str:
        if self.pos >= len(self.words):
            self.translator.error("Unexpected end of if expression", self.token)
        word = self.words[self.pos]
        self.pos += 1
        if word == "not":
            left = f"(not {self.expression(_IF_NOT_POWER)})"
        elif word in _IF_INFIX:
            self.translator.error(f"Not expecting {word!r} in if expression", self.token)
        else:
            left = self.translator.expression(word, self.token)
        while self.pos < len(self.words):
            operator_ = self.words[self.pos]
            power = _IF_INFIX.get(operator_, 0)
            if power <= right_power:
                break
            self.pos += 1
            right = self.expression(power)
            if operator_ in ("and", "or"):
                left = f"({left} {operator_} {right})"
            else:
                operator_ = "==" if operator_ == "=" else operator_
                left = f"dj_compare({left}, {operator_!r}, {right})"
        return left
