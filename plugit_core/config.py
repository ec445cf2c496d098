"""Proxy configuration: one TOML file, validated at start-up.

Every error names the key (``services[1].timeout``) and the file, so a typo is found at once.
Secrets may be given inline or, better, read from the environment with an inline table:
``secret_key = { env = "PLUGIT_SECRET_KEY" }``.

Backends read their own table, named after them (``[cache_memory]``, ``[session_cookie]``);
:meth:`ProxyConfig.section` hands it over and :meth:`ProxyConfig.reader` reads it.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

from .networks import parse_networks
from .users import DEFAULT_USER_DATA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "HTTP_CLIENTS",
    "TRUST_LEVELS",
    "ConfigError",
    "FragmentSpec",
    "ProxyConfig",
    "SectionReader",
    "ServiceMount",
    "SitePage",
    "httptools_available",
    "load_config",
]

HTTP_CLIENTS = ("auto", "httptools", "urllib3")  # how the proxy talks to services
TRUST_LEVELS = ("sandboxed", "full")  # how far the site trusts a service's HTML

# The key a dev-mode proxy signs with when none is given.  Public (it is in this file), so it is
# refused outside dev mode, with every other key that is printed somewhere (KNOWN_KEYS).
DEV_SECRET_KEY = "dev-mode-insecure-secret-key-do-not-use-in-production"  # noqa: S105
# The documentation and the examples show no literal key (they read it from the environment or
# generate one); a key printed in them later belongs here.
KNOWN_KEYS = frozenset({DEV_SECRET_KEY})
# Words that mark a placeholder copied from an example rather than a generated key.
_PLACEHOLDER_WORDS = (
    "insecure",
    "do-not-use",
    "change-me",
    "changeme",
    "replace-me",
    "your-secret",
)
MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_RESERVED_MOUNTS = ("/_plugit/",)


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


class SectionReader:
    """Typed access to one table, recording which keys were read so leftovers can be refused.

    Every error names the key (``prefix`` + key, e.g. ``auth_ldap.timeout``) and the file, and
    a value may be an inline table ``{ env = "NAME" }``, read from the environment.  Backends
    get theirs from :meth:`ProxyConfig.reader`.  With ``blank_is_missing`` an empty string
    counts as not set (the default, or "is required").
    """

    # The annotations say builtins.str and builtins.bool: in this class, str and bool are the
    # methods below.

    def __init__(
        self,
        data: Mapping[builtins.str, Any],
        prefix: builtins.str,
        source: builtins.str | None,
        *,
        blank_is_missing: builtins.bool = False,
    ) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(prefix.rstrip(".") or "config", "expected a table", source)
        self.data = data
        self.prefix = prefix
        self.source = source
        self.blank_is_missing = blank_is_missing
        self.seen: set[str] = set()

    def error(self, key: builtins.str, message: builtins.str) -> ConfigError:
        return ConfigError(self.prefix + key, message, self.source)

    def raw(self, key: builtins.str, default: Any = None) -> Any:
        self.seen.add(key)
        value = self.data.get(key, default)
        if isinstance(value, Mapping) and set(value) == {"env"}:
            name = value["env"]
            if not isinstance(name, str) or name not in os.environ:
                raise self.error(key, f"environment variable {name!r} is not set")
            return os.environ[name]
        return value

    @overload
    def str(
        self, key: builtins.str, default: builtins.str, *, required: builtins.bool = False
    ) -> builtins.str: ...
    @overload
    def str(
        self, key: builtins.str, default: None = None, *, required: builtins.bool = False
    ) -> builtins.str | None: ...
    def str(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.str | None:
        """A string; with a string ``default``, never None."""
        value = self.raw(key, default)
        if value is None or (value == "" and self.blank_is_missing):
            if required:
                raise self.error(key, "is required")
            return default if value == "" else None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        return value

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def number(
        self,
        key: builtins.str,
        default: float,
        *,
        minimum: float = 0,
        maximum: float | None = None,
        above: float | None = None,
        integer: builtins.bool = False,
        text: builtins.bool = False,
    ) -> Any:
        """A number from ``minimum`` (or more than ``above``) to ``maximum``.  With ``text``, a
        number written as a string (as the environment gives them) is read too."""
        value = self.raw(key, default)
        if text and isinstance(value, str) and value.strip():
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                raise self.error(key, f"expected a number, got {value!r}") from None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.error(key, f"expected a number, got {value!r}")
        if integer and not isinstance(value, int):
            raise self.error(key, f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value!r}")
        if above is not None and value <= above:
            raise self.error(key, f"must be more than {above}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value!r}")
        return value

    def str_list(
        self,
        key: builtins.str,
        default: tuple[builtins.str, ...] | list[builtins.str],
        *,
        split: builtins.bool = False,
        allow_empty: builtins.bool = True,
    ) -> tuple[builtins.str, ...]:
        """A list of strings; a single string is a list of one (of its words with ``split``)."""
        value = self.raw(key, default)
        if isinstance(value, str):
            value = value.split() if split else [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and (v or allow_empty) for v in value
        ):
            what = "strings" if allow_empty else "non-empty strings"
            raise self.error(key, f"expected a list of {what}")
        return tuple(value)

    def choice(
        self, key: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        value = self.str(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def url(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        schemes: tuple[builtins.str, ...] = ("http", "https"),
        required: builtins.bool = False,
    ) -> builtins.str | None:
        """A string whose URL scheme is one of ``schemes`` (the rest is the caller's to check)."""
        value = self.str(key, default, required=required)
        if value is not None and urlsplit(value).scheme not in schemes:
            names = [f"{scheme}://" for scheme in schemes]
            wanted = " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
            raise self.error(key, f"expected a {wanted} URL, got {value!r}")
        return value

    @overload
    def path(
        self, key: builtins.str, default: builtins.str, *, required: builtins.bool = False
    ) -> builtins.str: ...
    @overload
    def path(
        self, key: builtins.str, default: None = None, *, required: builtins.bool = False
    ) -> builtins.str | None: ...
    def path(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.str | None:
        """The path of a file: a non-empty string (SQLite's ``:memory:`` is no file)."""
        value = self.raw(key, default)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return None
        if not isinstance(value, str) or not value or value == ":memory:":
            raise self.error(key, f"expected the path of a file, got {value!r}")
        return value

    def known(self, keys: Iterable[builtins.str]) -> None:
        """Refuse a key outside ``keys`` at once, before any is read (a typo is the first error)."""
        self._refuse(set(self.data) - set(keys))

    def finish(self, allowed_extra: Iterable[builtins.str] = frozenset()) -> None:
        """Refuse a key that was not read (nor is in ``allowed_extra``)."""
        self._refuse(set(self.data) - self.seen - set(allowed_extra))

    def _refuse(self, unknown: set[builtins.str]) -> None:
        if unknown:
            raise self.error(sorted(unknown)[0], "unknown setting (check its spelling)")


@dataclass(frozen=True)
class Variant:
    """Another build of a service (a canary, a development build), chosen per request.

    A request goes to the first variant one of whose rules matches: the user's name in
    ``users``, one of the user's organisations in ``orgas``, one of the user's roles for the
    service (``member``, ``admin``, ``superuser``) in ``roles``, or the browser's cookie
    ``cookie = "name=value"``.
    """

    name: str
    url: str
    secret: str | None = field(default=None, repr=False)
    users: tuple[str, ...] = ()
    orgas: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    cookie: tuple[str, str] | None = None


@dataclass(frozen=True)
class FragmentSpec:
    """One fragment placed on a page: the action at ``path`` of the service ``service``,
    rendered without the layout (see docs/fragments.md).

    ``fallback`` is the markup shown when the service fails or is slower than ``timeout``
    (seconds; None: the service's own ``timeout``), ``placeholder`` the markup shown to a
    visitor whom the action's access rules refuse; ``title`` heads it on a site page.
    """

    service: str
    path: str
    fallback: str | None = None
    placeholder: str | None = None
    timeout: float | None = None
    title: str | None = None


@dataclass(frozen=True)
class SitePage:
    """A page of the site declared in the configuration (``[[pages]]``): a title and fragments
    of any services, in the site's layout, in ``columns`` columns on wide screens."""

    path: str
    title: str
    fragments: tuple[FragmentSpec, ...] = ()
    columns: int = 1


@dataclass(frozen=True)
class ServiceMount:
    """One service mounted on the proxy."""

    name: str
    url: str
    mount: str
    title: str
    timeout: float = 5.0
    connect_timeout: float = 2.0
    template_dialect: str = "jinja"
    secret: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    orga_mode: bool = False
    proxy_mode: bool = False
    menu_block: str = "menubar"
    layout: str = "default"
    max_concurrency: int = 32
    max_response_size: int = 10 * 1024 * 1024
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    # Is the proxy not ready (/_plugit/ready answers 503) while this service's circuit is open?
    required: bool = False
    stale_for: float = 3600.0
    fallback_html: str | None = None
    variants: tuple[Variant, ...] = ()
    shadow_url: str | None = None
    shadow_secret: str | None = field(default=None, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    # How far the site trusts the service's HTML: "sandboxed" (sanitised, strict CSP) or "full".
    trust: str = "sandboxed"
    # The theme of its pages (a registered theme backend), when not the site's.
    theme: str | None = None
    # The budget of one render of its templates (plugit_core.proxy.sandbox.RenderBudget).
    render_cpu_time: float = 0.5
    render_max_iterations: int = 100_000
    render_max_output: int = 5_000_000
    render_max_size: int = 1_000_000

    @property
    def media_url(self) -> str:
        return self.mount + "media/"


@dataclass(frozen=True)
class ProxyConfig:
    """The whole proxy configuration."""

    secret_key: str = field(repr=False)
    services: tuple[ServiceMount, ...] = ()
    dev_mode: bool = False
    site_name: str = "PlugIt"
    theme: str = "bootstrap"
    cache: str = "memory"
    session: str = "cookie"
    auth: tuple[str, ...] = ()
    users: str | None = None
    billing: str | None = None
    mail: str | None = None
    user_data: tuple[str, ...] = DEFAULT_USER_DATA
    allowed_redirect_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    dev_allowed_clients: tuple[str, ...] = ()
    max_upload_size: int = 16 * 1024 * 1024
    http_client: str = "auto"
    pages: tuple[SitePage, ...] = ()  # [[pages]]: pages composed of fragments
    source: str | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        """The table ``[name]`` of the file (empty when absent), for the backend called ``name``."""
        return self.sections.get(name, {})

    def reader(
        self, name: str, section: Mapping[str, Any] | None = None, **options: Any
    ) -> SectionReader:
        """A :class:`SectionReader` of the table ``[name]`` (or of ``section``, the table a
        backend's factory is handed), its errors naming ``name.key`` and this file."""
        data = self.section(name) if section is None else section
        return SectionReader(data, f"{name}.", self.source, **options)

    def service(self, name: str) -> ServiceMount:
        for mount in self.services:
            if mount.name == name:
                return mount
        raise KeyError(name)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], source: str | None = None, *, check_secret: bool = True
    ) -> ProxyConfig:
        """Validate a parsed configuration; raise :class:`ConfigError` naming the faulty key."""
        top = SectionReader(data, "", source)
        dev_mode = top.bool("dev_mode", False)
        secret_key = top.str("secret_key")
        if secret_key is None or not secret_key:
            if not dev_mode:
                raise top.error(
                    "secret_key", f"is required outside dev mode: make one with {MAKE_A_KEY}"
                )
            secret_key = DEV_SECRET_KEY
        elif not dev_mode:
            _check_not_known(secret_key, top, "secret_key")
            if check_secret:
                _check_strong(secret_key, top, "secret_key")
        services_raw = top.raw("services", [])
        if not isinstance(services_raw, list):
            raise top.error("services", "expected [[services]] tables")
        services = tuple(_service(item, i, source) for i, item in enumerate(services_raw))
        _check_unique(services, source)
        trusted = top.str_list("trusted_proxies", ())
        try:
            parse_networks(trusted, setting="trusted_proxies")
        except ValueError as exc:
            raise top.error("trusted_proxies", str(exc)) from None
        dev_allowed = top.str_list("dev_allowed_clients", (), allow_empty=False)
        try:
            parse_networks(dev_allowed, setting="dev_allowed_clients")
        except ValueError as exc:
            raise top.error("dev_allowed_clients", str(exc)) from None
        auth = top.str_list("auth", ())
        # Logins need a directory: the embedded SQLite one unless another is named.
        users = top.str("users", "sqlite" if auth else None)
        http_client = top.choice("http_client", "auto", HTTP_CLIENTS)
        if http_client == "httptools":
            _check_httptools(top, services)
        user_data = top.str_list("user_data", DEFAULT_USER_DATA)
        if "pk" not in user_data:
            raise top.error("user_data", "must contain 'pk'")
        config = cls(
            secret_key=secret_key,
            services=services,
            dev_mode=dev_mode,
            site_name=top.str("site_name", "PlugIt") or "PlugIt",
            theme=top.str("theme", "bootstrap") or "bootstrap",
            cache=top.str("cache", "memory") or "memory",
            session=top.str("session", "cookie") or "cookie",
            auth=auth,
            users=users,
            billing=top.str("billing") or None,
            mail=top.str("mail") or None,
            user_data=user_data,
            allowed_redirect_hosts=tuple(
                h.lower() for h in top.str_list("allowed_redirect_hosts", ())
            ),
            trusted_proxies=trusted,
            dev_allowed_clients=dev_allowed,
            max_upload_size=top.number(
                "max_upload_size", 16 * 1024 * 1024, minimum=0, integer=True
            ),
            http_client=http_client,
            pages=_pages(top.raw("pages", []), services, source),
            source=source,
            sections={
                k: v for k, v in data.items() if isinstance(v, Mapping) and k not in top.seen
            },
        )
        # Remaining top-level tables belong to backends; they check them when built.
        top.finish(allowed_extra=set(config.sections))
        return config


def _check_not_known(secret: str, reader: SectionReader, key: str) -> None:
    """Refuse the dev-mode key, the keys printed in this repository and obvious placeholders:
    anyone can read them, so anyone could sign sessions (log in as anyone) with them."""
    folded = secret.strip().lower()
    if secret.strip() in KNOWN_KEYS or any(word in folded for word in _PLACEHOLDER_WORDS):
        raise reader.error(
            key,
            "is a published example or dev-mode key, which anyone can use to sign sessions: "
            f"make your own with {MAKE_A_KEY}",
        )


def _check_strong(secret: str, reader: SectionReader, key: str) -> None:
    if len(secret) < 32 or len(set(secret)) < 10:
        raise reader.error(
            key, f"is too weak: use at least 32 random characters (make one with {MAKE_A_KEY})"
        )


def httptools_available() -> bool:
    """Whether the ``speedups`` extra (httptools) is installed, for ``http_client``."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def _check_httptools(reader: SectionReader, services: tuple[ServiceMount, ...]) -> None:
    if not httptools_available():
        raise reader.error("http_client", "'httptools' needs: pip install 'plugit-wsgi[speedups]'")
    for mount in services:
        urls = [mount.url, *(v.url for v in mount.variants), mount.shadow_url]
        for url in filter(None, urls):
            if not url.startswith("http://"):
                raise reader.error(
                    "http_client",
                    f"'httptools' speaks plain http; service {mount.name!r} is at {url} "
                    "(use 'auto' or 'urllib3')",
                )


def _service(data: Any, index: int, source: str | None) -> ServiceMount:
    r = SectionReader(data, f"services[{index}].", source)
    name = r.str("name", required=True)
    assert name is not None
    if not _NAME.match(name):
        raise r.error("name", f"must be lower-case letters, digits, '-' or '_', got {name!r}")
    url = _url(r, "url", required=True)
    assert url is not None
    mount = r.str("mount", f"/{name}/")
    assert mount is not None
    if not mount.startswith("/") or not mount.endswith("/"):
        raise r.error("mount", f"must start and end with '/', got {mount!r}")
    if any(mount.startswith(reserved) for reserved in _RESERVED_MOUNTS):
        raise r.error("mount", f"{mount!r} is reserved by the proxy")
    secret = r.str("secret")
    if secret is not None and len(secret) < 16:
        raise r.error("secret", "must be at least 16 characters long")
    mount_obj = ServiceMount(
        name=name,
        url=url,
        mount=mount,
        title=r.str("title", name.replace("_", " ").replace("-", " ").title()) or name,
        timeout=r.number("timeout", 5.0, minimum=0.001),
        connect_timeout=r.number("connect_timeout", 2.0, minimum=0.001),
        template_dialect=r.choice("template_dialect", "jinja", ("jinja", "django")),
        secret=secret,
        api_key=r.str("api_key"),
        orga_mode=r.bool("orga_mode", False),
        proxy_mode=r.bool("proxy_mode", False),
        menu_block=r.str("menu_block", "menubar") or "menubar",
        layout=r.choice("layout", "default", ("default", "menu")),
        max_concurrency=r.number("max_concurrency", 32, minimum=1, integer=True),
        max_response_size=r.number(
            "max_response_size", 10 * 1024 * 1024, minimum=1024, integer=True
        ),
        breaker_failures=r.number("breaker_failures", 5, minimum=1, integer=True),
        breaker_reset=r.number("breaker_reset", 30.0, minimum=0.1),
        required=r.bool("required", False),
        stale_for=r.number("stale_for", 3600.0, minimum=0),
        fallback_html=r.str("fallback_html"),
        variants=_variants(r.raw("variants", []), index, source),
        shadow_url=_url(r, "shadow_url", required=False),
        shadow_secret=r.str("shadow_secret"),
        options=dict(r.raw("options", {}) or {}),
        trust=r.choice("trust", "sandboxed", TRUST_LEVELS),
        theme=r.str("theme") or None,
        render_cpu_time=r.number("render_cpu_time", 0.5, minimum=0.001),
        render_max_iterations=r.number("render_max_iterations", 100_000, minimum=1, integer=True),
        render_max_output=r.number("render_max_output", 5_000_000, minimum=1024, integer=True),
        render_max_size=r.number("render_max_size", 1_000_000, minimum=1024, integer=True),
    )
    r.finish()
    return mount_obj


def _url(r: SectionReader, key: str, *, required: bool) -> str | None:
    url = r.str(key, required=required)
    if url is None:
        return None
    if not re.match(r"^https?://[^/\s]+", url):
        raise r.error(key, f"must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def _variants(data: Any, index: int, source: str | None) -> tuple[Variant, ...]:
    if not isinstance(data, list):
        raise ConfigError(
            f"services[{index}].variants", "expected [[services.variants]] tables", source
        )
    variants = []
    for n, item in enumerate(data):
        r = SectionReader(item, f"services[{index}].variants[{n}].", source)
        name = r.str("name", required=True)
        assert name is not None
        if not _NAME.match(name):
            raise r.error("name", f"must be lower-case letters, digits, '-' or '_', got {name!r}")
        cookie = r.str("cookie")
        if cookie is not None and (cookie.count("=") != 1 or not cookie.split("=")[0]):
            raise r.error("cookie", f"expected name=value, got {cookie!r}")
        roles = r.str_list("roles", ())
        if set(roles) - {"member", "admin", "superuser"}:
            raise r.error("roles", "roles are member, admin or superuser")
        variant = Variant(
            name=name,
            url=_url(r, "url", required=True) or "",
            secret=r.str("secret"),
            users=r.str_list("users", ()),
            orgas=r.str_list("orgas", ()),
            roles=roles,
            cookie=tuple(cookie.split("=", 1)) if cookie else None,  # type: ignore[arg-type]
        )
        if not (variant.users or variant.orgas or variant.roles or variant.cookie):
            raise r.error(
                "name", "a variant needs at least one rule: users, orgas, roles or cookie"
            )
        r.finish()
        variants.append(variant)
    return tuple(variants)


def _fragment_specs(
    data: Any, key: str, services: Mapping[str, ServiceMount], source: str | None
) -> tuple[FragmentSpec, ...]:
    if not isinstance(data, list):
        raise ConfigError(key, "expected a list of fragment tables", source)
    specs = []
    for n, item in enumerate(data):
        r = SectionReader(item, f"{key}[{n}].", source)
        service = r.str("service", required=True)
        if service not in services:
            known = ", ".join(sorted(services)) or "none"
            raise r.error("service", f"no service is named {service!r} (services: {known})")
        path = r.str("path", "") or ""
        if any(ord(c) < 0x20 for c in path) or path.startswith("//"):
            raise r.error("path", f"must be an action path of the service, got {path!r}")
        timeout = r.raw("timeout", None)
        specs.append(
            FragmentSpec(
                service=str(service),
                path=path.lstrip("/"),
                fallback=r.str("fallback"),
                placeholder=r.str("placeholder"),
                timeout=None if timeout is None else r.number("timeout", 0.0, above=0),
                title=r.str("title"),
            )
        )
        r.finish()
    return tuple(specs)


def _pages(
    data: Any, services: tuple[ServiceMount, ...], source: str | None
) -> tuple[SitePage, ...]:
    """``[[pages]]``: site pages composed of fragments of the services."""
    if not isinstance(data, list):
        raise ConfigError("pages", "expected [[pages]] tables", source)
    by_name = {m.name: m for m in services}
    pages: list[SitePage] = []
    for index, item in enumerate(data):
        r = SectionReader(item, f"pages[{index}].", source)
        path = r.str("path", required=True)
        assert path is not None
        if not path.startswith("/") or any(ord(c) < 0x21 for c in path) or "<" in path:
            raise r.error("path", f"must be a path of the site starting with '/', got {path!r}")
        if any(path.startswith(reserved) for reserved in _RESERVED_MOUNTS):
            raise r.error("path", f"{path!r} is reserved by the proxy")
        for mount in services:
            if path.startswith(mount.mount) or path + "/" == mount.mount:
                raise r.error("path", f"{path!r} is below the mount of service {mount.name!r}")
        if any(page.path == path for page in pages):
            raise r.error("path", f"{path!r} is used twice")
        page = SitePage(
            path=path,
            title=r.str("title", required=True) or path,
            fragments=_fragment_specs(
                r.raw("fragments", []), f"pages[{index}].fragments", by_name, source
            ),
            columns=r.number("columns", 1, minimum=1, maximum=4, integer=True),
        )
        r.finish()
        pages.append(page)
    return tuple(pages)


def _check_unique(services: tuple[ServiceMount, ...], source: str | None) -> None:
    names: set[str] = set()
    mounts: set[str] = set()
    for i, service in enumerate(services):
        if service.name in names:
            raise ConfigError(f"services[{i}].name", f"{service.name!r} is used twice", source)
        if service.mount in mounts:
            raise ConfigError(f"services[{i}].mount", f"{service.mount!r} is used twice", source)
        names.add(service.name)
        mounts.add(service.mount)


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read and validate a TOML configuration file."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"cannot read the file: {exc.strerror}", source) from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", "the file is not UTF-8 text", source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}", source) from None
    return ProxyConfig.from_mapping(data, source)
