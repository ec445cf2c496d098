"""The ``django`` template dialect: Django template language translated to sandboxed Jinja2.

Services written for the original PlugIt proxy (a Django application) ship templates in the
Django template language. This proxy renders with Jinja2 in a sandbox, so a service whose settings
select the ``django`` dialect has every template translated to Jinja2 source when it is loaded
(:class:`DjangoDialectLoader`); the sandboxed environment then compiles and runs the result like
any other template.

The module has three parts:

* a **tokenizer** (:func:`_tokenize`) that cuts the source into text, ``{{ variable }}``,
  ``{% tag %}`` and ``{# comment #}`` tokens the way Django's lexer does (a tag never spans lines);
* a **translator** (:class:`_Translator`) driven by a tag table (:data:`_TAGS`, Django tag name ->
  small translate function) and a filter table (:data:`_FILTERS`, Django filter name -> ``dj_*``
  Jinja filter and argument rule);
* **runtime helpers**, the ``dj_*`` globals and filters that :func:`install` registers, which give
  translated code Django's semantics: a lookup ``a.b`` tries ``a["b"]``, then the attribute, then a
  list index, and calls argument-less callables (so ``dict.items`` works); missing values and bad
  comparisons fail silently; filters behave like Django's.

Each tag translates to Jinja source on the same line, so line numbers of compile and render errors
point at the original line.

Security: translated code is ordinary Jinja code run by the sandbox, and the helpers do not widen
what a template can reach: they read attributes only after the sandbox's ``is_safe_attribute``
agrees and call only through ``Environment.call``. As in Django, a name or attribute starting with
an underscore is rejected at translation time.

Example::

    env = ImmutableSandboxedEnvironment(
        autoescape=True, loader=DjangoDialectLoader(FileSystemLoader("templates"))
    )
    install(env)
    env.get_template("home.html").render(polls=[...], csrf_field=Markup(...))
"""

from __future__ import annotations

import calendar
import decimal
import inspect
import math
import operator
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any, NamedTuple, NoReturn
from urllib.parse import quote

