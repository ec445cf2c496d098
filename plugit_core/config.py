"""Proxy configuration: one TOML file, validated at start-up.

Every error names the key (``services[1].timeout``) and the file, so a typo is found at once.
Secrets may be given inline or, better, read from the environment with an inline table:
``secret_key = { env = "PLUGIT_SECRET_KEY" }``.

Backends read their own table, named after them (``[cache_memory]``, ``[session_cookie]``);
:meth:`ProxyConfig.section` hands it over and :meth:`ProxyConfig.read` reads it into the
backend's settings dataclass (:mod:`plugit_core.settings`, the one reader of every table, this
file's own sections included).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .networks import parse_networks
from .settings import ConfigError, Section, SettingError, read_section, setting
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
T = TypeVar("T")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"must be lower-case letters, digits, '-' or '_', got {value!r}")
    return value


def _service_url(value: str) -> str:
    """A service's URL, without its trailing slash."""
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _mount(value: str) -> str:
    if not value.startswith("/") or not value.endswith("/"):
        raise ValueError(f"must start and end with '/', got {value!r}")
    if any(value.startswith(reserved) for reserved in _RESERVED_MOUNTS):
        raise ValueError(f"{value!r} is reserved by the proxy")
    return value


def _service_secret(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters long")
    return value


def _cookie_rule(value: Any) -> tuple[str, str]:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if value.count("=") != 1 or not value.split("=")[0]:
        raise ValueError(f"expected name=value, got {value!r}")
    name, _, cookie = value.partition("=")
    return name, cookie


def _roles(value: tuple[str, ...]) -> tuple[str, ...]:
    if set(value) - {"member", "admin", "superuser"}:
        raise ValueError("roles are member, admin or superuser")
    return value


@dataclass(frozen=True)
class Variant:
    """Another build of a service (a canary, a development build), chosen per request.

    A request goes to the first variant one of whose rules matches: the user's name in
    ``users``, one of the user's organisations in ``orgas``, one of the user's roles for the
    service (``member``, ``admin``, ``superuser``) in ``roles``, or the browser's cookie
    ``cookie = "name=value"``.
    """

    name: str = setting(check=_name, help="the variant's name, in logs and metrics")
    url: str = setting(check=_service_url, help="where this build of the service answers")
    secret: str | None = setting(None, secret=True, help="its own signing secret")
    users: tuple[str, ...] = setting((), help="user names sent to it")
    orgas: tuple[str, ...] = setting((), help="organisations whose members are sent to it")
    roles: tuple[str, ...] = setting((), check=_roles, help="roles sent to it")
    cookie: tuple[str, str] | None = setting(
        None, parse=_cookie_rule, help='"name=value": browsers with that cookie are sent to it'
    )

    def settings_check(self) -> None:
        """A variant without a rule would never be chosen: refused."""
        if not (self.users or self.orgas or self.roles or self.cookie):
            raise SettingError(
                "a variant needs at least one rule: users, orgas, roles or cookie", "name"
            )


def _action_path(value: str) -> str:
    if any(ord(c) < 0x20 for c in value) or value.startswith("//"):
        raise ValueError(f"must be an action path of the service, got {value!r}")
    return value.lstrip("/")


@dataclass(frozen=True)
class FragmentSpec:
    """One fragment placed on a page: the action at ``path`` of the service ``service``,
    rendered without the layout (see docs/fragments.md).

    ``fallback`` is the markup shown when the service fails or is slower than ``timeout``
    (seconds; None: the service's own ``timeout``), ``placeholder`` the markup shown to a
    visitor whom the action's access rules refuse; ``title`` heads it on a site page.
    """

    service: str = setting(help="the name of a mounted service")
    path: str = setting("", check=_action_path, help="the action's path in the service")
    fallback: str | None = setting(None, help="markup shown when the service fails")
    placeholder: str | None = setting(None, help="markup shown to visitors refused access")
    timeout: float | None = setting(None, above=0, help="seconds (default: the service's)")
    title: str | None = setting(None, help="its heading on a site page")


def _site_path(value: str) -> str:
    if not value.startswith("/") or any(ord(c) < 0x21 for c in value) or "<" in value:
        raise ValueError(f"must be a path of the site starting with '/', got {value!r}")
    if any(value.startswith(reserved) for reserved in _RESERVED_MOUNTS):
        raise ValueError(f"{value!r} is reserved by the proxy")
    return value


@dataclass(frozen=True)
class SitePage:
    """A page of the site declared in the configuration (``[[pages]]``): a title and fragments
    of any services, in the site's layout, in ``columns`` columns on wide screens."""

    path: str = setting(check=_site_path, help="its path on the site")
    title: str = setting(help="its title (empty: its path)")
    fragments: tuple[FragmentSpec, ...] = setting(
        (), expected="a list of fragment tables", help="the fragments it shows, in order"
    )
    columns: int = setting(1, minimum=1, maximum=4, help="columns on wide screens")


def _title(values: Mapping[str, Any]) -> str:
    name: str = values["name"]
    return name.replace("_", " ").replace("-", " ").title() or name


@dataclass(frozen=True)
class ServiceMount:
    """One service mounted on the proxy (``[[services]]``)."""

    name: str = setting(check=_name, help="the service's name, in URLs of the API and logs")
    url: str = setting(check=_service_url, help="where the service answers")
    mount: str = setting(
        default_from=lambda values: f"/{values['name']}/",
        check=_mount,
        help="its path on the site (default: /<name>/)",
    )
    title: str = setting(default_from=_title, help="its title in menus (empty: its name)")
    timeout: float = setting(5.0, minimum=0.001, help="seconds an action may take")
    connect_timeout: float = setting(2.0, minimum=0.001, help="seconds to connect")
    template_dialect: str = setting(
        "jinja", choices=("jinja", "django"), help="the language of its templates"
    )
    secret: str | None = setting(
        None, secret=True, check=_service_secret, help="the key requests to it are signed with"
    )
    api_key: str | None = setting(None, secret=True, help="the key it calls the API with")
    orga_mode: bool = setting(False, help="its data belongs to organisations")
    proxy_mode: bool = setting(False, help="its pages are sent as they are, without the layout")
    menu_block: str = setting("menubar", blank_is_missing=True, help="the block of its menu")
    layout: str = setting("default", choices=("default", "menu"), help="the site layout used")
    max_concurrency: int = setting(32, minimum=1, help="requests to it at once")
    max_response_size: int = setting(10 * 1024 * 1024, minimum=1024, help="bytes of a reply")
    breaker_failures: int = setting(5, minimum=1, help="failures in a row that open the circuit")
    breaker_reset: float = setting(30.0, minimum=0.1, help="seconds before trying again")
    # Is the proxy not ready (/_plugit/ready answers 503) while this service's circuit is open?
    required: bool = setting(False, help="the proxy is not ready while the service is down")
    stale_for: float = setting(3600.0, help="seconds a stale page may stand in for a failure")
    fallback_html: str | None = setting(None, help="markup shown when the service fails")
    variants: tuple[Variant, ...] = setting(
        (), expected="[[services.variants]] tables", help="other builds chosen per request"
    )
    shadow_url: str | None = setting(None, check=_service_url, help="a build sent copies")
    shadow_secret: str | None = setting(None, secret=True, help="the shadow build's secret")
    options: Mapping[str, Any] = setting(
        default_factory=dict, check=dict, help="what the service's own code reads"
    )
    # How far the site trusts the service's HTML: "sandboxed" (sanitised, strict CSP) or "full".
    trust: str = setting("sandboxed", choices=TRUST_LEVELS, help="how far its HTML is trusted")
    # The theme of its pages (a registered theme backend), when not the site's.
    theme: str | None = setting(None, blank_is_missing=True, help="its theme, when not the site's")
    # The budget of one render of its templates (plugit_core.proxy.sandbox.RenderBudget).
    render_cpu_time: float = setting(0.5, minimum=0.001, help="CPU seconds of one render")
    render_max_iterations: int = setting(100_000, minimum=1, help="loop turns of one render")
    render_max_output: int = setting(5_000_000, minimum=1024, help="characters one render makes")
    render_max_size: int = setting(1_000_000, minimum=1024, help="characters of a template")

    @property
    def media_url(self) -> str:
        return self.mount + "media/"


def _secret_key(values: Mapping[str, Any]) -> str:
    if not values["dev_mode"]:
        raise SettingError(f"is required outside dev mode: make one with {MAKE_A_KEY}")
    return DEV_SECRET_KEY


def _networks(setting_name: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value, setting=setting_name)
        return value

    return check


def _user_data(value: tuple[str, ...]) -> tuple[str, ...]:
    if "pk" not in value:
        raise ValueError("must contain 'pk'")
    return value


@dataclass(frozen=True)
class ProxyConfig:
    """The whole proxy configuration: the top level of the file."""

    secret_key: str = setting(
        default_from=_secret_key,
        blank_is_missing=True,
        secret=True,
        help="the key sessions and requests to services are signed with",
    )
    services: tuple[ServiceMount, ...] = setting(
        (), expected="[[services]] tables", help="the mounted services"
    )
    dev_mode: bool = setting(False, help="development mode: never in production")
    site_name: str = setting("PlugIt", blank_is_missing=True, help="the site's name")
    theme: str = setting("bootstrap", blank_is_missing=True, help="the theme backend")
    cache: str = setting("memory", blank_is_missing=True, help="the cache backend")
    session: str = setting("cookie", blank_is_missing=True, help="the session backend")
    auth: tuple[str, ...] = setting((), help="the login backends, in order")
    # Logins need a directory: the embedded SQLite one unless another is named.
    users: str | None = setting(
        None,
        default_from=lambda values: "sqlite" if values["auth"] else None,
        help="the user directory backend",
    )
    billing: str | None = setting(None, blank_is_missing=True, help="the billing backend")
    mail: str | None = setting(None, blank_is_missing=True, help="the mail backend")
    user_data: tuple[str, ...] = setting(
        DEFAULT_USER_DATA, check=_user_data, help="user properties services may receive"
    )
    allowed_redirect_hosts: tuple[str, ...] = setting(
        (),
        check=lambda hosts: tuple(h.lower() for h in hosts),
        help="hosts services may redirect to",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (), check=_networks("trusted_proxies"), help="proxies whose X-Forwarded-* are believed"
    )
    dev_allowed_clients: tuple[str, ...] = setting(
        (),
        non_empty=True,
        check=_networks("dev_allowed_clients"),
        help="who may use a dev-mode proxy",
    )
    max_upload_size: int = setting(16 * 1024 * 1024, help="bytes of a request's body")
    http_client: str = setting("auto", choices=HTTP_CLIENTS, help="how services are called")
    pages: tuple[SitePage, ...] = setting(
        (), expected="[[pages]] tables", help="pages composed of fragments"
    )
    source: str | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        """The table ``[name]`` of the file (empty when absent), for the backend called ``name``."""
        return self.sections.get(name, {})

    def read(
        self,
        cls: type[T],
        name: str,
        section: Mapping[str, Any] | None = None,
        *,
        blank_is_missing: bool = False,
    ) -> T:
        """The table ``[name]`` (or ``section``, the table a backend's factory is handed) read
        into the settings dataclass ``cls`` (:func:`plugit_core.settings.read_section`), its
        errors naming ``name.key`` and this file."""
        data = self.section(name) if section is None else section
        return read_section(cls, data, name, self.source, blank_is_missing=blank_is_missing)

    def error(self, key: str, message: str) -> ConfigError:
        """The error of the setting ``key`` (a dotted path) in this file."""
        return ConfigError(key, message, self.source)

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
        top = Section("", source)
        names = {f.name for f in fields(cls)}
        # Top-level tables that are not settings belong to backends; they check them when built.
        sections = {k: v for k, v in data.items() if isinstance(v, Mapping) and k not in names}
        config = read_section(cls, data, "", source, extra_keys=sections)
        if not config.dev_mode:
            _check_not_known(config.secret_key, top, "secret_key")
            if check_secret:
                _check_strong(config.secret_key, top, "secret_key")
        _check_unique(config.services, top)
        if config.http_client == "httptools":
            _check_httptools(top, config.services)
        _check_pages(config, top)
        # An empty title stands for the service's name, the page's path.
        services = tuple(replace(m, title=m.title or m.name) for m in config.services)
        pages = tuple(replace(p, title=p.title or p.path) for p in config.pages)
        return replace(config, services=services, pages=pages, source=source, sections=sections)


def _check_not_known(secret: str, top: Section, key: str) -> None:
    """Refuse the dev-mode key, the keys printed in this repository and obvious placeholders:
    anyone can read them, so anyone could sign sessions (log in as anyone) with them."""
    folded = secret.strip().lower()
    if secret.strip() in KNOWN_KEYS or any(word in folded for word in _PLACEHOLDER_WORDS):
        raise top.error(
            key,
            "is a published example or dev-mode key, which anyone can use to sign sessions: "
            f"make your own with {MAKE_A_KEY}",
        )


def _check_strong(secret: str, top: Section, key: str) -> None:
    if len(secret) < 32 or len(set(secret)) < 10:
        raise top.error(
            key, f"is too weak: use at least 32 random characters (make one with {MAKE_A_KEY})"
        )


def httptools_available() -> bool:
    """Whether the ``speedups`` extra (httptools) is installed, for ``http_client``."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def _check_httptools(top: Section, services: tuple[ServiceMount, ...]) -> None:
    if not httptools_available():
        raise top.error("http_client", "'httptools' needs: pip install 'plugit-wsgi[speedups]'")
    for mount in services:
        urls = [mount.url, *(v.url for v in mount.variants), mount.shadow_url]
        for url in filter(None, urls):
            if not url.startswith("http://"):
                raise top.error(
                    "http_client",
                    f"'httptools' speaks plain http; service {mount.name!r} is at {url} "
                    "(use 'auto' or 'urllib3')",
                )


def _check_pages(config: ProxyConfig, top: Section) -> None:
    """What a page's reading alone cannot check: its place among the mounts and other pages,
    and that its fragments name mounted services."""
    known = ", ".join(sorted(m.name for m in config.services)) or "none"
    for index, page in enumerate(config.pages):
        where = f"pages[{index}]"
        for mount in config.services:
            if page.path.startswith(mount.mount) or page.path + "/" == mount.mount:
                raise top.error(
                    f"{where}.path", f"{page.path!r} is below the mount of service {mount.name!r}"
                )
        if any(other.path == page.path for other in config.pages[:index]):
            raise top.error(f"{where}.path", f"{page.path!r} is used twice")
        for n, spec in enumerate(page.fragments):
            if not any(spec.service == mount.name for mount in config.services):
                raise top.error(
                    f"{where}.fragments[{n}].service",
                    f"no service is named {spec.service!r} (services: {known})",
                )


def _check_unique(services: tuple[ServiceMount, ...], top: Section) -> None:
    names: set[str] = set()
    mounts: set[str] = set()
    for i, service in enumerate(services):
        if service.name in names:
            raise top.error(f"services[{i}].name", f"{service.name!r} is used twice")
        if service.mount in mounts:
            raise top.error(f"services[{i}].mount", f"{service.mount!r} is used twice")
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
