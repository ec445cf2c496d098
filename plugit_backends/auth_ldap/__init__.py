"""Log in against an LDAP directory (OpenLDAP, Active Directory, 389 DS...), with ``ldap3``.

A password backend (``auth = ["ldap"]``): the proxy's login form sends the user name and password
here.  The login is *search then bind*:

1. a service account (``bind_dn``; anonymous when absent) searches ``user_search_base`` with
   ``user_filter``, the typed user name escaped (RFC 4515) so that ``*``, ``(``, ``)``, ``\\`` and
   NUL match themselves and nothing else.  Exactly one entry must match;
2. a fresh connection binds as that entry's DN with the password: the directory checks it;
3. the entry's groups (its ``memberOf`` values, or a group search) are mapped to service roles and
   organisations by ``[auth_ldap.groups]``, and the user is created or updated in the proxy's
   directory (``sync_external_user``): the memberships this directory granted are replaced at each
   login, so a user removed from a group loses its rights at the next login.

An empty password is refused before anything is sent: to an LDAP server, a simple bind with a DN
and no password is an *unauthenticated* bind that succeeds (RFC 4513 5.1.2).

Errors never escape as exceptions: an unreachable server, a timeout or a TLS failure is
:class:`~plugit_core.identity.AuthError` ``unavailable`` (the login page says so and the other
login methods still work); a wrong password or an unknown user is ``bad_credentials``; a right
password on an account the directory marks disabled or locked is ``disabled`` (never said for a
wrong password: that would tell anyone which accounts exist).

Configuration (see ``docs/auth-ldap.md``)::

    auth = ["ldap"]

    [auth_ldap]
    server = "ldaps://ldap.example.org"           # ldap://host[:port] or ldaps://host[:port]
    bind_dn = "cn=plugit,ou=system,dc=example,dc=org"
    bind_password = { env = "PLUGIT_LDAP_PASSWORD" }
    user_search_base = "ou=people,dc=example,dc=org"
    superuser_groups = ["cn=admins,ou=groups,dc=example,dc=org"]

    [auth_ldap.groups."cn=staff,ou=groups,dc=example,dc=org"]
    services = { polls = "member" }        # service name (or "*") = "member" or "admin"
    orgas = { Acme = "admin" }             # organisation name = "member" or "admin"
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import ssl
import string
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import AuthError, GroupGrant, grant_memberships, parse_group_grants
from plugit_core.networks import is_loopback_host
from plugit_core.settings import Section, SettingError, setting
from plugit_core.users import PlugItUser

# ldap3 is the `ldap` extra: without it this plugin still loads (so it can be a built-in), and
# only a configuration that uses it fails, with a message saying what to install.
try:
    # ldap3 2.9 imports names that pyasn1 >= 0.6.1 deprecates (tagMap, typeMap): a
    # DeprecationWarning at import time that says nothing about our use.  Silence exactly that,
    # for this import only.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"(tagMap|typeMap) is deprecated", category=DeprecationWarning
        )
        from ldap3 import NO_ATTRIBUTES, NONE, SUBTREE, Connection, Server, Tls
        from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
        from ldap3.utils.conv import escape_filter_chars
        from ldap3.utils.dn import parse_dn
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    LDAP3_MISSING: ImportError | None = exc
    Tls = object  # type: ignore[assignment,misc]
    LDAPException = LDAPInvalidDnError = OSError  # type: ignore[assignment,misc]
else:
    LDAP3_MISSING = None

__all__ = ["LDAPAuth", "LDAPSettings", "dn_key", "settings_from_config"]

log = logging.getLogger("plugit.auth.ldap")

SECTION = "auth_ldap"
DEFAULT_USER_FILTER = "(uid={username})"
DEFAULT_GROUP_FILTER = "(|(member={dn})(uniqueMember={dn}))"
MAX_USERNAME = 256

# Attributes read to tell a locked or disabled account (OpenLDAP ppolicy, 389 DS / FreeIPA, AD).
LOCK_ATTRIBUTES = ("pwdAccountLockedTime", "nsAccountLock", "userAccountControl")
PPOLICY_OID = "1.3.6.1.4.1.42.2.27.8.5.1"  # draft-behera-ldap-password-policy
PPOLICY_ERRORS = {0: "password expired", 1: "account locked", 2: "password must be changed"}
# Active Directory's sub-codes in the message of a failed bind that it sends only when the
# password is right (775, "account locked", comes whatever the password: not in this list).
AD_DISABLED = {
    "530": "not permitted to log on at this time",
    "531": "not permitted to log on at this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be reset",
}
_AD_CODE = re.compile(r"\bdata ([0-9a-fA-F]{3,4})\b")
_PLACEHOLDER = re.compile(r"\{(dn|username)\}")
_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")

UNAVAILABLE = "The company directory cannot be reached right now."
BAD_CREDENTIALS = "Wrong user name or password."
DISABLED = "This account is disabled."


# -- settings -------------------------------------------------------------------------------------


def _server(value: str) -> str:
    split = urlsplit(value)
    if split.scheme not in ("ldap", "ldaps") or not split.hostname:
        raise ValueError(f"expected ldap://host[:port] or ldaps://host[:port], got {value!r}")
    if split.username or split.password or split.path not in ("", "/") or split.query:
        raise ValueError("only ldap[s]://host[:port] (no user, path or query)")
    try:
        split.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    return value


def _validate(value: Any) -> bool:
    if value not in ("required", "none", ""):
        raise ValueError(f'must be "required" or "none", got {value!r}')
    return value != "none"


def _attribute(*, allow_dn: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        if allow_dn and value.lower() == "dn":
            return "dn"
        if not _ATTRIBUTE.match(value):
            raise ValueError(f"not an LDAP attribute name: {value!r}")
        return value

    return check


def _dn(value: Any) -> tuple[tuple[str, str], ...]:
    """The normalised key of a distinguished name, or ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a distinguished name (cn=...,dc=...)")
    try:
        return dn_key(value)
    except LDAPInvalidDnError:
        raise ValueError(f"not a valid distinguished name: {value!r}") from None


