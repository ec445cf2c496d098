"""Settings read declaratively: one dataclass per TOML table, one reader for all of them.

A backend (or the core) describes its table as a dataclass whose fields are made by
:func:`setting`; the field's type says what the value must be, its metadata the range, the
choices, the default, whether it is a secret and its help text.  :func:`read_section` reads a
parsed TOML table into it, raising :class:`plugit_core.config.ConfigError` naming the faulty key
(``auth_ldap.timeout: must be at most 300, got 900``) and the file (and the line in it)::

    @dataclass(frozen=True)
    class GreeterSettings:
        greeting: str = setting("Hello", help="the first word of each page")
        repeat: int = setting(1, minimum=1, maximum=10, help="how many times it is said")
        api_key: str | None = setting(None, secret=True, help="the key of the greeting API")

    settings = read_section(GreeterSettings, {"repeat": 3}, "greeter", "plugit.toml")

Every value may come from the environment with an inline table, ``api_key = { env = "NAME" }``
(an unset variable is an error naming the key).  A key the dataclass does not declare is refused
before any value is read, so a typo is the first error reported.

Types understood: ``str``, ``bool``, ``int``, ``float`` (an int is read as a float), each
optionally ``| None``; ``tuple[str, ...]`` (a single string is a list of one); ``Mapping`` /
``dict`` (a table handed over as it is, for the caller to check); another settings dataclass (a
nested table) and ``tuple[<dataclass>, ...]`` (an array of tables).  ``bool`` is never a number
and a number never a bool.  What a type cannot say (a URL's scheme, an LDAP filter) a field's
``check`` says; what depends on several keys, the class's ``settings_check`` method (or the
caller, after reading) says by raising :class:`SettingError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "NoSettings",
    "Section",
    "Setting",
    "SettingError",
    "describe",
    "file_path",
    "read_section",
    "setting",
    "url_with",
]

T = TypeVar("T")
_META = "plugit.setting"
_NOTHING: Any = dataclasses.MISSING


class ConfigError(ValueError):
    """The configuration is invalid.  ``key`` is the dotted path of the faulty setting.

    When ``source`` is a file, the message says where in it: the service by its ``name`` for a
    key of ``[[services]]``, and the line of the key (or of its table, when the key is missing):
    ``services[1].url: must be an http:// or https:// URL, got 'ftp://x' (service 'wiki', in
    plugit.toml, line 12)``.  ``line`` and ``service`` hold them (None when unknown).
    """

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.source = source
        self.line, self.service = _locate(key, source)
        where = []
        if self.service is not None:
            where.append(f"service {self.service!r}")
        if source:
            where.append(f"in {source}")
        if self.line is not None:
            where.append(f"line {self.line}")
        super().__init__(f"{key}: {message}" + (f" ({', '.join(where)})" if where else ""))


_ARRAY_TABLE = re.compile(r"^\[\[\s*(?P<name>[^\[\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\[\s*(?P<name>[^\[\]]+?)\s*\]")
_KEY = re.compile(r"""^(?P<key>[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*=\s*(?P<value>.*)$""")
_SERVICE_KEY = re.compile(r"^services\[(\d+)\]")


def _toml_lines(text: str) -> dict[str, int]:
    """Where each table and key of a TOML document starts: ``services[1].url`` -> line number.

    A light reading of the usual layout (tables, arrays of tables, ``key = value`` lines,
    multi-line strings skipped), enough to point at a line; what it cannot place is left out.
    """
    where: dict[str, int] = {}
    arrays: dict[str, int] = {}  # path of an array of tables -> tables seen so far
    table = ""
    closing: str | None = None  # the delimiter ending the multi-line string being skipped
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if closing is not None:
            if closing in stripped:
                closing = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = _ARRAY_TABLE.match(stripped) or _TABLE.match(stripped)
        if match:
            is_array = stripped.startswith("[[")
            parts = [part.strip().strip("\"'") for part in match["name"].split(".")]
            path = ""
            for n, part in enumerate(parts):
                path = f"{path}.{part}" if path else part
                if is_array and n == len(parts) - 1:
                    arrays[path] = arrays.get(path, 0) + 1
                if path in arrays:
                    path += f"[{arrays[path] - 1}]"
            table = path
            where.setdefault(table, number)
            continue
        match = _KEY.match(stripped)
        if match:
            key = match["key"].strip("\"'")
            where.setdefault(f"{table}.{key}" if table else key, number)
            value = match["value"]
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    closing = quote
    return where


def _locate(key: str, source: str | None) -> tuple[int | None, str | None]:
    """The line of ``key`` in the file ``source`` and, for a service's key, the service's name."""
    if not source or key == "config":
        return None, None
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None, None
    line = None
    lines = _toml_lines(text)
    path = key
    while path:
        if path in lines:
            line = lines[path]
            break
        path = path.rpartition(".")[0]
    service = None
    match = _SERVICE_KEY.match(key)
    if match:
        try:
            entry = tomllib.loads(text).get("services", [])[int(match[1])]
        except (tomllib.TOMLDecodeError, IndexError, AttributeError, TypeError, KeyError):
            entry = None
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            service = name[:64]
    return line, service


class SettingError(ValueError):
    """Raised by a field's ``check`` or a class's ``settings_check``: ``message`` says what is
    wrong with ``key`` (a key of the table, or a dotted path below it; None: the field checked)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True)
class Setting:
    """What :func:`setting` stores in a field's metadata (see there)."""

    help: str = ""
    minimum: float | None = 0
    maximum: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False
    text: bool = False
    split: bool = False
    non_empty: bool = False
    blank_is_missing: bool | None = None
    check: Callable[[Any], Any] | None = None
    parse: Callable[[Any], Any] | None = None
    default_from: Callable[[Mapping[str, Any]], Any] | None = None
    required: str = "is required"
    expected: str | None = None
    flatten: bool = False


def setting(
    default: Any = _NOTHING,
    *,
    help: str = "",
    minimum: float | None = 0,
    maximum: float | None = None,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    text: bool = False,
    split: bool = False,
    non_empty: bool = False,
    blank_is_missing: bool | None = None,
    check: Callable[[Any], Any] | None = None,
    parse: Callable[[Any], Any] | None = None,
    default_from: Callable[[Mapping[str, Any]], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
    required: str = "is required",
    expected: str | None = None,
    flatten: bool = False,
) -> Any:
    """A dataclass field read from the table by :func:`read_section`.

    ``default``: the value when the key is absent (none: the key is required, and ``required``
    is the message).  ``default_from(values)``: the default computed from the other keys' values
    (read first); it may raise :class:`SettingError` (e.g. "is required outside dev mode").
    Numbers: from ``minimum`` (0 unless said; None for no floor) or more than ``above``, to
    ``maximum``; with ``text`` a number written as a string (as the environment gives them) is
    read too.  Strings: one of ``choices``; with ``blank_is_missing`` (default: the table's
    choice) an empty string counts as absent.  Lists of strings: ``split`` reads a single string
    as its words, ``non_empty`` refuses empty items.  ``check(value)`` returns the value (or a
    converted one) or raises ``ValueError`` saying what is wrong; ``parse(value)`` does the same
    in place of the type's own reading (for a type the reader does not know, such as a
    ``name=value`` pair read into a tuple).  ``secret``: never shown, in
    an error message nor in :func:`describe` nor in the dataclass's repr.  ``expected`` words
    the type error of a nested table or an array of tables (``"[[services]] tables"``).
    ``flatten``: the field is a settings dataclass whose keys are keys of this very table (a
    group of keys several backends share, such as :class:`plugit_core.stores.GuardSettings`).
    ``help`` says what the key is for, in a sentence.
    """
    spec = Setting(
        help=help,
        minimum=minimum,
        maximum=maximum,
        above=above,
        choices=choices,
        secret=secret,
        text=text,
        split=split,
        non_empty=non_empty,
        blank_is_missing=blank_is_missing,
        check=check,
        parse=parse,
        default_from=default_from,
        required=required,
        expected=expected,
        flatten=flatten,
    )
    metadata = {_META: spec}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default: use a tuple or a MappingProxyType")
    if default_factory is not None:
        return dataclasses.field(
            default_factory=default_factory, repr=not secret, metadata=metadata
        )
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


class Section:
    """Where a table is (its dotted path and the file), to raise errors naming its keys."""

    def __init__(self, where: str, source: str | None) -> None:
        self.where = where
        self.source = source

    def key(self, key: str) -> str:
        """The dotted path of ``key`` of this table (``auth_ldap.timeout``)."""
        if not self.where:
            return key
        return f"{self.where}{key}" if key.startswith("[") else f"{self.where}.{key}"

    def error(self, key: str, message: str) -> ConfigError:
        """The :class:`ConfigError` of ``key`` of this table."""
        return ConfigError(self.key(key), message, self.source)


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Setting, Any]]:
    """The settings fields of ``cls`` with their resolved types (annotations may be strings)."""
    hints = typing.get_type_hints(cls)
    return [
        (f, f.metadata[_META], hints[f.name])
        for f in dataclasses.fields(cls)
        if _META in f.metadata
    ]