from jinja2 import (
    BaseLoader,
    Environment,
    TemplateRuntimeError,
    TemplateSyntaxError,
    Undefined,
    pass_context,
    pass_environment,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.utils import missing
from markupsafe import Markup, escape

__all__ = ["DjangoDialectLoader", "install", "translate"]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_TEXT, _VAR, _BLOCK, _COMMENT = "text", "var", "block", "comment"
_OPENERS = {"{{": (_VAR, "}}"), "{%": (_BLOCK, "%}"), "{#": (_COMMENT, "#}")}
_TAG_START_RE = re.compile(r"\{[{%#]")


@dataclass(frozen=True)
class _Token:
    kind: str  # _TEXT, _VAR, _BLOCK or _COMMENT
    content: str  # between the delimiters, stripped (the text itself for text tokens)
    raw: str  # exactly as written in the source
    lineno: int  # line of the token's first character

    @property
    def tag_name(self) -> str:
        return self.content.split(None, 1)[0] if self.content else ""


def _tokenize(source: str) -> list[_Token]:
    """Cut Django template source into tokens.

    Like Django's lexer, a tag is ``{{``/``{%``/``{#`` up to the first matching closer on the same
    line; an opener without a closer on its line is plain text.
    """
    tokens: list[_Token] = []
    lineno = 1
    text_start = search = 0
    while (match := _TAG_START_RE.search(source, search)) is not None:
        start = match.start()
        kind, closer = _OPENERS[match.group()]
        end = source.find(closer, start + 2)
        newline = source.find("\n", start)
        if end == -1 or -1 < newline < end:
            search = start + 1
            continue
        if start > text_start:
            text = source[text_start:start]
            tokens.append(_Token(_TEXT, text, text, lineno))
            lineno += text.count("\n")
        raw = source[start : end + 2]
        tokens.append(_Token(kind, raw[2:-2].strip(), raw, lineno))
        text_start = search = end + 2
    if text_start < len(source):
        text = source[text_start:]
        tokens.append(_Token(_TEXT, text, text, lineno))
    return tokens


_BIT_RE = re.compile(
    r"""(?:[^\s'"]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')+  # unquoted characters and whole strings
    |\S+                                                # an unbalanced quote: left to the parser
    """,
    re.VERBOSE,
)


def _split_bits(content: str) -> list[str]:
    """Split tag content on whitespace, keeping quoted strings (``a="x y"``) in one piece."""
    return _BIT_RE.findall(content)


_JINJA_OPENER_RE = re.compile(r"\{(?=[{%#]|\Z)")


def _jinja_text(text: str) -> str:
    """Literal text as Jinja source: a brace that could start a Jinja tag becomes ``{{ '{' }}``.

    A brace ending the text is escaped too, since the next piece of output may start with one.
    """
    return _JINJA_OPENER_RE.sub("{{ '{' }}", text)


# --------------------------------------------------------------------------------------------
# Expressions: Django variables, literals and filter chains
# --------------------------------------------------------------------------------------------

_STRING = r""""[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*'"""
_CONSTANT_RE = re.compile(rf"_\((?:{_STRING})\)|{_STRING}")
_VARIABLE_RE = re.compile(r"[\w.]+")
_NUMBER_RE = re.compile(r"[-+.]?\d[\d.e]*")
_FILTER_RE = re.compile(r"\s*\|\s*(\w+)")
_HTML_SPECIAL = frozenset("<>&'\"")

#: Names that cannot be written as a plain Jinja name (operators, constants, Jinja's own
#: variables); a Django variable with such a name is read with ``dj_var("name")``.
_JINJA_RESERVED = frozenset(
    "and or not in is if else true false none loop self super caller varargs kwargs".split()
)

#: ``forloop.<attribute>`` -> ``loop.<attribute>``
_FORLOOP_ATTRS = {
    "counter": "index",
    "counter0": "index0",
    "revcounter": "revindex",
    "revcounter0": "revindex0",
    "first": "first",
    "last": "last",
}


def _is_plain_name(name: str) -> bool:
    return name.isidentifier() and name not in _JINJA_RESERVED


def _unquote(constant: str) -> str:
    """The value of a Django string constant (``"x"``, ``'x'`` or ``_("x")``)."""
    if constant.startswith("_("):
        constant = constant[2:-1]
    quote_char = constant[0]
    return constant[1:-1].replace("\\" + quote_char, quote_char).replace("\\\\", "\\")


def _literal(value: str) -> str:
    """A Django string constant as a Jinja expression.

    Django treats string constants as safe, so a constant containing HTML special characters is
    marked safe rather than escaped.
    """
    text = repr(value)
    return f"({text}|safe)" if _HTML_SPECIAL.intersection(value) else text


def _number(text: str) -> str | None:
    """A Django numeric literal as a Jinja expression, or None if ``text`` is not a number."""
    try:
        if "." in text or "e" in text.lower():
            if text.endswith("."):
                return None
            number: float = float(text)
            if not math.isfinite(number):
                return None
        else:
            number = int(text)
    except ValueError:
        return None
    return f"({number!r})" if number < 0 else repr(number)


# --------------------------------------------------------------------------------------------
# Translator
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """An open block tag (``if``, ``for``, ``block``...) waiting for its end tag."""

    tag: str  # the Django tag that opened it
    ends: tuple[str, ...]  # Django tags that close it
    close: str  # Jinja source written for the end tag
    lineno: int
    name: str | None = None  # block name, for ``endblock <name>``
    seen_else: bool = False  # an else/empty branch was seen
    out_index: int = -1  # for loops: output piece holding ``{% for %}``
    alias: str | None = None  # for loops: name the loop is saved under for ``forloop.parentloop``


class _Translator:
    """Translates one template: walks the tokens and writes Jinja source to ``self.out``."""

    def __init__(self, source: str, name: str | None) -> None:
        self.source = source
        self.name = name
        self.tokens = _tokenize(source)
        self.pos = 0
        self.out: list[str] = []
        self.frames: list[_Frame] = []

    # -- driver -------------------------------------------------------------------------------

    def translate(self) -> str:
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            self.pos += 1
            if token.kind == _TEXT:
                self.emit(_jinja_text(token.content))
            elif token.kind == _VAR:
                if not token.content:
                    self.error("Empty variable tag", token)
                self.emit(f"{{{{ {self.expression(token.content, token)} }}}}")
            elif token.kind == _BLOCK:
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

    def block_tag(self, token: _Token) -> None:
        bits = _split_bits(token.content)
        if not bits:
            self.error("Empty block tag", token)
        handler = _TAGS.get(bits[0])
        if handler is None:
            self.error(
                f"Unknown template tag '{bits[0]}': not supported by the PlugIt django dialect",
                token,
            )
        handler(self, token, bits[1:])

    # -- helpers used by tag functions ----------------------------------------------------------

    def emit(self, jinja_source: str) -> None:
        self.out.append(jinja_source)

    def emit_value(self, expression: str, target: str | None, token: _Token) -> None:
        """Print ``expression``, or store it in ``target`` (the ``... as var`` forms)."""
        if target is None:
            self.emit(f"{{{{ {expression} }}}}")
        else:
            self.emit(f"{{% set {self.target(target, token)} = {expression} %}}")

    def syntax_error(self, message: str, lineno: int) -> TemplateSyntaxError:
        error = TemplateSyntaxError(message, lineno, self.name)
        error.source = self.source
        return error

    def error(self, message: str, token: _Token) -> NoReturn:
        raise self.syntax_error(message, token.lineno)

    def push(self, frame: _Frame) -> _Frame:
        self.frames.append(frame)
        return frame

    def top(self, token: _Token, *tags: str) -> _Frame:
        """The innermost open frame, which must have been opened by one of ``tags``."""
        if not self.frames or self.frames[-1].tag not in tags:
            self.error(f"'{token.tag_name}' is not allowed here", token)
        return self.frames[-1]

    def loops(self) -> list[_Frame]:
        return [frame for frame in self.frames if frame.tag == "for"]

    def skip_until(self, end: str, opener: _Token) -> list[_Token]:
        """Consume the tokens up to the block tag whose content is ``end``; return them."""
        skipped: list[_Token] = []
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            self.pos += 1
            if token.kind == _BLOCK and token.content == end:
                return skipped
            skipped.append(token)
        self.error(f"Unclosed tag '{opener.tag_name}': expected '{end}'", opener)

    def target(self, name: str, token: _Token) -> str:
        """A variable name assigned by a tag (``for x``, ``with x=``, ``as x``)."""
        if not _is_plain_name(name) or name.startswith("_"):
            self.error(f"Invalid variable name {name!r} in '{token.tag_name}'", token)
        return name

    def assignments(self, bits: list[str], token: _Token) -> str:
        """``a=b c=d`` bits as Jinja ``a=<expr>, c=<expr>``."""
        pairs = []
        for bit in bits:
            name, equals, value = bit.partition("=")
            if not equals or not value:
                self.error(f"'{token.tag_name}' expects name=value pairs, got {bit!r}", token)
            pairs.append(f"{self.target(name, token)}={self.expression(value, token)}")
        return ", ".join(pairs)

    # -- expressions ----------------------------------------------------------------------------

    def expression(self, text: str, token: _Token) -> str:
        """A Django filter expression (``var|filter:arg|...``) as a Jinja expression."""
        base, pos = self.primary(text, 0, token)
        filters = self.filters(text, pos, token)
        return base + "".join(f"|{call}" for call in filters)

    def filter_chain(self, text: str, token: _Token) -> str:
        """A chain of filters without a value (the ``{% filter %}`` tag) as Jinja source."""
        return "|".join(self.filters("|" + text, 0, token))

    def primary(self, text: str, pos: int, token: _Token) -> tuple[str, int]:
        match = _CONSTANT_RE.match(text, pos)
        if match:
            return _literal(_unquote(match.group())), match.end()
        match = _VARIABLE_RE.match(text, pos) or _NUMBER_RE.match(text, pos)
        if match:
            return self.variable(match.group(), token), match.end()
        self.error(f"Could not parse {text[pos:]!r} in {text!r}", token)

    def filters(self, text: str, pos: int, token: _Token) -> list[str]:
        calls = []
        while pos < len(text):
            match = _FILTER_RE.match(text, pos)
            if match is None:
                self.error(f"Could not parse the remainder {text[pos:]!r} of {text!r}", token)
            name, pos = match.group(1), match.end()
            argument = None
            if text.startswith(":", pos):
                argument, pos = self.primary(text, pos + 1, token)
            calls.append(self.filter_call(name, argument, token))
        return calls

    def filter_call(self, name: str, argument: str | None, token: _Token) -> str:
        spec = _FILTERS.get(name)
        if spec is None:
            self.error(
                f"Unknown filter '{name}': not supported by the PlugIt django dialect", token
            )
        if argument is None and spec.arg == _ARG_REQUIRED:
            self.error(f"Filter '{name}' requires an argument", token)
        if argument is not None and spec.arg == _ARG_NONE:
            self.error(f"Filter '{name}' takes no argument", token)
        return spec.jinja_name if argument is None else f"{spec.jinja_name}({argument})"

    def variable(self, text: str, token: _Token) -> str:
        """A Django variable (``a.b.0``) or number as a Jinja expression."""
        number = _number(text)
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
        elif _is_plain_name(head):
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
        if rest and rest[0] in _FORLOOP_ATTRS:
            base, rest = f"{base}.{_FORLOOP_ATTRS[rest[0]]}", rest[1:]
        return base, rest

    def condition(self, bits: list[str], token: _Token) -> str:
        return _IfParser(self, token, bits).parse()


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


class _IfParser:
    """Top-down operator precedence parser for ``{% if %}`` conditions.

    Produces fully parenthesised Jinja; comparisons go through ``dj_compare`` so that they never
    raise (Django treats a failing comparison as false).
    """

    def __init__(self, translator: _Translator, token: _Token, bits: list[str]) -> None:
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


# --------------------------------------------------------------------------------------------
# Tag table: one small function per Django tag; ``args`` are the bits after the tag name.
# --------------------------------------------------------------------------------------------

_TagFunction = Callable[[_Translator, _Token, list[str]], None]


def _split_as(args: list[str]) -> tuple[list[str], str | None]:
    """Split a trailing ``as <name>`` off ``args``."""
    if len(args) >= 2 and args[-2] == "as":
        return args[:-2], args[-1]
    return args, None


def _tag_load(tr: _Translator, token: _Token, args: list[str]) -> None:
    """``{% load lib %}``: tag libraries do not exist here; the tags they gave are built in."""


def _tag_extends(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) != 1:
        tr.error("'extends' takes one argument", token)
    if any(earlier.kind not in (_TEXT, _COMMENT) for earlier in tr.tokens[: tr.pos - 1]):
        tr.error("'extends' must be the first tag in the template", token)
    # Django ignores the text before {% extends %}, Jinja would print it: keep only its lines.
    newlines = sum(piece.count("\n") for piece in tr.out)
    tr.out[:] = ["{#" + "\n" * newlines + "#}"] if newlines else []
    tr.emit(f"{{% extends {tr.expression(args[0], token)} %}}")


def _tag_include(tr: _Translator, token: _Token, args: list[str]) -> None:
    if not args:
        tr.error("'include' takes the template name", token)
    template, options = tr.expression(args[0], token), args[1:]
    only = "only" in options
    options = [option for option in options if option != "only"]
    assignments = ""
    if options:
        if options[0] != "with" or len(options) < 2:
            tr.error(f"Unexpected {options[0]!r} in 'include'", token)
        if only:
            tr.error("'include ... with ... only' is not supported", token)
        assignments = tr.assignments(options[1:], token)
    include = f"{{% include {template}{' without context' if only else ''} %}}"
    tr.emit(f"{{% with {assignments} %}}{include}{{% endwith %}}" if assignments else include)


def _tag_block(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) != 1 or not _is_plain_name(args[0]):
        tr.error("'block' takes one name made of letters, digits and underscores", token)
    # Django blocks see the variables of enclosing for/with tags; Jinja's only when scoped.
    scoped = " scoped" if any(frame.tag in ("for", "with") for frame in tr.frames) else ""
    tr.push(_Frame("block", ("endblock",), "{% endblock %}", token.lineno, name=args[0]))
    tr.emit(f"{{% block {args[0]}{scoped} %}}")


def _tag_end(tr: _Translator, token: _Token, args: list[str]) -> None:
    """Every ``end...`` tag: close the innermost frame, which must be the matching one."""
    name = token.tag_name
    frame = tr.frames[-1] if tr.frames else None
    if frame is None or name not in frame.ends:
        expected = (
            f"; expected '{frame.ends[0]}' to close '{frame.tag}' from line {frame.lineno}"
            if frame
            else ""
        )
        tr.error(f"Unexpected '{name}'{expected}", token)
    if args and frame.tag != "block":
        tr.error(f"'{name}' takes no arguments", token)
    if args and args != [frame.name]:
        tr.error(f"'{name} {' '.join(args)}' does not match 'block {frame.name}'", token)
    tr.frames.pop()
    tr.emit(frame.close)


def _tag_if(tr: _Translator, token: _Token, args: list[str]) -> None:
    condition = tr.condition(args, token)
    tr.push(_Frame("if", ("endif",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if {condition} %}}")


def _tag_elif(tr: _Translator, token: _Token, args: list[str]) -> None:
    frame = tr.top(token, "if")
    if frame.seen_else:
        tr.error("'elif' after 'else'", token)
    tr.emit(f"{{% elif {tr.condition(args, token)} %}}")


def _tag_else(tr: _Translator, token: _Token, args: list[str]) -> None:
    frame = tr.top(token, "if", "ifequal", "ifnotequal", "ifchanged")
    if frame.seen_else or args:
        tr.error("'else' is not allowed here", token)
    frame.seen_else = True
    tr.emit("{% else %}")


def _tag_ifequal(tr: _Translator, token: _Token, args: list[str]) -> None:
    name = token.tag_name
    if len(args) != 2:
        tr.error(f"'{name}' takes two arguments", token)
    left, right = (tr.expression(arg, token) for arg in args)
    operator_ = "==" if name == "ifequal" else "!="
    tr.push(_Frame(name, (f"end{name}",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if dj_compare({left}, {operator_!r}, {right}) %}}")


def _tag_ifchanged(tr: _Translator, token: _Token, args: list[str]) -> None:
    if not tr.loops():
        tr.error("'ifchanged' is only supported inside a 'for' loop", token)
    if not args:
        tr.error("'ifchanged' without arguments is not supported: name the values to watch", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.push(_Frame("ifchanged", ("endifchanged",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if loop.changed({values}) %}}")


def _tag_for(tr: _Translator, token: _Token, args: list[str]) -> None:
    reverse = bool(args) and args[-1] == "reversed"
    if reverse:
        args = args[:-1]
    if len(args) < 3 or args[-2] != "in":
        tr.error("'for' statements should use the format 'for x in y'", token)
    targets = [tr.target(name, token) for name in re.split(r"\s*,\s*", " ".join(args[:-2]))]
    sequence = tr.expression(args[-1], token)
    iterable = f"dj_iter({sequence}, reverse=True)" if reverse else f"dj_iter({sequence})"
    frame = tr.push(_Frame("for", ("endfor",), "{% endfor %}", token.lineno))
    frame.out_index = len(tr.out)
    tr.emit(f"{{% for {', '.join(targets)} in {iterable} %}}")


def _tag_empty(tr: _Translator, token: _Token, args: list[str]) -> None:
    frame = tr.top(token, "for")
    if frame.seen_else or args:
        tr.error("'empty' is not allowed here", token)
    frame.seen_else = True
    tr.emit("{% else %}")


def _tag_cycle(tr: _Translator, token: _Token, args: list[str]) -> None:
    if not tr.loops():
        tr.error("'cycle' is only supported inside a 'for' loop", token)
    if "as" in args:
        tr.error("Named cycles ('cycle ... as name') are not supported", token)
    if len(args) == 1 and "," in args[0] and args[0][0] not in "\"'":
        values = [_literal(value) for value in args[0].split(",")]  # old {% cycle a,b %}
    elif len(args) >= 2:
        values = [tr.expression(arg, token) for arg in args]
    else:
        tr.error("'cycle' needs at least two values", token)
    tr.emit(f"{{{{ loop.cycle({', '.join(values)}) }}}}")


def _tag_with(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) == 3 and args[1] == "as":  # old {% with value as name %}
        args = [f"{args[2]}={args[0]}"]
    if not args:
        tr.error("'with' expects name=value pairs", token)
    assignments = tr.assignments(args, token)
    tr.push(_Frame("with", ("endwith",), "{% endwith %}", token.lineno))
    tr.emit(f"{{% with {assignments} %}}")


def _tag_firstof(tr: _Translator, token: _Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if not args:
        tr.error("'firstof' takes at least one argument", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit_value(f"dj_firstof({values})", target, token)


def _tag_widthratio(tr: _Translator, token: _Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 3:
        tr.error("'widthratio' takes three arguments (optionally followed by 'as name')", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit_value(f"dj_widthratio({values})", target, token)


def _tag_now(tr: _Translator, token: _Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 1:
        tr.error("'now' takes one argument: the format", token)
    tr.emit_value(f"dj_now({tr.expression(args[0], token)})", target, token)


def _tag_regroup(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) != 5 or args[1] != "by" or args[3] != "as":
        tr.error("'regroup' expects: regroup <list> by <attribute> as <name>", token)
    key = args[2]
    if not re.fullmatch(r"\w+(\.\w+)*", key) or key.startswith("_") or "._" in key:
        tr.error(f"'regroup' groups by a plain attribute path, not {key!r}", token)
    source = tr.expression(args[0], token)
    tr.emit(f"{{% set {tr.target(args[4], token)} = dj_regroup({source}, {key!r}) %}}")


def _tag_spaceless(tr: _Translator, token: _Token, args: list[str]) -> None:
    tr.push(_Frame("spaceless", ("endspaceless",), "{% endfilter %}", token.lineno))
    tr.emit("{% filter dj_spaceless %}")


def _tag_autoescape(tr: _Translator, token: _Token, args: list[str]) -> None:
    if args not in (["on"], ["off"]):
        tr.error("'autoescape' takes 'on' or 'off'", token)
    tr.push(_Frame("autoescape", ("endautoescape",), "{% endautoescape %}", token.lineno))
    tr.emit(f"{{% autoescape {'true' if args == ['on'] else 'false'} %}}")


def _tag_filter(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) != 1:
        tr.error("'filter' takes one filter chain", token)
    chain = tr.filter_chain(args[0], token)
    tr.push(_Frame("filter", ("endfilter",), "{% endfilter %}", token.lineno))
    tr.emit(f"{{% filter {chain} %}}")


def _tag_comment(tr: _Translator, token: _Token, args: list[str]) -> None:
    skipped = tr.skip_until("endcomment", token)
    newlines = sum(t.raw.count("\n") for t in skipped)
    if newlines:  # keep the line count: an empty Jinja comment spanning the same lines
        tr.emit("{#" + "\n" * newlines + "#}")


def _tag_verbatim(tr: _Translator, token: _Token, args: list[str]) -> None:
    skipped = tr.skip_until("end" + token.content, token)
    tr.emit(_jinja_text("".join(t.raw for t in skipped)))


_TEMPLATETAGS = {
    "openblock": "{%",
    "closeblock": "%}",
    "openvariable": "{{",
    "closevariable": "}}",
    "openbrace": "{",
    "closebrace": "}",
    "opencomment": "{#",
    "closecomment": "#}",
}


def _tag_templatetag(tr: _Translator, token: _Token, args: list[str]) -> None:
    if len(args) != 1 or args[0] not in _TEMPLATETAGS:
        tr.error(f"'templatetag' takes one of: {', '.join(_TEMPLATETAGS)}", token)
    tr.emit(_jinja_text(_TEMPLATETAGS[args[0]]))


def _tag_csrf_token(tr: _Translator, token: _Token, args: list[str]) -> None:
    tr.emit("{{ csrf_field }}")


def _tag_static(tr: _Translator, token: _Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 1:
        tr.error("'static' takes one argument: the path", token)
    tr.emit_value(f"dj_static({tr.expression(args[0], token)})", target, token)


def _tag_trans(tr: _Translator, token: _Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if not args:
        tr.error(f"'{token.tag_name}' takes the text to translate", token)
    options = args[1:]
    if options[:1] == ["noop"]:
        options = options[1:]
    if options[:1] == ["context"] and len(options) == 2:
        options = []
    if options:
        tr.error(f"Unexpected {options[0]!r} in '{token.tag_name}'", token)
    tr.emit_value(tr.expression(args[0], token), target, token)


def _tag_blocktrans(tr: _Translator, token: _Token, args: list[str]) -> None:
    """``{% blocktrans [with a=b ...] [trimmed] %}...{{ a }}...{% endblocktrans %}``.

    Translation catalogues do not exist here: the text is output as written.
    """
    name = token.tag_name
    assignments, trimmed, i = "", False, 0
    while i < len(args):
        if args[i] == "trimmed":
            trimmed, i = True, i + 1
        elif args[i] == "context" and i + 1 < len(args):
            i += 2
        elif args[i] == "with":
            j = i + 1
            while j < len(args) and "=" in args[j]:
                j += 1
            assignments, i = tr.assignments(args[i + 1 : j], token), j
        else:
            tr.error(f"'{name}' option {args[i]!r} is not supported", token)
    end = "end" + name
    parts: list[str] = []  # text, with each variable as "\0<jinja expression>\0"
    while True:
        if tr.pos >= len(tr.tokens):
            tr.error(f"Unclosed tag '{name}': expected '{end}'", token)
        inner = tr.tokens[tr.pos]
        tr.pos += 1
        if inner.kind == _BLOCK and inner.content == end:
            break
        if inner.kind == _BLOCK:
            tr.error(
                f"'{name}' does not allow other block tags inside it ({inner.tag_name!r})", inner
            )
        if inner.kind == _VAR:
            if not re.fullmatch(r"\w+", inner.content):
                tr.error(f"'{name}' allows only plain variable names, not {inner.content!r}", inner)
            parts.append(f"\0{tr.variable(inner.content, inner)}\0")
        elif inner.kind == _TEXT:
            parts.append(inner.content.replace("\0", ""))
    message = "".join(parts)
    newlines = message.count("\n")
    if trimmed:
        message = re.sub(r"\s*\n\s*", " ", message.strip())
    pieces = message.split("\0")  # text, variable, text, variable, ..., text
    body = "".join(
        f"{{{{ {piece} }}}}" if index % 2 else _jinja_text(piece)
        for index, piece in enumerate(pieces)
    )
    lost = newlines - message.count("\n")
    if lost:
        body += "{#" + "\n" * lost + "#}"
    tr.emit(f"{{% with {assignments} %}}{body}{{% endwith %}}" if assignments else body)


def _tag_plugit_include(tr: _Translator, token: _Token, args: list[str]) -> None:
    """``{% plugitInclude "action/path" %}``: the template of another action, same context."""
    if len(args) != 1:
        tr.error("'plugitInclude' takes exactly one argument: the action path", token)
    tr.emit(f"{{{{ plugit_include({tr.expression(args[0], token)}) }}}}")


def _tag_plugit_fragment(tr: _Translator, token: _Token, args: list[str]) -> None:
    """``{% plugitFragment "service" "action/path" %}``: an action of any mounted service,
    rendered without the layout (docs/fragments.md)."""
    if len(args) not in (1, 2):
        tr.error("'plugitFragment' expects: plugitFragment <service> [<action path>]", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit(f"{{{{ plugit_fragment({values}) }}}}")


def _tag_plugit_get_user(tr: _Translator, token: _Token, args: list[str]) -> None:
    """``{% plugitGetUser pk as var %}``: look a user up through the proxy."""
    if len(args) != 3 or args[1] != "as":
        tr.error("'plugitGetUser' expects: plugitGetUser <pk> as <name>", token)
    pk = tr.expression(args[0], token)
    tr.emit(f"{{% set {tr.target(args[2], token)} = plugit_get_user({pk}) %}}")


def _tag_url(tr: _Translator, token: _Token, args: list[str]) -> None:
    tr.error("{% url %} is not available to PlugIt services; build links from ebuio_baseUrl", token)


_TAGS: dict[str, _TagFunction] = {
    # structure
    "extends": _tag_extends,
    "block": _tag_block,
    "include": _tag_include,
    "load": _tag_load,
    # conditions and loops
    "if": _tag_if,
    "elif": _tag_elif,
    "else": _tag_else,
    "ifequal": _tag_ifequal,
    "ifnotequal": _tag_ifequal,
    "ifchanged": _tag_ifchanged,
    "for": _tag_for,
    "empty": _tag_empty,
    "cycle": _tag_cycle,
    "with": _tag_with,
    # values
    "firstof": _tag_firstof,
    "widthratio": _tag_widthratio,
    "now": _tag_now,
    "regroup": _tag_regroup,
    "static": _tag_static,
    "csrf_token": _tag_csrf_token,
    "templatetag": _tag_templatetag,
    # output control
    "spaceless": _tag_spaceless,
    "autoescape": _tag_autoescape,
    "filter": _tag_filter,
    "comment": _tag_comment,
    "verbatim": _tag_verbatim,
    # i18n (no catalogues: text is output as written)
    "trans": _tag_trans,
    "translate": _tag_trans,
    "blocktrans": _tag_blocktrans,
    "blocktranslate": _tag_blocktrans,
    # plugit_tags
    "plugitInclude": _tag_plugit_include,
    "plugitGetUser": _tag_plugit_get_user,
    "plugitFragment": _tag_plugit_fragment,
    # refused with an explanation
    "url": _tag_url,
}
_TAGS.update(
    dict.fromkeys(
        (
            "endblock endif endifequal endifnotequal endifchanged endfor endwith endspaceless "
            "endautoescape endfilter"
        ).split(),
        _tag_end,
    )
)


# --------------------------------------------------------------------------------------------
# Runtime helpers: globals used by translated code
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _lookup(env: Environment, obj: Any, name: str) -> Any:
    """One Django lookup step: ``obj[name]``, then the attribute, then ``obj[int(name)]``.

    Returns ``_MISSING`` when nothing is found. In a sandbox an attribute is read only if
    ``is_safe_attribute`` allows it (else SecurityError), and is then fetched through
    ``env.getattr`` so that the sandbox's wrappers (``str.format``) apply. Underscore names are
    never read.
    """
    try:
        return obj[name]
    except (TypeError, LookupError, AttributeError, ValueError):
        pass
    if name.startswith("_"):
        raise SecurityError(f"access to attribute {name!r} of {type(obj).__name__!r} is unsafe")
    try:
        value = getattr(obj, name)
    except AttributeError:
        pass
    else:
        if not env.sandboxed:
            return value
        if not env.is_safe_attribute(obj, name, value):  # type: ignore[attr-defined]
            raise SecurityError(
                f"access to attribute {name!r} of {type(obj).__name__!r} object is unsafe"
            )
        return env.getattr(obj, name)
    if name.isdigit():
        try:
            return obj[int(name)]
        except (TypeError, LookupError, AttributeError, ValueError):
            pass
    return _MISSING


def _call_if_callable(context: Context, value: Any) -> Any:
    """Django calls a callable it finds during a lookup, if it needs no argument."""
    if not callable(value) or isinstance(value, (type, Undefined)):
        return value
    if getattr(value, "do_not_call_in_templates", False):
        return value
    env = context.environment
    if getattr(value, "alters_data", False):
        return env.undefined(hint="a method that alters data is not called")
    try:
        inspect.signature(value).bind()
    except TypeError:
        return env.undefined(hint="a callable that needs arguments is not called")
    except ValueError:
        pass  # no signature available: try the call
    if env.sandboxed:
        return env.call(context, value)  # type: ignore[attr-defined]
    return context.call(value)


@pass_context
def dj_get(context: Context, obj: Any, *names: str) -> Any:
    """``obj.name1.name2`` with Django's lookup rules; undefined when a step finds nothing."""
    env = context.environment
    for name in names:
        if isinstance(obj, Undefined):
            return obj
        value = _lookup(env, obj, str(name))
        if value is _MISSING:
            return env.undefined(obj=obj, name=name)
        obj = _call_if_callable(context, value)
    return obj


@pass_context
def dj_var(context: Context, name: str) -> Any:
    """A context variable whose name Jinja reserves (``loop``, ``true``, ``not``...)."""
    value = context.resolve_or_missing(name)
    return context.environment.undefined(name=name) if value is missing else value


def _none_if_undefined(value: Any) -> Any:
    return None if isinstance(value, Undefined) else value


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
    "in": lambda left, right: left in right,
    "not in": lambda left, right: left not in right,
    "is": operator.is_,
    "is not": operator.is_not,
}


def dj_compare(left: Any, op: str, right: Any) -> bool:
    """A Django ``{% if %}`` comparison: missing values are None, errors mean False."""
    try:
        return bool(_COMPARISONS[op](_none_if_undefined(left), _none_if_undefined(right)))
    except (TypeError, ValueError):
        return False


def dj_iter(value: Any, reverse: bool = False) -> list[Any]:
    """The sequence of a ``{% for %}`` loop: nothing for a missing or None value."""
    if value is None or isinstance(value, Undefined):
        return []
    items = list(value)
    if reverse:
        items.reverse()
    return items


def dj_widthratio(value: Any, max_value: Any, max_width: Any) -> str:
    """``{% widthratio %}``: ``round(value / max_value * max_width)``, "0" when max is 0."""
    try:
        width = int(_none_if_undefined(max_width))
    except (TypeError, ValueError):
        raise TemplateRuntimeError("widthratio final argument must be a number") from None
    try:
        ratio = float(_none_if_undefined(value)) / float(_none_if_undefined(max_value)) * width
        return str(round(ratio))
    except ZeroDivisionError:
        return "0"
    except (TypeError, ValueError, OverflowError):
        return ""


def dj_firstof(*values: Any) -> Any:
    """``{% firstof %}``: the first true value, else an empty string."""
    return next((value for value in values if value), "")


def dj_now(format_string: str) -> str:
    """``{% now "format" %}``: the current local time in a Django date format."""
    return _format_date(datetime.now(), str(format_string))


class _Group(NamedTuple):
    grouper: Any
    list: list[Any]


@pass_environment
def dj_regroup(env: Environment, value: Any, path: str) -> list[_Group]:
    """``{% regroup %}``: consecutive items with the same ``path`` value, as (grouper, list)."""
    groups: list[_Group] = []
    for item in dj_iter(value):
        key: Any = item
        for name in path.split("."):
            key = _lookup(env, key, name)
            if key is _MISSING:
                key = None
                break
        if groups and groups[-1].grouper == key:
            groups[-1].list.append(item)
        else:
            groups.append(_Group(key, [item]))
    return groups


@pass_context
def dj_static(context: Context, path: Any) -> str:
    """``{% static "path" %}``: the path under the proxy's ``STATIC_URL``."""
    base = context.resolve_or_missing("STATIC_URL")
    base = "" if base is missing or base is None or isinstance(base, Undefined) else str(base)
    return base + quote(_text(path), safe="/~!*()'")


_GLOBALS: dict[str, Any] = {
    "dj_get": dj_get,
    "dj_var": dj_var,
    "dj_compare": dj_compare,
    "dj_iter": dj_iter,
    "dj_widthratio": dj_widthratio,
    "dj_firstof": dj_firstof,
    "dj_now": dj_now,
    "dj_regroup": dj_regroup,
    "dj_static": dj_static,
}


# --------------------------------------------------------------------------------------------
# Runtime helpers: Django date formats
# --------------------------------------------------------------------------------------------

_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_MONTHS_AP = "Jan. Feb. March April May June July Aug. Sept. Oct. Nov. Dec.".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_NAMED_FORMATS = {
    "DATE_FORMAT": "N j, Y",
    "DATETIME_FORMAT": "N j, Y, P",
    "SHORT_DATE_FORMAT": "m/d/Y",
    "SHORT_DATETIME_FORMAT": "m/d/Y P",
    "TIME_FORMAT": "P",
    "YEAR_MONTH_FORMAT": "F Y",
    "MONTH_DAY_FORMAT": "F j",
}


def _hour12(v: Any) -> int:
    return v.hour % 12 or 12


def _am_pm(v: Any) -> str:
    return "a.m." if v.hour < 12 else "p.m."


def _short_time(v: Any) -> str:
    return str(_hour12(v)) if v.minute == 0 else f"{_hour12(v)}:{v.minute:02d}"


def _time_p(v: Any) -> str:
    if v.minute == 0 and v.hour in (0, 12):
        return "midnight" if v.hour == 0 else "noon"
    return f"{_short_time(v)} {_am_pm(v)}"


def _ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _offset(v: Any) -> str:
    delta = v.utcoffset()
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}{minutes:02d}"


def _rfc5322(v: datetime) -> str:
    return _format_date(v if v.tzinfo else v.replace(tzinfo=timezone.utc), "D, d M Y H:i:s O")


def _epoch(v: datetime) -> str:
    return str(int(v.timestamp()) if v.tzinfo else calendar.timegm(v.timetuple()))


# Format character -> function of a datetime (or a time, for the time characters).
_DATE_CHARS: dict[str, Callable[[Any], str]] = {
    "d": lambda v: f"{v.day:02d}",
    "j": lambda v: str(v.day),
    "D": lambda v: _DAYS[v.weekday()][:3],
    "l": lambda v: _DAYS[v.weekday()],
    "S": lambda v: _ordinal(v.day),
    "w": lambda v: str((v.weekday() + 1) % 7),
    "z": lambda v: str(v.timetuple().tm_yday),
    "W": lambda v: str(v.isocalendar()[1]),
    "o": lambda v: str(v.isocalendar()[0]),
    "m": lambda v: f"{v.month:02d}",
    "n": lambda v: str(v.month),
    "M": lambda v: _MONTHS[v.month - 1][:3],
    "b": lambda v: _MONTHS[v.month - 1][:3].lower(),
    "F": lambda v: _MONTHS[v.month - 1],
    "E": lambda v: _MONTHS[v.month - 1],
    "N": lambda v: _MONTHS_AP[v.month - 1],
    "t": lambda v: str(calendar.monthrange(v.year, v.month)[1]),
    "L": lambda v: str(calendar.isleap(v.year)),
    "y": lambda v: f"{v.year % 100:02d}",
    "Y": lambda v: f"{v.year:04d}",
    "c": lambda v: v.isoformat(),
    "r": _rfc5322,
    "U": _epoch,
}
_TIME_CHARS: dict[str, Callable[[Any], str]] = {
    "a": _am_pm,
    "A": lambda v: "AM" if v.hour < 12 else "PM",
    "f": _short_time,
    "g": lambda v: str(_hour12(v)),
    "G": lambda v: str(v.hour),
    "h": lambda v: f"{_hour12(v):02d}",
    "H": lambda v: f"{v.hour:02d}",
    "i": lambda v: f"{v.minute:02d}",
    "s": lambda v: f"{v.second:02d}",
    "u": lambda v: f"{v.microsecond:06d}",
    "P": _time_p,
    "e": lambda v: str(getattr(v.tzinfo, "key", None) or v.tzname() or ""),
    "T": lambda v: v.tzname() or "",
    "I": lambda v: "" if v.tzinfo is None else ("1" if v.dst() else "0"),
    "O": _offset,
    "Z": lambda v: "" if v.utcoffset() is None else str(int(v.utcoffset().total_seconds())),
}


class _FormatError(ValueError):
    """A format character that does not apply to the value (a time of a date...)."""


def _format_date(value: date | time, format_string: str) -> str:
    """Format a date, datetime or time with Django's ``date`` format characters."""
    only_date = False
    if isinstance(value, date) and not isinstance(value, datetime):
        only_date = True
        value = datetime(value.year, value.month, value.day)
    out = []
    chars = iter(format_string)
    for char in chars:
        if char == "\\":
            out.append(next(chars, ""))
        elif char in _TIME_CHARS:
            if only_date:
                raise _FormatError(char)
            out.append(_TIME_CHARS[char](value))
        elif char in _DATE_CHARS:
            if isinstance(value, time):
                raise _FormatError(char)
            out.append(_DATE_CHARS[char](value))
        else:
            out.append(char)
    return "".join(out)


def _to_date(value: Any) -> date | time | None:
    """A date, datetime or time from a value: itself, an ISO 8601 string or a UTC timestamp."""
    if isinstance(value, (date, time)):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsers: tuple[Callable[[str], date | time], ...] = (
            date.fromisoformat if len(text) == 10 else datetime.fromisoformat,
            time.fromisoformat,
        )
        for parse in parsers:
            try:
                return parse(text)
            except ValueError:
                continue
    return None


# --------------------------------------------------------------------------------------------
# Runtime helpers: Django filters
# --------------------------------------------------------------------------------------------


def _value(value: Any) -> Any:
    """A filter's input: Django gives filters an empty string for a missing variable."""
    return "" if isinstance(value, Undefined) else value


def _text(value: Any) -> str:
    """A filter's input as text (Django's ``stringfilter``)."""
    return str(_value(value))


def _like(value: Any, result: str) -> str:
    """``result`` is safe HTML if ``value`` was (Django's ``is_safe`` filters)."""
    return Markup(result) if isinstance(value, Markup) else result  # noqa: S704 input was safe


def _escape_input(eval_ctx: EvalContext, value: Any) -> bool:
    return bool(eval_ctx.autoescape) and not isinstance(value, Markup)


def dj_add(value: Any, arg: Any) -> Any:
    value = _value(value)
    try:
        return int(value) + int(arg)
    except (TypeError, ValueError):
        pass
    if isinstance(value, str) and isinstance(arg, str) and not isinstance(value, Markup):
        return value + str(arg)  # plain text: escaped on output, like Django
    try:
        return value + arg
    except Exception:
        return ""


def dj_addslashes(value: Any) -> Any:
    text = _text(value).replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return _like(value, text)


def dj_capfirst(value: Any) -> Any:
    text = _text(value)
    return _like(value, text[:1].upper() + text[1:])


def dj_center(value: Any, width: Any) -> str:
    return _text(value).center(int(width))


def dj_ljust(value: Any, width: Any) -> str:
    return _text(value).ljust(int(width))


def dj_rjust(value: Any, width: Any) -> str:
    return _text(value).rjust(int(width))


def dj_cut(value: Any, arg: Any) -> Any:
    return _like(value, _text(value).replace(str(arg), ""))


def dj_date(value: Any, format_string: Any = None) -> str:
    """Django's ``date``: Django format characters; accepts ISO strings and UTC timestamps."""
    parsed = _to_date(_value(value))
    if parsed is None:
        return ""
    format_string = str(format_string or "DATE_FORMAT")
    try:
        return _format_date(parsed, _NAMED_FORMATS.get(format_string, format_string))
    except _FormatError:
        return ""


def dj_time(value: Any, format_string: Any = None) -> str:
    """Django's ``time``: like ``date`` but only time format characters are allowed."""
    parsed = _to_date(_value(value))
    if isinstance(parsed, datetime):
        parsed = parsed.timetz()
    if not isinstance(parsed, time):
        return ""
    format_string = str(format_string or "TIME_FORMAT")
    try:
        return _format_date(parsed, _NAMED_FORMATS.get(format_string, format_string))
    except _FormatError:
        return ""


def dj_default(value: Any, default: Any) -> Any:
    return _value(value) or default


def dj_default_if_none(value: Any, default: Any) -> Any:
    value = _value(value)
    return default if value is None else value


@pass_environment
def dj_dictsort(env: Environment, value: Any, path: Any, reverse: bool = False) -> Any:
    """Sort a list of dicts (or objects) by a key path; "" when an item lacks the key."""

    def key(item: Any) -> Any:
        for name in str(path).split("."):
            item = _lookup(env, item, name)
            if item is _MISSING:
                raise LookupError(name)
        return item

    try:
        return sorted(_value(value), key=key, reverse=reverse)
    except (TypeError, LookupError):
        return ""


@pass_environment
def dj_dictsortreversed(env: Environment, value: Any, path: Any) -> Any:
    return dj_dictsort(env, value, path, reverse=True)


def dj_divisibleby(value: Any, arg: Any) -> bool:
    try:
        return int(_value(value)) % int(arg) == 0
    except (TypeError, ValueError, ZeroDivisionError):
        return False


_JS_ESCAPES = {ord(char): f"\\u{ord(char):04X}" for char in "\\'\"<>&=-;`\u2028\u2029"}
_JS_ESCAPES.update({code: f"\\u{code:04X}" for code in range(32)})


def dj_escapejs(value: Any) -> Markup:
    """Escape text for use inside a JavaScript string literal."""
    return Markup(_text(value).translate(_JS_ESCAPES))  # noqa: S704 no HTML characters left


def dj_filesizeformat(value: Any) -> str:
    """A byte count as "13 KB", "4.1 MB"... (non-breaking space, as Django)."""
    try:
        size = float(_value(value))
    except (TypeError, ValueError):
        return "0\xa0bytes"
    sign, size = ("-" if size < 0 else ""), abs(size)
    if size < 1024:
        text = "1 byte" if size == 1 else f"{int(size)} bytes"
    else:
        for exponent, unit in enumerate(("KB", "MB", "GB", "TB", "PB"), start=1):
            if size < 1024 ** (exponent + 1) or unit == "PB":
                text = f"{size / 1024**exponent:.1f} {unit}"
                break
    return (sign + text).replace(" ", "\xa0")


def dj_first(value: Any) -> Any:
    try:
        return _value(value)[0]
    except (IndexError, KeyError, TypeError):
        return ""


def dj_last(value: Any) -> Any:
    try:
        return _value(value)[-1]
    except (IndexError, KeyError, TypeError):
        return ""


def dj_floatformat(value: Any, arg: Any = -1) -> str:
    """Django's ``floatformat``: round half up to ``|arg|`` places; a negative ``arg`` drops
    the decimals of whole numbers; a ``g`` suffix groups thousands."""
    value = _value(value)
    spec = str(arg)
    grouping = False
    while spec and spec[-1] in "gu":
        grouping, spec = grouping or spec[-1] == "g", spec[:-1]
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        try:
            number = decimal.Decimal(str(float(value)))
        except (TypeError, ValueError, decimal.InvalidOperation):
            return ""
    try:
        places = int(spec)
    except ValueError:
        return str(value)
    if not number.is_finite():
        return str(value)
    if places < 0 and number == number.to_integral_value():
        places = 0
    precision = decimal.Context(prec=max(28, number.adjusted() + abs(places) + 2))
    rounded = number.quantize(
        decimal.Decimal(1).scaleb(-abs(places)),
        rounding=decimal.ROUND_HALF_UP,
        context=precision,
    )
    if rounded.is_zero():
        rounded = abs(rounded)  # no "-0.0"
    return format(rounded, ",f" if grouping else "f")


@pass_eval_context
def dj_join(eval_ctx: EvalContext, value: Any, separator: Any) -> Any:
    value = _value(value)
    try:
        items = list(value)
    except TypeError:
        return value
    if eval_ctx.autoescape:
        return escape(separator).join(items)  # escapes each item that is not safe
    return str(separator).join(str(item) for item in items)


def dj_length(value: Any) -> int:
    try:
        return len(_value(value))
    except (TypeError, ValueError):
        return 0


def dj_length_is(value: Any, length: Any) -> Any:
    try:
        return len(_value(value)) == int(length)
    except (TypeError, ValueError):
        return ""


@pass_eval_context
def dj_linebreaks(eval_ctx: EvalContext, value: Any) -> Markup:
    """Paragraphs (``<p>``) for blank-line separated text, ``<br>`` for single newlines."""
    do_escape = _escape_input(eval_ctx, value)
    text = re.sub(r"\r\n|\r", "\n", _text(value))
    paragraphs = []
    for paragraph in re.split(r"\n{2,}", text):
        paragraph = str(escape(paragraph)) if do_escape else paragraph
        paragraphs.append(f"<p>{paragraph.replace(chr(10), '<br>')}</p>")
    return Markup("\n\n".join(paragraphs))  # noqa: S704 text escaped above


@pass_eval_context
def dj_linebreaksbr(eval_ctx: EvalContext, value: Any) -> Markup:
    text = re.sub(r"\r\n|\r", "\n", _text(value))
    if _escape_input(eval_ctx, value):
        text = str(escape(text))
    return Markup(text.replace("\n", "<br>"))  # noqa: S704 text escaped above


def dj_lower(value: Any) -> str:
    return _text(value).lower()


def dj_upper(value: Any) -> str:
    return _text(value).upper()


def dj_make_list(value: Any) -> list[str]:
    return list(_text(value))


def dj_pluralize(value: Any, suffixes: Any = "s") -> str:
    """``"s"`` (or the plural of ``"y,ies"``) unless the value, or its length, is 1."""
    text = str(suffixes)
    bits = (text if "," in text else "," + text).split(",")
    if len(bits) > 2:
        return ""
    singular, plural = bits
    value = _value(value)
    try:
        return singular if float(value) == 1 else plural
    except ValueError:
        return ""
    except TypeError:
        pass
    try:
        return singular if len(value) == 1 else plural
    except TypeError:
        return ""


def dj_random(value: Any) -> Any:
    try:
        return random.choice(_value(value))  # noqa: S311 not for security
    except (IndexError, TypeError, KeyError):
        return ""


def dj_safeseq(value: Any) -> list[Markup]:
    return [Markup(str(item)) for item in dj_iter(value)]  # noqa: S704 the filter's purpose


def dj_slice(value: Any, spec: Any) -> Any:
    """Python slicing with Django's argument: ``"2"`` is ``[:2]``, ``"1:"``, ``"::2"``..."""
    value = _value(value)
    try:
        bounds = [int(bit) if bit.strip() else None for bit in str(spec).split(":")]
        return value[slice(*bounds)]
    except (TypeError, ValueError):
        return value


def dj_slugify(value: Any) -> str:
    text = unicodedata.normalize("NFKD", _text(value)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text.lower())
    return re.sub(r"[-\s]+", "-", text).strip("-_")


def dj_spaceless(value: Any) -> Any:
    """Remove whitespace between HTML tags (the ``{% spaceless %}`` tag)."""
    return _like(value, re.sub(r">\s+<", "><", _text(value).strip()))


def dj_stringformat(value: Any, spec: Any) -> str:
    """Python ``%`` formatting: ``stringformat:"03d"`` is ``"%03d" % value``."""
    value = _value(value)
    if isinstance(value, tuple):
        value = str(value)
    try:
        formatted: str = ("%" + str(spec)) % value
        return formatted
    except (TypeError, ValueError, KeyError):
        return ""


_TAG_RE = re.compile(r"<[^<>]*>")


def dj_striptags(value: Any) -> Any:
    text = _text(value)
    while True:
        stripped = _TAG_RE.sub("", text)
        if stripped == text:
            return _like(value, text)
        text = stripped


def dj_title(value: Any) -> str:
    text = _text(value).title()
    text = re.sub(r"([a-z])'([A-Z])", lambda m: m.group(0).lower(), text)  # "They'Re" -> "They're"
    return re.sub(r"\d([A-Z])", lambda m: m.group(0).lower(), text)  # "1St" -> "1st"


def dj_truncatechars(value: Any, length: Any) -> Any:
    """At most ``length`` characters, the last one being "…" when text was cut."""
    try:
        limit = int(length)
    except (TypeError, ValueError):
        return value
    text = unicodedata.normalize("NFC", _text(value))
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return _like(value, text)
    return _like(value, text[: limit - 1] + "…")


def dj_truncatewords(value: Any, count: Any) -> Any:
    """The first ``count`` words, followed by " …" when text was cut."""
    try:
        limit = int(count)
    except (TypeError, ValueError):
        return value
    if limit <= 0:
        return ""
    words = _text(value).split()
    text = " ".join(words[:limit]) + (" …" if len(words) > limit else "")
    return _like(value, text)


def dj_urlencode(value: Any, safe: Any = None) -> str:
    return quote(_text(value), safe="/" if safe is None else str(safe))


_URL_RE = re.compile(r"https?://\S+", re.IGNORECASE)
_BARE_URL_RE = re.compile(
    r"(www\.\S+|[\w.-]+\.(com|edu|gov|int|mil|net|org)(/\S*)?)", re.IGNORECASE
)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_LEADING = "(<['\""
_TRAILING = ".,:;!)>'\""


@pass_eval_context
def dj_urlize(eval_ctx: EvalContext, value: Any) -> Markup:
    """Links for the URLs (``http://``, ``www.``, ``x.com``) and e-mail addresses in text."""
    do_escape = _escape_input(eval_ctx, value)
    out = []
    for word in re.split(r"(\s+)", _text(value)):
        lead, middle, trail = "", word, ""
        while middle and middle[0] in _LEADING:
            lead, middle = lead + middle[0], middle[1:]
        while middle and middle[-1] in _TRAILING:
            middle, trail = middle[:-1], middle[-1] + trail
        if _URL_RE.fullmatch(middle):
            href, rel = middle, ' rel="nofollow"'
        elif _BARE_URL_RE.fullmatch(middle):
            href, rel = "http://" + middle, ' rel="nofollow"'
        elif _EMAIL_RE.fullmatch(middle):
            href, rel = "mailto:" + middle, ""
        else:
            out.append(str(escape(word)) if do_escape else word)
            continue
        if do_escape:
            lead, middle, trail = str(escape(lead)), str(escape(middle)), str(escape(trail))
        out.append(f'{lead}<a href="{escape(href)}"{rel}>{middle}</a>{trail}')
    return Markup("".join(out))  # noqa: S704 text escaped above


def dj_url_target_blank(value: Any) -> Any:
    """PlugIt's filter: every link opens in a new window (``<a `` -> ``<a target="_blank" ``)."""
    return _like(value, _text(value).replace("<a ", '<a target="_blank" '))


def dj_wordcount(value: Any) -> int:
    return len(_text(value).split())


def dj_yesno(value: Any, choices: Any = "yes,no,maybe") -> Any:
    """``"yes"``, ``"no"`` or ``"maybe"`` (for None), or the given comma-separated choices."""
    bits = str(choices).split(",")
    if len(bits) < 2:
        return value
    yes, no, maybe = [*bits, bits[1]][:3]
    value = _value(value)
    if value is None:
        return maybe
    return yes if value else no


# --------------------------------------------------------------------------------------------
# Filter table
# --------------------------------------------------------------------------------------------

_ARG_NONE, _ARG_OPTIONAL, _ARG_REQUIRED = "none", "optional", "required"


class _Filter(NamedTuple):
    jinja_name: str  # name used in translated code
    arg: str  # _ARG_NONE, _ARG_OPTIONAL or _ARG_REQUIRED
    function: Callable[..., Any] | None  # registered by install(); None for Jinja builtins


def _dj(function: Callable[..., Any], arg: str = _ARG_NONE) -> _Filter:
    return _Filter(function.__name__, arg, function)


_FILTERS: dict[str, _Filter] = {
    # Jinja's own filters already behave like Django's
    "safe": _Filter("safe", _ARG_NONE, None),
    "escape": _Filter("escape", _ARG_NONE, None),
    "force_escape": _Filter("forceescape", _ARG_NONE, None),
    # values
    "default": _dj(dj_default, _ARG_REQUIRED),
    "default_if_none": _dj(dj_default_if_none, _ARG_REQUIRED),
    "yesno": _dj(dj_yesno, _ARG_OPTIONAL),
    "pluralize": _dj(dj_pluralize, _ARG_OPTIONAL),
    # numbers and dates
    "add": _dj(dj_add, _ARG_REQUIRED),
    "divisibleby": _dj(dj_divisibleby, _ARG_REQUIRED),
    "floatformat": _dj(dj_floatformat, _ARG_OPTIONAL),
    "filesizeformat": _dj(dj_filesizeformat),
    "date": _dj(dj_date, _ARG_OPTIONAL),
    "time": _dj(dj_time, _ARG_OPTIONAL),
    # text
    "lower": _dj(dj_lower),
    "upper": _dj(dj_upper),
    "title": _dj(dj_title),
    "capfirst": _dj(dj_capfirst),
    "cut": _dj(dj_cut, _ARG_REQUIRED),
    "addslashes": _dj(dj_addslashes),
    "slugify": _dj(dj_slugify),
    "center": _dj(dj_center, _ARG_REQUIRED),
    "ljust": _dj(dj_ljust, _ARG_REQUIRED),
    "rjust": _dj(dj_rjust, _ARG_REQUIRED),
    "stringformat": _dj(dj_stringformat, _ARG_REQUIRED),
    "truncatechars": _dj(dj_truncatechars, _ARG_REQUIRED),
    "truncatewords": _dj(dj_truncatewords, _ARG_REQUIRED),
    "wordcount": _dj(dj_wordcount),
    "make_list": _dj(dj_make_list),
    # HTML, URLs and JavaScript
    "linebreaks": _dj(dj_linebreaks),
    "linebreaksbr": _dj(dj_linebreaksbr),
    "striptags": _dj(dj_striptags),
    "urlize": _dj(dj_urlize),
    "url_target_blank": _dj(dj_url_target_blank),
    "urlencode": _dj(dj_urlencode, _ARG_OPTIONAL),
    "escapejs": _dj(dj_escapejs),
    "safeseq": _dj(dj_safeseq),
    # lists
    "length": _dj(dj_length),
    "length_is": _dj(dj_length_is, _ARG_REQUIRED),
    "first": _dj(dj_first),
    "last": _dj(dj_last),
    "join": _dj(dj_join, _ARG_REQUIRED),
    "slice": _dj(dj_slice, _ARG_REQUIRED),
    "random": _dj(dj_random),
    "dictsort": _dj(dj_dictsort, _ARG_REQUIRED),
    "dictsortreversed": _dj(dj_dictsortreversed, _ARG_REQUIRED),
}
#: Filters used by translated tags only (not Django filters).
_INTERNAL_FILTERS = {"dj_spaceless": dj_spaceless}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def translate(source: str, name: str | None = None) -> str:
    """Translate Django template source to Jinja2 source.

    The result needs the helpers registered by :func:`install`, plus the proxy's ``csrf_field``,
    ``plugit_include`` and ``plugit_get_user`` in the render context. Each tag is translated on
    its own line, so the line numbers of the result match the original.

    :param source: the Django template text.
    :param name: the template name, reported in errors.
    :raises jinja2.TemplateSyntaxError: for an unknown or malformed tag or filter (the message
        names it; ``lineno`` is the original line, ``name`` is ``name``), and for Django features
        PlugIt services cannot use, such as ``{% url %}``.
    """
    return _Translator(source, name).translate()


def install(env: Environment) -> None:
    """Register on ``env`` the ``dj_*`` filters and globals that translated templates use.

    Safe for sandboxed environments: the helpers read attributes only when the sandbox allows
    it and call functions through ``env.call``. Jinja's own filters are left untouched, so the
    same environment can also render native Jinja templates.
    """
    env.filters.update(
        {spec.jinja_name: spec.function for spec in _FILTERS.values() if spec.function}
    )
    env.filters.update(_INTERNAL_FILTERS)
    env.globals.update(_GLOBALS)


class DjangoDialectLoader(BaseLoader):
    """A loader that translates the templates of another loader from Django to Jinja2.

    ``get_source`` returns the translated source with the wrapped loader's filename and
    up-to-date check, so Jinja's template cache and auto-reload work as usual. Syntax errors
    carry the template's name, file and original line.

    Every template reached through this loader is read as Django; give Jinja templates of the
    proxy (layouts) their own loader, e.g. with a :class:`jinja2.ChoiceLoader`.
    """

    def __init__(self, loader: BaseLoader) -> None:
        self.loader = loader
        self.has_source_access = loader.has_source_access

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self.loader.get_source(environment, template)
        try:
            return translate(source, name=template), filename, uptodate
        except TemplateSyntaxError as error:
            error.filename = filename
            raise

    def list_templates(self) -> list[str]:
        return self.loader.list_templates()