def _dn_text(value: str) -> str:
    _dn(value)
    return value


def _search_filter(*placeholders: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not any("{" + p + "}" in value for p in placeholders):
            raise ValueError(f"must contain {' or '.join('{' + p + '}' for p in placeholders)}")
        if not _balanced(value):
            raise ValueError(f"not an LDAP filter (unbalanced parentheses): {value!r}")
        leftover = value
        for p in placeholders:
            leftover = leftover.replace("{" + p + "}", "")
        if "{" in leftover or "}" in leftover:
            names = ", ".join("{" + p + "}" for p in placeholders)
            raise ValueError(f"only {names} may appear in braces")
        return value

    return check


def _group_dns(value: Any) -> frozenset[tuple[tuple[str, str], ...]]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("expected a list of group DNs")
    keys = set()
    for i, dn in enumerate(value):
        try:
            keys.add(_dn(dn))
        except ValueError as exc:
            raise SettingError(str(exc), f"[{i}]") from None
    return frozenset(keys)


@dataclass(frozen=True)
class LDAPSettings:
    """The ``[auth_ldap]`` table, checked (see docs/auth-ldap.md)."""

    server: str = setting(check=_server, help="ldap://host[:port] or ldaps://host[:port]")
    user_search_base: str = setting(check=_dn_text, help="where users are searched")
    label: str = setting("Company directory", help="the name on the login page")
    start_tls: bool = setting(False, help="upgrade ldap:// to TLS")
    ca_file: str | None = setting(None, help="the CA bundle the server is checked against")
    validate: bool = setting(True, parse=_validate, help='"required" or "none"')
    allow_plaintext: bool = setting(False, help="passwords may cross a trusted network in clear")
    timeout: float = setting(5.0, above=0, maximum=300, help="seconds of a directory exchange")
    bind_dn: str | None = setting(None, check=_dn_text, help="the service account")
    bind_password: str | None = setting(None, secret=True, help="its password")
    user_filter: str = setting(
        DEFAULT_USER_FILTER, check=_search_filter("username"), help="finds a user"
    )
    id_attribute: str = setting(
        "entryUUID", check=_attribute(allow_dn=True), help="the stable id of an entry"
    )
    username_attribute: str = setting("uid", check=_attribute(), help="the user name")
    email_attribute: str = setting("mail", check=_attribute(), help="the e-mail address")
    first_name_attribute: str = setting("givenName", check=_attribute(), help="the first name")
    last_name_attribute: str = setting("sn", check=_attribute(), help="the last name")
    member_of_attribute: str = setting("memberOf", check=_attribute(), help="the user's groups")
    group_search_base: str | None = setting(None, check=_dn_text, help="where groups are")
    group_filter: str = setting(
        DEFAULT_GROUP_FILTER, check=_search_filter("dn", "username"), help="finds user's groups"
    )
    groups: Mapping[tuple[tuple[str, str], ...], GroupGrant] = setting(
        default_factory=dict,
        expected="a table of group DN = { services = {...}, ... }",
        help="what membership of each group gives",
    )
    superuser_groups: frozenset[tuple[tuple[str, str], ...]] = setting(
        frozenset(), parse=_group_dns, help="groups whose members administer every service"
    )

    @property
    def use_ssl(self) -> bool:
        return urlsplit(self.server).scheme == "ldaps"

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.server).port or (636 if self.use_ssl else 389)

    @property
    def tls(self) -> bool:
        return self.use_ssl or self.start_tls

    @property
    def source(self) -> str:
        """The ``source`` of the users this directory vouches for, in the proxy's directory."""
        return f"ldap:{self.host.lower()}"