def _keys(cls: type[Any]) -> set[str]:
    """The keys of the table ``cls`` reads, with those of its flattened fields."""
    keys = set()
    for f, spec, kind in _fields(cls):
        keys.update(_keys(kind) if spec.flatten else {f.name})
    return keys


def read_section(
    cls: type[T],
    data: object,
    where: str,
    source: str | None,
    *,
    blank_is_missing: bool = False,
    extra_keys: Iterable[str] = (),
) -> T:
    """Read the table ``data`` (found at the dotted path ``where`` of the file ``source``) into
    the settings dataclass ``cls``.

    Raise :class:`ConfigError` naming the first faulty key: an unknown key
    (outside the fields and ``extra_keys``, which the caller reads), a missing one, a value of
    the wrong type or out of range.  Fields made without :func:`setting` are not read (they keep
    their default).  ``blank_is_missing`` is the default of the string fields' own flag.
    """
    section = Section(where, source)
    if not isinstance(data, Mapping):
        raise ConfigError(where or "config", "expected a table", source)
    fields = _fields(cls)
    unknown = set(data) - _keys(cls) - set(extra_keys)
    if unknown:
        raise section.error(sorted(unknown)[0], "unknown setting (check its spelling)")
    values: dict[str, Any] = {}
    later = []
    for f, spec, kind in fields:
        if spec.flatten:
            own = _keys(kind)
            values[f.name] = read_section(
                kind,
                {k: v for k, v in data.items() if k in own},
                where,
                source,
                blank_is_missing=blank_is_missing,
            )
            continue
        value = _resolve(section, f.name, data.get(f.name))
        blank = spec.blank_is_missing if spec.blank_is_missing is not None else blank_is_missing
        if value is None or (blank and value == "" and _optional(kind) is str):
            if spec.default_from is not None:
                later.append((f, spec))
            elif f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
            else:
                raise section.error(f.name, spec.required)
            continue
        values[f.name] = _checked(section, f.name, spec, kind, value)
    for f, spec in later:
        try:
            values[f.name] = spec.default_from(values) if spec.default_from else None
        except SettingError as exc:
            raise section.error(exc.key or f.name, exc.message) from None
    try:
        result = cls(**values)
        check = getattr(result, "settings_check", None)
        if check is not None:
            check()
    except SettingError as exc:
        if exc.key is None:  # the table as a whole
            raise ConfigError(where or "config", exc.message, source) from None
        raise section.error(exc.key, exc.message) from None
    return result


