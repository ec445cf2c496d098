"""Log in through an OpenID Connect provider (Keycloak, Authentik, Entra ID, Google, ...).

A redirect backend (``auth = ["oidc"]``): the login page shows a button that starts the
*authorization code flow* with PKCE (S256):

1. ``/_plugit/login/oidc?next=/path`` reads the provider's metadata (discovery, fetched on first
   use and cached with its signing keys), keeps a random ``state``, ``nonce`` and PKCE
   ``code_verifier`` in the PlugIt session (key ``oidc``) and sends the browser to the provider;
2. the provider sends it back to ``/_plugit/login/oidc/callback?code=...&state=...``: the state
   must be one this session started (one use, ten minutes), the code is exchanged with the
   verifier (over a back channel, with the client secret), and the ID token is validated with
   ``joserfc``: signature against the provider's JWKS (fetched again once when a key id is
   unknown), algorithm allowed, ``iss``, ``aud`` (and ``azp``), ``exp`` and ``iat`` with a small
   leeway, ``nonce``, and ``at_hash`` when present;
3. the claims (from the ID token and the userinfo endpoint) become the user's fields, and the
   ``groups`` claim is mapped to service roles and organisations by ``[auth_oidc.groups]``; the
   user is created or updated in the proxy's directory (``sync_external_user``, source
   ``oidc:<issuer>``), logged in, and sent back to ``next`` (a local path only).

Logging out ends the provider's session too when it offers ``end_session_endpoint``
(RP-initiated logout, with ``id_token_hint`` and ``post_logout_redirect_uri``).

Nothing here raises to the visitor: an unreachable provider (every call has a timeout) gives the
login page with "The single sign-on service is unavailable" (503) and the other login methods
keep working; every refusal (unknown state, replayed code, bad signature, expired token, wrong
nonce, an ``error`` from the provider) gives the login page with a short message (400 or 403),
the reason in the log, and no login.

Configuration (see ``docs/auth-oidc.md``)::

    auth = ["oidc"]

    [auth_oidc]
    issuer = "https://sso.example.org/realms/staff"
    client_id = "plugit"
    client_secret = { env = "PLUGIT_OIDC_SECRET" }
    post_logout_redirect_uri = "/"
    superuser_groups = ["plugit-admins"]

    [auth_oidc.groups]
    "staff" = { services = { polls = "member" }, orgas = { "Acme" = "admin" } }
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests
from werkzeug.wrappers import Response

from plugit_backends.login import LOGIN_PATH
from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import (
    AuthError,
    GroupGrant,
    grant_memberships,
    log_in,
    parse_group_grants,
)
from plugit_core.networks import is_loopback_host
from plugit_core.proxy.redirects import is_local_path
from plugit_core.proxy.routes import Route
from plugit_core.settings import Section, setting
from plugit_core.users import PlugItUser

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext

# joserfc is the `oidc` extra (and a dependency of Authlib 1.6 and later, which imports it for its
# OAuth clients): without it this plugin still loads (so it can be a built-in), and only a
# configuration that uses it fails, with a message saying what to install.
try:
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.requests_client import OAuth2Session
    from joserfc import jws
    from joserfc.errors import JoseError
    from joserfc.jwk import Key, import_key
    from joserfc.jws import JWSRegistry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    JOSERFC_MISSING: ImportError | None = exc
    OAuthError = JoseError = ValueError  # type: ignore[assignment,misc]
else:
    JOSERFC_MISSING = None

__all__ = [
    "CALLBACK_PATH",
    "START_PATH",
    "GroupGrant",
    "OIDCAuth",
    "OIDCSettings",
    "settings_from_config",
]

log = logging.getLogger("plugit.auth.oidc")

SECTION = "auth_oidc"
START_PATH = "/_plugit/login/oidc"
CALLBACK_PATH = "/_plugit/login/oidc/callback"
SESSION_KEY = "oidc"
PENDING_TTL = 600  # seconds a started login may take at the provider
MAX_PENDING = 5  # logins started in other tabs and not finished
MAX_ID_TOKEN_KEPT = 2000  # characters: a longer ID token is not kept for the logout hint
MAX_DOCUMENT = 1024 * 1024  # bytes read from the provider for one JSON document
METADATA_TTL = 3600  # seconds before the discovery document and keys are read again
JWKS_MIN_REFRESH = 10  # seconds between two reads of the keys for an unknown key id
RETRY_AFTER = 5  # seconds during which an unreachable provider is not asked again
# Asymmetric algorithms only: HS* would make the client secret a signing key, "none" signs nothing.
SUPPORTED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "Ed25519",
)
_AT_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
PROTOCOL_CLAIMS = frozenset(
    "iss sub aud exp iat nbf nonce azp at_hash c_hash auth_time acr amr sid jti".split()
)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

UNAVAILABLE = "The single sign-on service is unavailable right now. Please try again later."
UNKNOWN_STATE = "This login was not started here or took too long. Please log in again."
CANCELLED = "The single sign-on service did not log you in."
INVALID = "The answer of the single sign-on service could not be verified. Please log in again."
DISABLED = "This account is disabled. Ask an administrator."
BROKEN = "The login failed because of an error on our side. Please try again later."


# -- settings -------------------------------------------------------------------------------------


def _claim(value: str) -> str:
    if not value.strip() or any(ord(c) < 32 for c in value):
        raise ValueError(f"not a claim name: {value!r}")
    return value


def _auth_method(value: str) -> str:
    if value not in AUTH_METHODS:
        raise ValueError(f"must be one of {', '.join(AUTH_METHODS)}, not {value!r}")
    return value


def _scopes(value: tuple[str, ...]) -> tuple[str, ...]:
    if "openid" not in value:
        raise ValueError('must include "openid"')
    return value


def _algorithms(value: tuple[str, ...]) -> tuple[str, ...]:
    for alg in value:
        if alg not in SUPPORTED_ALGORITHMS:
            choices = ", ".join(SUPPORTED_ALGORITHMS)
            raise ValueError(f"{alg!r} is not supported for ID tokens (one of {choices})")
    return value


def _group_names(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of non-empty strings")
    return frozenset(value)


@dataclass(frozen=True)
class OIDCSettings:
    """The ``[auth_oidc]`` table, checked (see docs/auth-oidc.md)."""

    issuer: str = setting(help="the provider's issuer URL")
    client_id: str = setting(help="this site's client id at the provider")
    client_secret: str | None = setting(None, secret=True, help="its client secret")
    token_endpoint_auth_method: str = setting(
        "client_secret_basic",
        default_from=lambda v: "client_secret_basic" if v["client_secret"] else "none",
        check=_auth_method,
        help="how the client authenticates to the token endpoint",
    )
    scopes: tuple[str, ...] = setting(
        ("openid", "email", "profile"),
        split=True,
        non_empty=True,
        check=_scopes,
        help="the scopes asked for",
    )
    redirect_uri: str | None = setting(None, help="the callback URL, when not derived")
    post_logout_redirect_uri: str | None = setting(None, help="where the provider sends back")
    provider_logout: bool = setting(True, help="log out at the provider too")
    label: str = setting("Single sign-on", help="the name on the login page")
    timeout: float = setting(5.0, minimum=0.1, maximum=300, help="seconds of a provider call")
    leeway: int = setting(60, maximum=600, help="seconds of clock difference tolerated")
    algorithms: tuple[str, ...] = setting(
        SUPPORTED_ALGORITHMS, non_empty=True, check=_algorithms, help="ID token algorithms"
    )
    userinfo: bool = setting(True, help="ask the userinfo endpoint for claims")
    allow_http: bool = setting(False, help="tokens may cross a trusted network in clear")
    username_claim: str = setting("preferred_username", check=_claim, help="the user name")
    email_claim: str = setting("email", check=_claim, help="the e-mail address")
    first_name_claim: str = setting("given_name", check=_claim, help="the first name")
    last_name_claim: str = setting("family_name", check=_claim, help="the last name")
    groups_claim: str = setting("groups", check=_claim, help="the user's groups")
    groups: Mapping[str, GroupGrant] = setting(
        default_factory=dict,
        expected='a table of "group" = { services = {...}, ... }',
        help="what membership of each group gives",
    )
    superuser_groups: frozenset[str] = setting(
        frozenset(), parse=_group_names, help="groups whose members administer every service"
    )

    @property
    def source(self) -> str:
        """The ``source`` of the users this provider vouches for, in the proxy's directory."""
        return f"oidc:{self.issuer}"

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _http_url(where: Section, key: str, value: str, allow_http: bool) -> str:
    """Check an absolute URL of the provider or of this site."""
    split = urlsplit(value)
    try:
        split.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise where.error(key, f"invalid port in {value!r}") from None
    if split.scheme not in ("http", "https") or not split.hostname:
        raise where.error(key, f"expected an https:// URL, got {value!r}")
    if split.fragment or split.username or split.password:
        raise where.error(key, "no fragment, user or password in the URL")
    if split.scheme == "http" and not allow_http and not is_loopback_host(split.hostname):
        raise where.error(
            key,
            "tokens would cross the network in clear: use https://, or set allow_http = true "
            "if the network is trusted",
        )
    return value