def _balanced(value: str) -> bool:
    if not (value.startswith("(") and value.endswith(")")):
        return False
    depth = 0
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def settings_from_config(config: ProxyConfig, section: Mapping[str, Any]) -> LDAPSettings:
    """Validate the ``[auth_ldap]`` table; raise :class:`ConfigError` naming the faulty key."""
    if LDAP3_MISSING is not None:
        raise ConfigError(
            SECTION,
            f"the ldap auth backend needs ldap3: pip install 'plugit-wsgi[ldap]' ({LDAP3_MISSING})",
            config.source,
        )
    s = config.read(LDAPSettings, SECTION, section, blank_is_missing=True)
    where = Section(SECTION, config.source)
    if s.start_tls and s.use_ssl:
        raise where.error("start_tls", "ldaps:// already uses TLS; start_tls is for ldap://")
    if s.ca_file is not None:
        if not s.tls:
            raise where.error("ca_file", "only used with ldaps:// or start_tls = true")
        if not os.path.isfile(s.ca_file) or not os.access(s.ca_file, os.R_OK):
            raise where.error("ca_file", f"cannot read {s.ca_file!r}")
    if not s.tls and not s.allow_plaintext and not is_loopback_host(s.host):
        raise where.error(
            "server",
            "passwords would cross the network in clear: use ldaps://, start_tls = true, "
            "or set allow_plaintext = true if the network is trusted",
        )
    if s.bind_dn is not None and not s.bind_password:
        # A DN without a password is an unauthenticated bind: it "succeeds" as anonymous.
        raise where.error("bind_password", "is required with bind_dn")
    if s.bind_dn is None and s.bind_password is not None:
        raise where.error("bind_password", "is only used with bind_dn")
    if s.group_search_base is None and "group_filter" in section:
        raise where.error("group_filter", "is only used with group_search_base")

    def group_key(key: str, dn: Any) -> tuple[tuple[str, str], ...]:
        try:
            return _dn(dn)
        except ValueError as exc:
            raise where.error(key, str(exc)) from None

    services = {mount.name for mount in config.services}
    groups = parse_group_grants(
        where, s.groups, services, group_key=group_key, described="group DN"
    )
    return replace(s, groups=groups)


# -- distinguished names --------------------------------------------------------------------------


def _unescape(value: str) -> str:
    """An RFC 4514 attribute value without its escapes (``\\,``, ``\\5C``)."""
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in string.hexdigits for c in pair):
                out += bytes.fromhex(pair)
                i += 3
                continue
            out += value[i + 1].encode("utf-8")
            i += 2
            continue
        out += char.encode("utf-8")
        i += 1
    return out.decode("utf-8", "replace")


def dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN in a form to compare: attribute types and values lower-cased, escapes and spaces
    undone (``CN=Staff, ou=Groups`` and ``cn=staff,ou=groups`` are the same group)."""
    return tuple(
        (attr.strip().lower(), _unescape(value.strip()).lower())
        for attr, value, _ in parse_dn(dn, escape=False, strip=True)
    )


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\5c").replace(",", "\\2c").replace("+", "\\2b")


def _safe_dn_key(dn: str) -> tuple[tuple[str, str], ...] | None:
    try:
        return dn_key(dn)
    except LDAPInvalidDnError:
        return None


# -- TLS ------------------------------------------------------------------------------------------


class _Tls(Tls):
    """ldap3's TLS settings, with a Python :class:`ssl.SSLContext` doing all the checking.

    The context verifies the chain against ``ca_file`` (or the system's CAs) *and* the host name,
    inside the handshake; ldap3's own host name check (``ssl.match_hostname``, deprecated) is
    never used.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(validate=context.verify_mode)
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        host = connection.server.host
        connection.socket = self.context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=host,
        )


def _ssl_context(settings: LDAPSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.validate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- the backend ----------------------------------------------------------------------------------


def _first(attributes: Mapping[str, Any], name: str) -> str:
    value = attributes.get(name.lower())
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    value = attributes.get(name.lower())
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items]