def _resolve(section: Section, key: str, value: Any) -> Any:
    """The value itself, or the environment variable an inline ``{ env = "NAME" }`` names."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or name not in os.environ:
            raise section.error(key, f"environment variable {name!r} is not set")
        return os.environ[name]
    return value


def _checked(section: Section, key: str, spec: Setting, kind: Any, value: Any) -> Any:
    """``value`` converted to ``kind`` and checked against ``spec``, or the error of ``key``."""
    shown = "a secret value" if spec.secret else repr(value)
    try:
        if spec.parse is not None:
            value = spec.parse(value)
        else:
            value = _typed(section, key, spec, _optional(kind), value, shown)
        if spec.choices is not None and value not in spec.choices:
            raise SettingError(f"must be one of {', '.join(spec.choices)}, got {shown}")
        if spec.check is not None:
            value = spec.check(value)
    except ConfigError:
        raise
    except SettingError as exc:
        below = key + exc.key if exc.key and exc.key.startswith("[") else f"{key}.{exc.key}"
        raise section.error(below if exc.key else key, exc.message) from None
    except ValueError as exc:
        raise section.error(key, str(exc)) from None
    return value


def _optional(kind: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _typed(section: Section, key: str, spec: Setting, kind: Any, value: Any, shown: str) -> Any:
    if kind is Any:
        return value
    if kind is str:
        if not isinstance(value, str):
            raise SettingError(f"expected a string, got {type(value).__name__}")
        if spec.non_empty and not value:
            raise SettingError("expected a non-empty string")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingError(f"expected true or false, got {shown}")
        return value
    if kind in (int, float):
        return _number(spec, kind, value, shown)
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is tuple and args[1:] == (Ellipsis,) and args[0] is str:
        return _strings(spec, value)
    if origin is tuple and args[1:] == (Ellipsis,) and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise SettingError(f"expected {spec.expected or 'a list of tables'}")
        item: Any = args[0]
        place = section.key(key)
        return tuple(
            read_section(item, entry, f"{place}[{n}]", section.source)
            for n, entry in enumerate(value)
        )
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise SettingError(f"expected {spec.expected or 'a table'}")
        return read_section(kind, value, section.key(key), section.source)
    if origin in (dict, Mapping) or kind in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise SettingError(f"expected {spec.expected or 'a table'}")
        return value
    raise TypeError(f"{section.key(key)}: settings of type {kind} cannot be read")


def _number(spec: Setting, kind: type[Any], value: Any, shown: str) -> int | float:
    if spec.text and isinstance(value, str) and value.strip():
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            raise SettingError(f"expected a number, got {shown}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(f"expected a number, got {shown}")
    if kind is int and not isinstance(value, int):
        raise SettingError(f"expected a whole number, got {shown}")
    if spec.minimum is not None and value < spec.minimum:
        raise SettingError(f"must be at least {spec.minimum}, got {shown}")
    if spec.above is not None and value <= spec.above:
        raise SettingError(f"must be more than {spec.above}, got {shown}")
    if spec.maximum is not None and value > spec.maximum:
        raise SettingError(f"must be at most {spec.maximum}, got {shown}")
    return float(value) if kind is float else value


def _strings(spec: Setting, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split() if spec.split else [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and (v or not spec.non_empty) for v in value
    ):
        what = "non-empty strings" if spec.non_empty else "strings"
        raise SettingError(f"expected a list of {what}")
    return tuple(value)


@dataclass(frozen=True)
class NoSettings:
    """The table of a backend without settings: any key in it is refused as unknown."""


def file_path(value: Any) -> str:
    """A ``parse`` of the path of a file: a non-empty string (SQLite's ``:memory:`` is no file)."""
    if not isinstance(value, str) or not value or value == ":memory:":
        raise ValueError(f"expected the path of a file, got {value!r}")
    return value


def url_with(*schemes: str) -> Callable[[str], str]:
    """A ``check`` of a URL whose scheme is one of ``schemes`` (the rest is the caller's)."""

    def check(value: str) -> str:
        if urlsplit(value).scheme not in schemes:
            names = [f"{scheme}://" for scheme in schemes]
            wanted = " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
            raise ValueError(f"expected a {wanted} URL, got {value!r}")
        return value

    return check


def describe(cls: type[Any]) -> list[dict[str, Any]]:
    """One entry per key of the table ``cls`` reads: ``key``, ``type``, ``default`` (None when
    required or computed; a secret's default is never shown), ``secret`` and ``help``: what a
    documentation page or a ``--help`` lists."""
    entries = []
    for f, spec, kind in _fields(cls):
        if spec.flatten:
            entries.extend(describe(kind))
            continue
        default = None if f.default is dataclasses.MISSING or spec.secret else f.default
        entries.append(
            {
                "key": f.name,
                "type": getattr(kind, "__name__", str(kind)),
                "default": default,
                "secret": spec.secret,
                "help": spec.help,
            }
        )
    return entries
