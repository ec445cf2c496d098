"""The tag table: one small function per Django tag, writing Jinja source on the same line.

Each function gets the :class:`~.translator.Translator`, the tag's token and the bits after
the tag name. Tags PlugIt services cannot use (``{% url %}``) are refused with an explanation.
"""

from __future__ import annotations

import re

from .lexer import BLOCK, COMMENT, TEXT, VAR, Token, is_plain_name, jinja_text, string_literal
from .translator import Frame, TagFunction, Translator

# --------------------------------------------------------------------------------------------
# Tag table: one small function per Django tag; ``args`` are the bits after the tag name.
# --------------------------------------------------------------------------------------------


def _split_as(args: list[str]) -> tuple[list[str], str | None]:
    """Split a trailing ``as <name>`` off ``args``."""
    if len(args) >= 2 and args[-2] == "as":
        return args[:-2], args[-1]
    return args, None


def _tag_load(tr: Translator, token: Token, args: list[str]) -> None:
    """``{% load lib %}``: tag libraries do not exist here; the tags they gave are built in."""


def _tag_extends(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) != 1:
        tr.error("'extends' takes one argument", token)
    if any(earlier.kind not in (TEXT, COMMENT) for earlier in tr.tokens[: tr.pos - 1]):
        tr.error("'extends' must be the first tag in the template", token)
    # Django ignores the text before {% extends %}, Jinja would print it: keep only its lines.
    newlines = sum(piece.count("\n") for piece in tr.out)
    tr.out[:] = ["{#" + "\n" * newlines + "#}"] if newlines else []
    tr.emit(f"{{% extends {tr.expression(args[0], token)} %}}")


def _tag_include(tr: Translator, token: Token, args: list[str]) -> None:
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


def _tag_block(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) != 1 or not is_plain_name(args[0]):
        tr.error("'block' takes one name made of letters, digits and underscores", token)
    # Django blocks see the variables of enclosing for/with tags; Jinja's only when scoped.
    scoped = " scoped" if any(frame.tag in ("for", "with") for frame in tr.frames) else ""
    tr.push(Frame("block", ("endblock",), "{% endblock %}", token.lineno, name=args[0]))
    tr.emit(f"{{% block {args[0]}{scoped} %}}")


def _tag_end(tr: Translator, token: Token, args: list[str]) -> None:
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