def settings_from_config(config: ProxyConfig, section: Mapping[str, Any]) -> OIDCSettings:
    """Validate the ``[auth_oidc]`` table; raise :class:`ConfigError` naming the faulty key."""
    if JOSERFC_MISSING is not None:
        raise ConfigError(
            SECTION,
            "the oidc auth backend needs joserfc: pip install 'plugit-wsgi[oidc]' "
            f"({JOSERFC_MISSING})",
            config.source,
        )
    s = config.read(OIDCSettings, SECTION, section, blank_is_missing=True)
    where = Section(SECTION, config.source)
    _http_url(where, "issuer", s.issuer, s.allow_http)
    if urlsplit(s.issuer).query:
        raise where.error("issuer", "an issuer has no query string")
    if s.token_endpoint_auth_method != "none" and not s.client_secret:  # noqa: S105
        raise where.error("client_secret", f"is required with {s.token_endpoint_auth_method}")
    if s.redirect_uri is not None:
        _http_url(where, "redirect_uri", s.redirect_uri, s.allow_http)
        if urlsplit(s.redirect_uri).path != CALLBACK_PATH:
            raise where.error("redirect_uri", f"must end with the callback path {CALLBACK_PATH}")
    post_logout = s.post_logout_redirect_uri
    if post_logout is not None and not post_logout.startswith("/"):
        _http_url(where, "post_logout_redirect_uri", post_logout, s.allow_http)
    elif post_logout is not None and post_logout.startswith(("//", "/\\")):
        raise where.error("post_logout_redirect_uri", "expected a URL or a local path")

    def group_name(key: str, group: Any) -> str:
        if not isinstance(group, str) or not group:
            raise where.error("groups", "group names must not be empty")
        return group

    services = {mount.name for mount in config.services}
    groups = parse_group_grants(
        where, s.groups, services, group_key=group_name, described='"group"'
    )
    return replace(s, groups=groups)