def _ppolicy_error(result: Mapping[str, Any]) -> int | None:
    """The ``error`` of a password policy response control (draft-behera), or None.

    PasswordPolicyResponseValue ::= SEQUENCE { warning [0] ... OPTIONAL, error [1] ENUMERATED
    OPTIONAL }: a few bytes of BER, read here without a schema.
    """
    control = (result.get("controls") or {}).get(PPOLICY_OID)
    value = control.get("value") if isinstance(control, Mapping) else None
    if not isinstance(value, bytes) or len(value) < 2 or value[0] != 0x30:
        return None

    def tlv(data: bytes, at: int) -> tuple[int, bytes, int] | None:
        if at + 2 > len(data):
            return None
        tag, length, at = data[at], data[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or at + count > len(data):
                return None
            length, at = int.from_bytes(data[at : at + count], "big"), at + count
        if at + length > len(data):
            return None
        return tag, data[at : at + length], at + length

    outer = tlv(value, 0)
    if outer is None:
        return None
    body, at = outer[1], 0
    while at < len(body):
        item = tlv(body, at)
        if item is None:
            return None
        tag, content, at = item
        if tag == 0x81 and content:  # error [1] ENUMERATED (implicit, primitive)
            return int.from_bytes(content, "big")
    return None


class LDAPAuth:
    """A :class:`plugit_core.identity.PasswordBackend` checking passwords with an LDAP bind."""

    name = "ldap"

    def __init__(self, settings: LDAPSettings) -> None:
        self.settings = settings
        self.label = settings.label
        self._tls = _Tls(_ssl_context(settings)) if settings.tls else None
        if settings.tls and not settings.validate:
            log.warning("%s: validate = none, the server's certificate is not checked", self)

    def __str__(self) -> str:
        s = self.settings
        scheme = "ldaps" if s.use_ssl else "ldap"
        return f"{scheme}://{s.host}:{s.port}"

    # -- connections ------------------------------------------------------------------------------

    def _connection(self, user: str | None = None, password: str | None = None) -> Connection:
        # A Server per connection: ldap3 keeps per-connection state (the current address) on it.
        s = self.settings
        server = Server(
            s.host,
            port=s.port,
            use_ssl=s.use_ssl,
            tls=self._tls,
            get_info=NONE,
            connect_timeout=s.timeout,
        )
        return Connection(
            server,
            user=user,
            password=password,
            auto_bind="NONE",
            raise_exceptions=False,
            receive_timeout=math.ceil(self.settings.timeout),  # ldap3 packs it as an integer
            auto_referrals=False,
            read_only=True,
            check_names=False,
        )

    def _open(self, connection: Connection) -> None:
        """Connect, upgrade to TLS if configured; raise LDAPException/OSError on failure."""
        connection.open()
        if self.settings.start_tls and not connection.start_tls():
            log.warning("LDAP server %s refused StartTLS: %s", self, connection.result)
            raise AuthError("unavailable", UNAVAILABLE)

    @staticmethod
    def _close(connection: Connection) -> None:
        with contextlib.suppress(LDAPException, OSError):
            connection.unbind()
        # ldap3 leaves the socket open when the connection fails half-way (connect refused, TLS
        # handshake refused): close it here, whatever happened.
        sock = getattr(connection, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            connection.socket = None

    # -- login ------------------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, request: Any) -> PlugItUser:
        if not password:
            # RFC 4513 5.1.2: a DN with an empty password is an unauthenticated bind, which many
            # servers accept.  Never send one.
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        try:
            username.encode("utf-8")
            password.encode("utf-8")
        except UnicodeEncodeError:
            raise AuthError("bad_credentials", BAD_CREDENTIALS) from None
        if not username or len(username) > MAX_USERNAME:
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        users = getattr(getattr(request, "proxy", None), "users", None)
        if users is None:
            log.error("LDAP login needs the proxy's directory of users (users = ...)")
            raise AuthError("unavailable", UNAVAILABLE)
        try:
            external_id, fields = self._check(username, password)
            return users.sync_external_user(self.settings.source, external_id, fields)
        except AuthError:
            raise
        except (LDAPException, OSError) as exc:
            log.warning("LDAP server %s unavailable: %s: %s", self, type(exc).__name__, exc)
            raise AuthError("unavailable", UNAVAILABLE) from None
        except Exception:
            log.exception("LDAP login of %r failed unexpectedly", username)
            raise AuthError("unavailable", UNAVAILABLE) from None

    def _check(self, username: str, password: str) -> tuple[str, dict[str, Any]]:
        """The user's external id and fields, or raise."""
        s = self.settings
        service = self._connection(s.bind_dn, s.bind_password)
        try:
            self._open(service)
            if s.bind_dn is not None and not service.bind():
                log.error(
                    "LDAP service account %s cannot bind: %s %s",
                    s.bind_dn,
                    service.result.get("description"),
                    service.result.get("message"),
                )
                raise AuthError("unavailable", UNAVAILABLE)
            entry = self._find_user(service, username)
            dn = entry["dn"]
            attributes = entry.get("raw_attributes") or {}
            self._bind_as(dn, password, attributes, username)
            groups = self._groups(service, dn, attributes, username)
        finally:
            self._close(service)
        return self._id(dn, attributes), self._fields(username, attributes, groups)

    def _find_user(self, service: Connection, username: str) -> dict[str, Any]:
        s = self.settings
        query = s.user_filter.replace("{username}", escape_filter_chars(username))
        wanted = {
            s.username_attribute,
            s.email_attribute,
            s.first_name_attribute,
            s.last_name_attribute,
            *LOCK_ATTRIBUTES,
        }
        if s.id_attribute != "dn":
            wanted.add(s.id_attribute)
        if s.group_search_base is None:
            wanted.add(s.member_of_attribute)
        service.search(
            s.user_search_base,
            query,
            search_scope=SUBTREE,
            attributes=sorted(wanted),
            size_limit=2,
            time_limit=max(1, int(s.timeout)),
        )
        code = service.result.get("result")
        entries = [r for r in service.response or () if r.get("type") == "searchResEntry"]
        if code == 4 or len(entries) > 1:  # sizeLimitExceeded: the filter matches several
            log.warning("LDAP user filter matches several entries for %r: refused", username)
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        if code == 32:  # noSuchObject: the search base itself is missing
            log.error("LDAP user_search_base %s does not exist", s.user_search_base)
            raise AuthError("unavailable", UNAVAILABLE)
        if code != 0:
            log.error(
                "LDAP user search failed: %s %s",
                service.result.get("description"),
                service.result.get("message"),
            )
            raise AuthError("unavailable", UNAVAILABLE)
        if not entries or not entries[0].get("dn"):
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        entry = entries[0]
        # Attribute names are case-insensitive: keep them lower-cased, drop the absent ones.
        entry["raw_attributes"] = {
            k.lower(): v for k, v in (entry.get("raw_attributes") or {}).items() if v
        }
        return entry

    def _bind_as(
        self, dn: str, password: str, attributes: Mapping[str, Any], username: str
    ) -> None:
        """Check the password with a bind as ``dn``, on a connection of its own."""
        user = self._connection(dn, password)
        try:
            self._open(user)
            ok = user.bind(controls=[(PPOLICY_OID, False, None)])
            result = dict(user.result or {})
        finally:
            self._close(user)
        lock = _lock_reason(attributes)
        if ok:
            if lock:
                # The password is right but the directory marks the account disabled.
                log.info("LDAP account %s is disabled (%s)", dn, lock)
                raise AuthError("disabled", DISABLED)
            return
        code = result.get("result")
        if code == 49:  # invalidCredentials
            # "disabled" only when the password is known to be right: else anyone could learn
            # which accounts exist and are locked.  OpenLDAP's ppolicy reports a lock whatever
            # the password, so it is only logged, for the administrators.
            policy = _ppolicy_error(result)
            if policy in PPOLICY_ERRORS:
                log.info("LDAP bind of %s refused: %s", dn, PPOLICY_ERRORS[policy])
            ad = _AD_CODE.search(str(result.get("message") or ""))
            if ad and ad.group(1).lower() in AD_DISABLED:
                log.info("LDAP account %s: %s", dn, AD_DISABLED[ad.group(1).lower()])
                raise AuthError("disabled", DISABLED)
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        if code in (48, 50, 53):  # inappropriateAuthentication, insufficientAccessRights, unwilling
            log.info("LDAP bind of %s refused: %s", dn, result.get("description"))
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        log.warning(
            "LDAP bind of %r failed: %s %s",
            username,
            result.get("description"),
            result.get("message"),
        )
        raise AuthError("unavailable", UNAVAILABLE)

    def _groups(
        self, service: Connection, dn: str, attributes: Mapping[str, Any], username: str
    ) -> list[str]:
        s = self.settings
        if s.group_search_base is None:
            return _values(attributes, s.member_of_attribute)
        name = _first(attributes, s.username_attribute) or username
        values = {"dn": escape_filter_chars(dn), "username": escape_filter_chars(name)}
        # One pass: a value that happens to contain "{username}" is never substituted again.
        query = _PLACEHOLDER.sub(lambda m: values[m.group(1)], s.group_filter)
        service.search(
            s.group_search_base,
            query,
            search_scope=SUBTREE,
            attributes=NO_ATTRIBUTES,
            time_limit=max(1, int(s.timeout)),
        )
        code = service.result.get("result")
        if code != 0:
            # An incomplete list would silently remove memberships: refuse the login instead.
            log.error(
                "LDAP group search for %s failed: %s %s",
                dn,
                service.result.get("description"),
                service.result.get("message"),
            )
            raise AuthError("unavailable", UNAVAILABLE)
        return [r["dn"] for r in service.response or () if r.get("type") == "searchResEntry"]

    def _id(self, dn: str, attributes: Mapping[str, Any]) -> str:
        name = self.settings.id_attribute
        if name == "dn":
            return ",".join(f"{a}={_escape_value(v)}" for a, v in dn_key(dn))
        raw = attributes.get(name.lower())
        value = raw[0] if isinstance(raw, (list, tuple)) and raw else raw
        if not value:
            log.error("LDAP entry %s has no %s (id_attribute): login refused", dn, name)
            raise AuthError("unavailable", UNAVAILABLE)
        if isinstance(value, bytes):
            if name.lower() == "objectguid" and len(value) == 16:
                return str(uuid.UUID(bytes_le=value))
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value.hex()
        return str(value)

    def _fields(
        self, typed: str, attributes: Mapping[str, Any], groups: list[str]
    ) -> dict[str, Any]:
        s = self.settings
        names = _values(attributes, s.username_attribute)
        # uid may hold several values: keep the one typed, else the first.
        username = next(
            (n for n in names if n.lower() == typed.lower()), names[0] if names else typed
        )
        keys = [key for key in map(_safe_dn_key, groups) if key is not None]
        services, orgas = grant_memberships(s.groups, keys, s.superuser_groups)
        return {
            "username": username,
            "email": _first(attributes, s.email_attribute),
            "first_name": _first(attributes, s.first_name_attribute),
            "last_name": _first(attributes, s.last_name_attribute),
            "services": services,
            "orgas": orgas,
        }


def _lock_reason(attributes: Mapping[str, Any]) -> str | None:
    """Why the entry's own attributes say the account is disabled, or None."""
    locked = _first(attributes, "pwdAccountLockedTime")
    if locked == "000001010000Z":  # ppolicy: locked by an administrator, until unlocked
        return "pwdAccountLockedTime"
    if _first(attributes, "nsAccountLock").strip().lower() == "true":
        return "nsAccountLock"
    control = _first(attributes, "userAccountControl").strip()
    if control.isdigit() and int(control) & 0x2:  # ACCOUNTDISABLE
        return "userAccountControl"
    return None


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> LDAPAuth:
    return LDAPAuth(settings_from_config(config, section))


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("auth", "ldap", _factory)