def _tag_if(tr: Translator, token: Token, args: list[str]) -> None:
    condition = tr.condition(args, token)
    tr.push(Frame("if", ("endif",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if {condition} %}}")


def _tag_elif(tr: Translator, token: Token, args: list[str]) -> None:
    frame = tr.top(token, "if")
    if frame.seen_else:
        tr.error("'elif' after 'else'", token)
    tr.emit(f"{{% elif {tr.condition(args, token)} %}}")


def _tag_else(tr: Translator, token: Token, args: list[str]) -> None:
    frame = tr.top(token, "if", "ifequal", "ifnotequal", "ifchanged")
    if frame.seen_else or args:
        tr.error("'else' is not allowed here", token)
    frame.seen_else = True
    tr.emit("{% else %}")


def _tag_ifequal(tr: Translator, token: Token, args: list[str]) -> None:
    name = token.tag_name
    if len(args) != 2:
        tr.error(f"'{name}' takes two arguments", token)
    left, right = (tr.expression(arg, token) for arg in args)
    operator_ = "==" if name == "ifequal" else "!="
    tr.push(Frame(name, (f"end{name}",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if dj_compare({left}, {operator_!r}, {right}) %}}")


def _tag_ifchanged(tr: Translator, token: Token, args: list[str]) -> None:
    if not tr.loops():
        tr.error("'ifchanged' is only supported inside a 'for' loop", token)
    if not args:
        tr.error("'ifchanged' without arguments is not supported: name the values to watch", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.push(Frame("ifchanged", ("endifchanged",), "{% endif %}", token.lineno))
    tr.emit(f"{{% if loop.changed({values}) %}}")


def _tag_for(tr: Translator, token: Token, args: list[str]) -> None:
    reverse = bool(args) and args[-1] == "reversed"
    if reverse:
        args = args[:-1]
    if len(args) < 3 or args[-2] != "in":
        tr.error("'for' statements should use the format 'for x in y'", token)
    targets = [tr.target(name, token) for name in re.split(r"\s*,\s*", " ".join(args[:-2]))]
    sequence = tr.expression(args[-1], token)
    iterable = f"dj_iter({sequence}, reverse=True)" if reverse else f"dj_iter({sequence})"
    frame = tr.push(Frame("for", ("endfor",), "{% endfor %}", token.lineno))
    frame.out_index = len(tr.out)
    tr.emit(f"{{% for {', '.join(targets)} in {iterable} %}}")


def _tag_empty(tr: Translator, token: Token, args: list[str]) -> None:
    frame = tr.top(token, "for")
    if frame.seen_else or args:
        tr.error("'empty' is not allowed here", token)
    frame.seen_else = True
    tr.emit("{% else %}")


def _tag_cycle(tr: Translator, token: Token, args: list[str]) -> None:
    if not tr.loops():
        tr.error("'cycle' is only supported inside a 'for' loop", token)
    if "as" in args:
        tr.error("Named cycles ('cycle ... as name') are not supported", token)
    if len(args) == 1 and "," in args[0] and args[0][0] not in "\"'":
        values = [string_literal(value) for value in args[0].split(",")]  # old {% cycle a,b %}
    elif len(args) >= 2:
        values = [tr.expression(arg, token) for arg in args]
    else:
        tr.error("'cycle' needs at least two values", token)
    tr.emit(f"{{{{ loop.cycle({', '.join(values)}) }}}}")


def _tag_with(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) == 3 and args[1] == "as":  # old {% with value as name %}
        args = [f"{args[2]}={args[0]}"]
    if not args:
        tr.error("'with' expects name=value pairs", token)
    assignments = tr.assignments(args, token)
    tr.push(Frame("with", ("endwith",), "{% endwith %}", token.lineno))
    tr.emit(f"{{% with {assignments} %}}")


def _tag_firstof(tr: Translator, token: Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if not args:
        tr.error("'firstof' takes at least one argument", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit_value(f"dj_firstof({values})", target, token)


def _tag_widthratio(tr: Translator, token: Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 3:
        tr.error("'widthratio' takes three arguments (optionally followed by 'as name')", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit_value(f"dj_widthratio({values})", target, token)


def _tag_now(tr: Translator, token: Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 1:
        tr.error("'now' takes one argument: the format", token)
    tr.emit_value(f"dj_now({tr.expression(args[0], token)})", target, token)


def _tag_regroup(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) != 5 or args[1] != "by" or args[3] != "as":
        tr.error("'regroup' expects: regroup <list> by <attribute> as <name>", token)
    key = args[2]
    if not re.fullmatch(r"\w+(\.\w+)*", key) or key.startswith("_") or "._" in key:
        tr.error(f"'regroup' groups by a plain attribute path, not {key!r}", token)
    source = tr.expression(args[0], token)
    tr.emit(f"{{% set {tr.target(args[4], token)} = dj_regroup({source}, {key!r}) %}}")


def _tag_spaceless(tr: Translator, token: Token, args: list[str]) -> None:
    tr.push(Frame("spaceless", ("endspaceless",), "{% endfilter %}", token.lineno))
    tr.emit("{% filter dj_spaceless %}")


def _tag_autoescape(tr: Translator, token: Token, args: list[str]) -> None:
    if args not in (["on"], ["off"]):
        tr.error("'autoescape' takes 'on' or 'off'", token)
    tr.push(Frame("autoescape", ("endautoescape",), "{% endautoescape %}", token.lineno))
    tr.emit(f"{{% autoescape {'true' if args == ['on'] else 'false'} %}}")


def _tag_filter(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) != 1:
        tr.error("'filter' takes one filter chain", token)
    chain = tr.filter_chain(args[0], token)
    tr.push(Frame("filter", ("endfilter",), "{% endfilter %}", token.lineno))
    tr.emit(f"{{% filter {chain} %}}")


def _tag_comment(tr: Translator, token: Token, args: list[str]) -> None:
    skipped = tr.skip_until("endcomment", token)
    newlines = sum(t.raw.count("\n") for t in skipped)
    if newlines:  # keep the line count: an empty Jinja comment spanning the same lines
        tr.emit("{#" + "\n" * newlines + "#}")


def _tag_verbatim(tr: Translator, token: Token, args: list[str]) -> None:
    skipped = tr.skip_until("end" + token.content, token)
    tr.emit(jinja_text("".join(t.raw for t in skipped)))


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


def _tag_templatetag(tr: Translator, token: Token, args: list[str]) -> None:
    if len(args) != 1 or args[0] not in _TEMPLATETAGS:
        tr.error(f"'templatetag' takes one of: {', '.join(_TEMPLATETAGS)}", token)
    tr.emit(jinja_text(_TEMPLATETAGS[args[0]]))


def _tag_csrf_token(tr: Translator, token: Token, args: list[str]) -> None:
    tr.emit("{{ csrf_field }}")


def _tag_static(tr: Translator, token: Token, args: list[str]) -> None:
    args, target = _split_as(args)
    if len(args) != 1:
        tr.error("'static' takes one argument: the path", token)
    tr.emit_value(f"dj_static({tr.expression(args[0], token)})", target, token)


def _tag_trans(tr: Translator, token: Token, args: list[str]) -> None:
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


def _tag_blocktrans(tr: Translator, token: Token, args: list[str]) -> None:
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
        if inner.kind == BLOCK and inner.content == end:
            break
        if inner.kind == BLOCK:
            tr.error(
                f"'{name}' does not allow other block tags inside it ({inner.tag_name!r})", inner
            )
        if inner.kind == VAR:
            if not re.fullmatch(r"\w+", inner.content):
                tr.error(f"'{name}' allows only plain variable names, not {inner.content!r}", inner)
            parts.append(f"\0{tr.variable(inner.content, inner)}\0")
        elif inner.kind == TEXT:
            parts.append(inner.content.replace("\0", ""))
    message = "".join(parts)
    newlines = message.count("\n")
    if trimmed:
        message = re.sub(r"\s*\n\s*", " ", message.strip())
    pieces = message.split("\0")  # text, variable, text, variable, ..., text
    body = "".join(
        f"{{{{ {piece} }}}}" if index % 2 else jinja_text(piece)
        for index, piece in enumerate(pieces)
    )
    lost = newlines - message.count("\n")
    if lost:
        body += "{#" + "\n" * lost + "#}"
    tr.emit(f"{{% with {assignments} %}}{body}{{% endwith %}}" if assignments else body)


def _tag_plugit_include(tr: Translator, token: Token, args: list[str]) -> None:
    """``{% plugitInclude "action/path" %}``: the template of another action, same context."""
    if len(args) != 1:
        tr.error("'plugitInclude' takes exactly one argument: the action path", token)
    tr.emit(f"{{{{ plugit_include({tr.expression(args[0], token)}) }}}}")


def _tag_plugit_fragment(tr: Translator, token: Token, args: list[str]) -> None:
    """``{% plugitFragment "service" "action/path" %}``: an action of any mounted service,
    rendered without the layout (docs/fragments.md)."""
    if len(args) not in (1, 2):
        tr.error("'plugitFragment' expects: plugitFragment <service> [<action path>]", token)
    values = ", ".join(tr.expression(arg, token) for arg in args)
    tr.emit(f"{{{{ plugit_fragment({values}) }}}}")


def _tag_plugit_get_user(tr: Translator, token: Token, args: list[str]) -> None:
    """``{% plugitGetUser pk as var %}``: look a user up through the proxy."""
    if len(args) != 3 or args[1] != "as":
        tr.error("'plugitGetUser' expects: plugitGetUser <pk> as <name>", token)
    pk = tr.expression(args[0], token)
    tr.emit(f"{{% set {tr.target(args[2], token)} = plugit_get_user({pk}) %}}")


def _tag_url(tr: Translator, token: Token, args: list[str]) -> None:
    tr.error("{% url %} is not available to PlugIt services; build links from ebuio_baseUrl", token)


TAGS: dict[str, TagFunction] = {
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
TAGS.update(
    dict.fromkeys(
        (
            "endblock endif endifequal endifnotequal endifchanged endfor endwith endspaceless "
            "endautoescape endfilter"
        ).split(),
        _tag_end,
    )
)
