"""Tokens and literals of the Django template language: the lexer of the dialect.

Cuts template source into text, variable, tag and comment tokens the way Django's lexer does
(a tag never spans lines), splits tag contents into bits, and turns Django constants and numbers
into Jinja expressions. Pure text functions: nothing here knows Jinja's runtime.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

TEXT, VAR, BLOCK, COMMENT = "text", "var", "block", "comment"
_OPENERS = {"{{": (VAR, "}}"), "{%": (BLOCK, "%}"), "{#": (COMMENT, "#}")}
_TAG_START_RE = re.compile(r"\{[{%#]")


@dataclass(frozen=True)
class Token:
    kind: str  # TEXT, VAR, BLOCK or COMMENT
    content: str  # between the delimiters, stripped (the text itself for text tokens)
    raw: str  # exactly as written in the source
    lineno: int  # line of the token's first character

    @property
    def tag_name(self) -> str:
        return self.content.split(None, 1)[0] if self.content else ""


def tokenize(source: str) -> list[Token]:
    """Cut Django template source into tokens.

    Like Django's lexer, a tag is ``{{``/``{%``/``{#`` up to the first matching closer on the same
    line; an opener without a closer on its line is plain text.
    """
    tokens: list[Token] = []
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
            tokens.append(Token(TEXT, text, text, lineno))
            lineno += text.count("\n")
        raw = source[start : end + 2]
        tokens.append(Token(kind, raw[2:-2].strip(), raw, lineno))
        text_start = search = end + 2
    if text_start < len(source):
        text = source[text_start:]
        tokens.append(Token(TEXT, text, text, lineno))
    return tokens


_BIT_RE = re.compile(
    r"""(?:[^\s'"]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')+  # unquoted characters and whole strings
    |\S+                                                # an unbalanced quote: left to the parser
    """,
    re.VERBOSE,
)


def split_bits(content: str) -> list[str]:
    """Split tag content on whitespace, keeping quoted strings (``a="x y"``) in one piece."""
    return _BIT_RE.findall(content)


_JINJA_OPENER_RE = re.compile(r"\{(?=[{%#]|\Z)")


def jinja_text(text: str) -> str:
    """Literal text as Jinja source: a brace that could start a Jinja tag becomes ``{{ '{' }}``.

    A brace ending the text is escaped too, since the next piece of output may start with one.
    """
    return _JINJA_OPENER_RE.sub("{{ '{' }}", text)


# --------------------------------------------------------------------------------------------
# Expressions: Django variables, literals and filter chains
# --------------------------------------------------------------------------------------------

_STRING = r""""[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*'"""
CONSTANT_RE = re.compile(rf"_\((?:{_STRING})\)|{_STRING}")
VARIABLE_RE = re.compile(r"[\w.]+")
NUMBER_RE = re.compile(r"[-+.]?\d[\d.e]*")
FILTER_RE = re.compile(r"\s*\|\s*(\w+)")
_HTML_SPECIAL = frozenset("<>&'\"")

#: Names that cannot be written as a plain Jinja name (operators, constants, Jinja's own
#: variables); a Django variable with such a name is read with ``dj_var("name")``.
_JINJA_RESERVED = frozenset(
    "and or not in is if else true false none loop self super caller varargs kwargs".split()
)

#: ``forloop.<attribute>`` -> ``loop.<attribute>``
FORLOOP_ATTRS = {
    "counter": "index",
    "counter0": "index0",
    "revcounter": "revindex",
    "revcounter0": "revindex0",
    "first": "first",
    "last": "last",
}


def is_plain_name(name: str) -> bool:
    return name.isidentifier() and name not in _JINJA_RESERVED


def unquote(constant: str) -> str:
    """The value of a Django string constant (``"x"``, ``'x'`` or ``_("x")``)."""
    if constant.startswith("_("):
        constant = constant[2:-1]
    quote_char = constant[0]
    return constant[1:-1].replace("\\" + quote_char, quote_char).replace("\\\\", "\\")


def string_literal(value: str) -> str:
    """A Django string constant as a Jinja expression.

    Django treats string constants as safe, so a constant containing HTML special characters is
    marked safe rather than escaped.
    """
    text = repr(value)
    return f"({text}|safe)" if _HTML_SPECIAL.intersection(value) else text


def number_literal(text: str) -> str | None:
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