# -- helpers --------------------------------------------------------------------------------------


class _Path(str):
    """A path that can also be called: ``backend.start_url()`` (the RedirectBackend protocol)
    and ``{{ backend.start_url }}`` (the theme's login page) both give it."""

    __slots__ = ()

    def __call__(self) -> str:
        return str(self)


def _safe_next(value: Any) -> str:
    """A local path to go back to after login (never another site, never the login pages)."""
    if not isinstance(value, str) or len(value) > 2048:
        return "/"
    if not is_local_path(value):  # as browsers read it (plugit_core.proxy.redirects)
        return "/"
    if value.startswith(("/_plugit/login", "/_plugit/logout")):
        return "/"
    return value


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the backend ----------------------------------------------------------------------------------


class OIDCAuth:
    """A :class:`plugit_core.identity.RedirectBackend` for one OpenID Connect provider.

    ``clock`` gives the time used to check the ID token's ``exp`` and ``iat`` (tests move it).
    """

    name = "oidc"

    def __init__(self, settings: OIDCSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.label = settings.label
        self.start_url = _Path(START_PATH)
        self.clock = clock
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: list[tuple[dict[str, Any], Key]] = []
        self._keys_at = 0.0
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"<OIDCAuth {self.settings.issuer}>"

    # -- RedirectBackend --------------------------------------------------------------------------

    def routes(self, proxy: PluginContext) -> list[Route]:
        return [
            Route(START_PATH, self.start_view, methods=("GET",)),
            Route(CALLBACK_PATH, self.callback_view, methods=("GET",)),
        ]

    def logout_redirect(self, request: Any) -> Response | None:
        """A redirect to the provider's ``end_session_endpoint``, or None (no such endpoint,
        provider unreachable, or ``provider_logout = false``)."""
        if not self.settings.provider_logout:
            return None
        try:
            metadata = self.metadata()
        except AuthError:
            log.warning("no logout at the provider: its metadata cannot be read")
            return None
        endpoint = metadata.get("end_session_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            return None
        params = {"client_id": self.settings.client_id}
        kept = request.session.get(SESSION_KEY)
        id_token = kept.get("id_token") if isinstance(kept, dict) else None
        if isinstance(id_token, str) and id_token:
            params["id_token_hint"] = id_token
        after = self.settings.post_logout_redirect_uri
        if after is not None:
            if after.startswith("/"):
                after = f"{request.scheme}://{request.host}{after}"
            params["post_logout_redirect_uri"] = after
        location = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
        return _no_store(Response(b"", status=303, headers={"Location": location}))

    # -- provider metadata and keys ---------------------------------------------------------------

    def _get_json(self, url: str, what: str, headers: Mapping[str, str] | None = None) -> Any:
        """GET a JSON document from the provider; AuthError ``unavailable`` on any failure."""
        try:
            with requests.get(
                url,
                timeout=self.settings.timeout,
                headers={"Accept": "application/json", **(headers or {})},
                stream=True,
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_content(65536):
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise ValueError("the document is too large")
            return json.loads(body)
        except (requests.RequestException, ValueError) as exc:
            log.warning("OIDC %s at %s cannot be read: %s: %s", what, url, type(exc).__name__, exc)
            raise AuthError("unavailable", UNAVAILABLE) from None

    def _check_endpoint(self, metadata: Mapping[str, Any], key: str, required: bool) -> None:
        value = metadata.get(key)
        if value is None and not required:
            return
        if not isinstance(value, str):
            raise ValueError(f"{key} is missing")
        split = urlsplit(value)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"{key} is not a URL: {value!r}")
        if (
            split.scheme == "http"
            and not self.settings.allow_http
            and not is_loopback_host(split.hostname)
        ):
            raise ValueError(f"{key} is not https: {value!r}")

    def _fetch_metadata(self) -> dict[str, Any]:
        url = self.settings.discovery_url
        metadata = self._get_json(url, "discovery document")
        try:
            if not isinstance(metadata, dict):
                raise ValueError("not a JSON object")
            if metadata.get("issuer") != self.settings.issuer:
                raise ValueError(
                    f"its issuer is {metadata.get('issuer')!r}, not {self.settings.issuer!r}"
                )
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                self._check_endpoint(metadata, key, required=True)
            for key in ("userinfo_endpoint", "end_session_endpoint"):
                self._check_endpoint(metadata, key, required=False)
        except ValueError as exc:
            log.error("OIDC discovery document at %s is unusable: %s", url, exc)
            raise AuthError("unavailable", UNAVAILABLE) from None
        return metadata

    def _fetch_keys(self, metadata: Mapping[str, Any]) -> list[tuple[dict[str, Any], Key]]:
        document = self._get_json(metadata["jwks_uri"], "key set")
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            log.error("OIDC key set at %s has no keys list", metadata["jwks_uri"])
            raise AuthError("unavailable", UNAVAILABLE)
        keys = []
        for data in raw:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                keys.append((data, import_key(data)))
            except (JoseError, ValueError, TypeError) as exc:  # an unknown kind of key: skipped
                log.info("OIDC key %r skipped: %s", data.get("kid"), exc)
        return keys

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (read on first use, again after an hour; the old
        one is kept when the provider cannot be reached).  AuthError ``unavailable`` when there
        is none: the provider is then asked again after a few seconds, not at every click."""
        with self._lock:
            fresh = time.monotonic() - self._metadata_at < METADATA_TTL
            if self._metadata is not None and fresh:
                return self._metadata
            if self._metadata is None and time.monotonic() < self._retry_at:
                raise AuthError("unavailable", UNAVAILABLE)  # failed a moment ago: fail fast
            try:
                metadata = self._fetch_metadata()
                keys = self._fetch_keys(metadata)
            except AuthError:
                if self._metadata is None:
                    self._retry_at = time.monotonic() + RETRY_AFTER
                    raise
                log.warning("OIDC provider unreachable: using its metadata read before")
                self._metadata_at = time.monotonic()  # do not retry at every request
                return self._metadata
            self._metadata, self._keys = metadata, keys
            self._metadata_at = self._keys_at = time.monotonic()
            return metadata

    def _signing_keys(self, kid: str | None) -> list[Key]:
        """The provider's keys that may have signed a token with this ``kid`` (all of them when
        the token names none); the key set is read again once when the ``kid`` is unknown."""

        def matching() -> list[Key]:
            return [key for data, key in self._keys if kid is None or data.get("kid") == kid]

        metadata = self.metadata()
        with self._lock:
            found = matching()
            if found or time.monotonic() - self._keys_at < JWKS_MIN_REFRESH:
                return found
            self._keys_at = time.monotonic()
        keys = self._fetch_keys(metadata)  # the provider may have rotated its keys
        with self._lock:
            self._keys = keys
            return matching()

    # -- ID token ---------------------------------------------------------------------------------

    def validate_id_token(
        self, id_token: str, *, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """The claims of a valid ID token; raise AuthError ``invalid`` (or ``unavailable`` when
        the keys cannot be read) saying why in the log."""
        s = self.settings

        def refuse(reason: str, *args: Any) -> AuthError:
            log.warning("OIDC ID token refused: " + reason, *args)
            return AuthError("invalid", INVALID)

        if not isinstance(id_token, str) or id_token.count(".") != 2:
            raise refuse("not a signed JWT (encrypted ID tokens are not supported)")
        registry = JWSRegistry(algorithms=list(s.algorithms), strict_check_header=False)
        try:
            obj = jws.extract_compact(id_token.encode("ascii"), registry=registry)
            header = obj.headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise refuse("malformed: %s", exc) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in s.algorithms:
            raise refuse("algorithm %r is not allowed", alg)
        if kid is not None and not isinstance(kid, str):
            raise refuse("malformed key id")
        keys = self._signing_keys(kid)
        if not keys:
            raise refuse("no key of the provider has the id %r", kid)
        verified = False
        for key in keys:
            try:
                verified = jws.validate_compact(obj, key, registry=registry)
            except JoseError:  # a key of another type or algorithm
                verified = False
            if verified:
                break
        if not verified:
            raise refuse("bad signature (key id %r)", kid)
        try:
            claims = json.loads(obj.payload)
        except (TypeError, ValueError):
            raise refuse("the payload is not JSON") from None
        if not isinstance(claims, dict):
            raise refuse("the payload is not a JSON object")

        if claims.get("iss") != s.issuer:
            raise refuse("issuer %r is not %r", claims.get("iss"), s.issuer)
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or s.client_id not in audiences:
            raise refuse("audience %r does not include %r", audience, s.client_id)
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != s.client_id:
            raise refuse("authorized party %r is not %r", azp, s.client_id)
        now = self.clock()

        def time_claim(name: str) -> float:
            value = claims.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise refuse("%s is missing or not a number", name)
            if isinstance(value, float) and not math.isfinite(value):
                raise refuse("%s is not finite", name)
            return value

        exp, iat = time_claim("exp"), time_claim("iat")
        if now >= exp + s.leeway:
            raise refuse("expired %d s ago", int(now - exp))
        if iat > now + s.leeway:
            raise refuse("issued %d s in the future", int(iat - now))
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now + s.leeway:
            raise refuse("not valid before %s", nbf)
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
            raise refuse("the nonce is not the one this login sent")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise refuse("sub is missing or invalid")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            digest = _AT_HASH.get(alg[-3:], hashlib.sha512)(access_token.encode()).digest()
            expected = _b64(digest[: len(digest) // 2])
            if not isinstance(at_hash, str) or not hmac.compare_digest(
                at_hash.encode(), expected.encode()
            ):
                raise refuse("at_hash does not match the access token")
        return claims

    # -- claims to the directory's fields ---------------------------------------------------------

    def groups_of(self, claims: Mapping[str, Any]) -> list[str]:
        value = claim_value(claims, self.settings.groups_claim)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return []
        return [v for v in value if isinstance(v, str)]

    def fields_from_claims(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """What ``sync_external_user`` receives: profile fields and the mapped memberships."""
        s = self.settings
        services, orgas = grant_memberships(s.groups, self.groups_of(claims), s.superuser_groups)
        fields: dict[str, Any] = {"services": services, "orgas": orgas}
        email = _text(claim_value(claims, s.email_claim))
        username = _text(claim_value(claims, s.username_claim)) or email
        for key, value in (
            ("username", username),
            ("email", email),
            ("first_name", _text(claim_value(claims, s.first_name_claim))),
            ("last_name", _text(claim_value(claims, s.last_name_claim))),
        ):
            if value is not None:
                fields[key] = value
        return fields

    # -- the flow ---------------------------------------------------------------------------------

    def _client(self, redirect_uri: str) -> OAuth2Session:
        s = self.settings
        return OAuth2Session(
            client_id=s.client_id,
            client_secret=s.client_secret,
            token_endpoint_auth_method=s.token_endpoint_auth_method,
            scope=" ".join(s.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )

    def _page(self, request: Any, status: int, message: str, next_path: str = "/") -> Response:
        """The login page with ``message``, every other login method still offered."""
        proxy = request.proxy
        response = proxy.render_site_page(
            request,
            "plugit/login.html",
            status=status,
            password_backends=[b for b in proxy.auth if hasattr(b, "authenticate")],
            redirect_backends=[b for b in proxy.auth if hasattr(b, "start_url")],
            login_action=LOGIN_PATH,
            next=next_path,
            username="",
            error=message,
            notice=None,
            page_title="Log in",
        )
        return _no_store(response)

    def _pending(self, session: Any) -> dict[str, Any]:
        """The logins this session started and did not finish, without the stale ones."""
        kept = session.get(SESSION_KEY)
        pending = kept.get("pending") if isinstance(kept, dict) else None
        if not isinstance(pending, dict):
            return {}
        now = time.time()
        return {
            state: entry
            for state, entry in pending.items()
            if isinstance(entry, dict)
            and isinstance(entry.get("at"), (int, float))
            and 0 <= now - entry["at"] < PENDING_TTL
        }

    def _save_pending(self, session: Any, pending: dict[str, Any]) -> None:
        kept = session.get(SESSION_KEY)
        kept = dict(kept) if isinstance(kept, dict) else {}
        if pending:
            kept["pending"] = pending
        else:
            kept.pop("pending", None)
        if kept:
            session[SESSION_KEY] = kept
        else:
            session.pop(SESSION_KEY, None)

    def start_view(self, request: Any) -> Response:
        """``/_plugit/login/oidc?next=...``: to the provider's login page."""
        next_path = _safe_next(request.args.get("next"))
        try:
            metadata = self.metadata()
        except AuthError as exc:
            return self._page(request, 503, exc.message, next_path)
        redirect_uri = self.settings.redirect_uri or (
            f"{request.scheme}://{request.host}{request.proxy.site_url(request, CALLBACK_PATH)}"
        )
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43 to 128)
        with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=state,
                code_verifier=verifier,
                nonce=nonce,
            )
        pending = self._pending(request.session)
        while len(pending) >= MAX_PENDING:
            oldest = min(pending, key=lambda s: pending[s].get("at", 0))
            del pending[oldest]
        pending[state] = {
            "nonce": nonce,
            "verifier": verifier,
            "next": next_path,
            "redirect_uri": redirect_uri,
            "at": time.time(),
        }
        self._save_pending(request.session, pending)
        return _no_store(Response(b"", status=303, headers={"Location": url}))

    def callback_view(self, request: Any) -> Response:
        """``/_plugit/login/oidc/callback?code=...&state=...``: the provider's answer."""
        args = request.args
        address = request.proxy.client_address(request)
        pending = self._pending(request.session)
        state = args.get("state", "")
        entry = pending.pop(state, None) if state else None
        if entry is None:
            log.warning("OIDC callback from %s refused: no login started with this state", address)
            return self._page(request, 400, UNKNOWN_STATE)
        self._save_pending(request.session, pending)  # one use, whatever happens next
        next_path = _safe_next(entry.get("next"))
        try:
            user, id_token = self._finish(request, args, entry)
        except AuthError as exc:
            status = {"unavailable": 503, "disabled": 403}.get(exc.code, 403)
            return self._page(request, status, exc.message, next_path)
        except Exception:  # a directory failure, a bug: a page, never a traceback
            log.exception("OIDC login from %s failed unexpectedly", address)
            return self._page(request, 500, BROKEN, next_path)
        log_in(request, user, self.name)
        if len(id_token) <= MAX_ID_TOKEN_KEPT:
            request.session[SESSION_KEY] = {"id_token": id_token}  # the logout's id_token_hint
        log.info("%s logged in through %s from %s", user.username, self.settings.issuer, address)
        return _no_store(Response(b"", status=303, headers={"Location": next_path}))

    def _finish(
        self, request: Any, args: Mapping[str, str], entry: Mapping[str, Any]
    ) -> tuple[PlugItUser, str]:
        """Check the provider's answer, exchange the code, validate, sync the user."""
        s = self.settings
        metadata = self.metadata()
        issuer = args.get("iss")
        if issuer is not None and issuer != s.issuer:  # RFC 9207: mix-up protection
            log.warning("OIDC callback refused: iss %r is not %r", issuer, s.issuer)
            raise AuthError("invalid", INVALID)
        if "error" in args:
            log.info(
                "OIDC provider refused the login: %r (%r)",
                args.get("error", "")[:100],
                args.get("error_description", "")[:300],
            )
            raise AuthError("refused", CANCELLED)
        if issuer is None and metadata.get("authorization_response_iss_parameter_supported"):
            log.warning("OIDC callback refused: the provider sends iss, this answer has none")
            raise AuthError("invalid", INVALID)
        code = args.get("code")
        if not code:
            log.warning("OIDC callback refused: no code")
            raise AuthError("invalid", INVALID)

        token = self._exchange(metadata, code, entry)
        claims = self.validate_id_token(
            token["id_token"], nonce=entry["nonce"], access_token=token.get("access_token")
        )
        claims = self._with_userinfo(metadata, claims, token.get("access_token"))

        store = request.proxy.users
        fields = self.fields_from_claims(claims)
        user = store.sync_external_user(s.source, claims["sub"], fields)
        if not store.is_active(user.pk):
            log.info("OIDC login of %s refused: the account is disabled here", user.username)
            raise AuthError("disabled", DISABLED)
        return user, token["id_token"]

    def _exchange(
        self, metadata: Mapping[str, Any], code: str, entry: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The token endpoint's answer for this code and verifier."""
        try:
            with self._client(entry["redirect_uri"]) as client:
                token = client.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=entry["verifier"],
                    timeout=self.settings.timeout,
                )
        except OAuthError as exc:  # invalid_grant: a replayed, expired or stolen code
            log.warning("OIDC token endpoint refused the code: %s (%s)", exc.error, exc.description)
            raise AuthError("invalid", INVALID) from None
        except (requests.RequestException, ValueError) as exc:
            log.warning("OIDC token endpoint unreachable: %s: %s", type(exc).__name__, exc)
            raise AuthError("unavailable", UNAVAILABLE) from None
        if not isinstance(token.get("id_token"), str):
            log.warning("OIDC token endpoint sent no ID token (is the openid scope granted?)")
            raise AuthError("invalid", INVALID)
        return dict(token)

    def _with_userinfo(
        self, metadata: Mapping[str, Any], claims: dict[str, Any], access_token: Any
    ) -> dict[str, Any]:
        """The ID token's claims completed by the userinfo endpoint's (same ``sub`` only)."""
        endpoint = metadata.get("userinfo_endpoint")
        if not self.settings.userinfo or not endpoint or not isinstance(access_token, str):
            return claims
        # Claims missing (groups!) would take rights away: no login rather than a wrong one.
        info = self._get_json(endpoint, "userinfo", {"Authorization": f"Bearer {access_token}"})
        if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
            log.warning("OIDC userinfo refused: its sub is not the ID token's")
            raise AuthError("invalid", INVALID)
        merged = dict(claims)
        merged.update({k: v for k, v in info.items() if k not in PROTOCOL_CLAIMS})
        return merged


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> OIDCAuth:
    return OIDCAuth(settings_from_config(config, section))


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("auth", "oidc", _factory)


@hookimpl
def plugit_startup(proxy: PluginContext) -> None:
    if proxy.users is None and any(isinstance(b, OIDCAuth) for b in proxy.auth):
        raise ConfigError(
            "users",
            'OpenID Connect logins need a directory: remove users = "" (the default is "sqlite")',
            proxy.config.source,
        )
