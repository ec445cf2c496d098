"""Pages composed from several services: fragments, fetched in parallel, each isolated.

A **fragment** is an action of any mounted service rendered without the layout, through the
same pipeline as a page (:meth:`Pipeline.page <plugit_core.proxy.pipeline.Pipeline.page>` with
``PageRequest.fragment``): its meta and access rules for the current user and organisation,
the user data it asks for, signing, its page cache (kept apart from its pages'), its circuit
breaker and concurrency cap, its trust level (a sandboxed service's fragment is sanitised, even
an action without the layout) and its render budget.

Placing a fragment only writes a **marker** into the page: ``plugit_fragment(...)`` in a service
template or in the theme's layout, or a ``[[pages]]`` entry of the configuration.  A marker
names the fragment and is signed with the proxy's ``secret_key``, so no service can forge one,
and it survives the page cache and the sanitiser.  When the page leaves (:meth:`Fragments.fill`,
called for every service page and every site page), the markers of that response are fetched
**concurrently** on a small thread pool, each within its own timeout, then put in place:

* a fragment the visitor may not see (its access rules, a plugin's veto, a 401/403 of the
  service) becomes its declared ``placeholder`` (nothing by default), never an error page;
* a fragment whose service fails, answers something else than HTML, or is slower than the
  fragment's timeout becomes its declared ``fallback``, else the last good copy this process
  rendered for the same visitor, else nothing.  The page never waits past a fragment's timeout,
  and one fragment's failure never touches the others.

Fragments are filled after the page cache, per response: a cached page holds markers, and each
fragment comes from its own cache entry, kept per user when its action is restricted, so no
visitor ever sees another's fragment.  A marker is filled only where HTML text may stand (not
inside a tag, an attribute, a comment or a ``<script>``), so a fragment's markup can never
become an attribute or code of the page around it.  Fragments do not nest: inside a fragment,
``plugit_fragment`` renders nothing (a service including a fragment of itself never waits on
its own concurrency cap).

The CSS and JS a fragment's action declares in its meta (``fragment_assets``, an extension of
protocol 1) go once into the page's head (stylesheets) and foot (scripts, full-trust services
only), whatever the number of fragments that asked for them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from ..config import FragmentSpec, ServiceMount, SitePage
from .containment import sanitize_html
from .page import PageRequest, RefusedError
from .replies import normal_media_path
from .routes import Route
from .upstream import ExpiringLRU, ServiceError

if TYPE_CHECKING:
    from ..protocol import ActionMeta
    from .app import ProxyApp, ProxyRequest

__all__ = ["FragmentResult", "FragmentSpec", "Fragments", "SitePage"]

log = logging.getLogger("plugit.proxy")

MARK_PREFIX = "[[plugit-fragment:"
_MARK_END = "]]"
#: The most distinct fragments one response fills; markers beyond are left empty.
MAX_FRAGMENTS = 32
#: The most stylesheets and scripts one fragment's meta may declare.
MAX_ASSETS = 8
#: Threads that fetch fragments, per proxy.
WORKERS = 16
# Elements whose content is not HTML: a marker there would turn a fragment into code or text.
_RAW_TEXT = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes")
_DROPPED_HEADERS = frozenset(
    {
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "HTTP_CONTENT_TYPE",
        "HTTP_CONTENT_LENGTH",
        "HTTP_TRANSFER_ENCODING",
        "HTTP_IF_NONE_MATCH",
        "HTTP_IF_MODIFIED_SINCE",
        "HTTP_ORIGIN",
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD",
        "HTTP_ACCESS_CONTROL_REQUEST_HEADERS",
        "HTTP_X_CSRFTOKEN",
        "HTTP_X_CSRF_TOKEN",
    }
)


@dataclass
class FragmentResult:
    """One fragment as it goes into the page.

    ``outcome`` says where ``html`` came from: ``"ok"`` (rendered or from its cache),
    ``"stale"`` (an expired cache entry, the service failing), ``"refused"`` (the placeholder),
    ``"fallback"`` (the declared fallback), ``"last_good"`` (the last good copy), ``"empty"``
    (nothing to show); ``error`` says why it is not ``"ok"``.  Plugins may change ``html``
    (hook ``plugit_fragment_rendered``).
    """

    fragment: FragmentSpec
    html: str
    outcome: str
    error: str | None = None
    css: tuple[str, ...] = ()
    js: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Fragments:
    """The fragments of one proxy: markers, their concurrent fetching, and the site pages."""

    def __init__(self, proxy: ProxyApp) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.hooks = proxy.hooks
        self._mounts: dict[str, ServiceMount] = {m.name: m for m in self.config.services}
        self._key = hashlib.sha256(
            b"plugit-fragment\x00" + self.config.secret_key.encode()
        ).digest()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=WORKERS, thread_name_prefix="plugit-fragment"
        )
        self._last_good = ExpiringLRU(maxsize=4096)
        self.pages: dict[str, SitePage] = {page.path: page for page in self.config.pages}
        for env in proxy.site.theme_envs.values():
            env.globals["plugit_fragment"] = self.layout_function()

    # -- markers ----------------------------------------------------------------------------------

    def marker(self, fragment: FragmentSpec) -> Markup:
        """The signed marker that stands for ``fragment`` until the response is filled."""
        payload = json.dumps(
            [
                fragment.service,
                fragment.path,
                fragment.fallback,
                fragment.placeholder,
                fragment.timeout,
                fragment.title,
            ],
            separators=(",", ":"),
        ).encode("utf-8")
        encoded = base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")
        return Markup(f"{MARK_PREFIX}{encoded}.{self._sign(encoded)}{_MARK_END}")  # noqa: S704 (base64 and a signature)

    def _sign(self, encoded: str) -> str:
        digest = hmac.new(self._key, encoded.encode("ascii"), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def _read(self, encoded: str, signature: str) -> FragmentSpec | None:
        if not hmac.compare_digest(signature.encode("ascii"), self._sign(encoded).encode("ascii")):
            return None
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            service, path, fallback, placeholder, timeout, title = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if service not in self._mounts:
            return None
        return FragmentSpec(service, path, fallback, placeholder, timeout, title)

    def placer(self, page: PageRequest) -> Callable[..., Markup]:
        """``plugit_fragment(service, path, fallback=None, placeholder=None, timeout=None)`` for
        the templates of ``page``'s service (hand it over inside a ``TemplateFunction``).

        ``fallback`` and ``placeholder`` are text, escaped; Markup (``|safe``) is kept as
        markup, sanitised when the placing service is sandboxed.  Inside a fragment it renders
        nothing: fragments do not nest.
        """
        mount = page.mount

        def plugit_fragment(
            service: Any,
            path: Any = "",
            fallback: Any = None,
            placeholder: Any = None,
            timeout: Any = None,
        ) -> Markup:
            if page.fragment:
                return Markup("")
            name = str(service)
            if name not in self._mounts:
                log.warning(
                    "service %s: plugit_fragment(%r, %r) names no mounted service",
                    mount.name,
                    name[:64],
                    str(path)[:200],
                )
                return Markup("")
            seconds = _seconds(timeout)
            return self.marker(
                FragmentSpec(
                    service=name,
                    path=str(path).lstrip("/"),
                    fallback=_placed_markup(mount, fallback),
                    placeholder=_placed_markup(mount, placeholder),
                    timeout=seconds,
                )
            )

        return plugit_fragment

    def layout_function(self) -> Callable[..., Markup]:
        """``plugit_fragment(service, path, fallback=None, placeholder=None, timeout=None)``
        for the site's own (trusted) templates: a theme's layout regions."""

        def plugit_fragment(
            service: str,
            path: str = "",
            fallback: str | None = None,
            placeholder: str | None = None,
            timeout: float | None = None,
        ) -> Markup:
            if service not in self._mounts:
                raise ValueError(f"plugit_fragment: no service is named {service!r}")
            spec = FragmentSpec(
                service, path.lstrip("/"), fallback, placeholder, _seconds(timeout), None
            )
            return self.marker(spec)

        return plugit_fragment

    # -- filling a response -----------------------------------------------------------------------

    def fill(self, request: ProxyRequest, html: str) -> str:
        """``html`` with every fragment marker replaced by its fragment, fetched concurrently,
        and the fragments' assets put in its head and foot."""
        if MARK_PREFIX not in html:
            return html
        found: dict[str, FragmentSpec | None] = {}
        start = 0
        wanted: list[FragmentSpec] = []
        while True:
            begin = html.find(MARK_PREFIX, start)
            if begin < 0:
                break
            end = html.find(_MARK_END, begin + len(MARK_PREFIX))
            if end < 0:
                break
            start = end + len(_MARK_END)
            text = html[begin:start]
            if text in found:
                continue
            encoded, _, signature = text[len(MARK_PREFIX) : -len(_MARK_END)].rpartition(".")
            spec = self._read(encoded, signature) if encoded else None
            if spec is not None and not _in_text(html, begin):
                log.warning(
                    "fragment %s/%s placed inside a tag, a comment or a script: left out",
                    spec.service,
                    spec.path,
                )
                spec = None
            if spec is not None and len(wanted) >= MAX_FRAGMENTS:
                log.warning("more than %d fragments on %s: left out", MAX_FRAGMENTS, request.path)
                spec = None
            found[text] = spec
            if spec is not None:
                wanted.append(spec)
        results = dict(zip(wanted, self.fetch(request, wanted), strict=True)) if wanted else {}
        css: list[str] = []
        js: list[str] = []
        for result in results.values():
            css.extend(u for u in result.css if u not in css)
            js.extend(u for u in result.js if u not in js)
        # One pass: the text between markers is copied, each marker replaced once (what a
        # fragment holds is never read for markers again).
        parts: list[str] = []
        position = 0
        while True:
            begin = html.find(MARK_PREFIX, position)
            end = html.find(_MARK_END, begin + len(MARK_PREFIX)) if begin >= 0 else -1
            if begin < 0 or end < 0:
                parts.append(html[position:])
                break
            parts.append(html[position:begin])
            text = html[begin : end + len(_MARK_END)]
            spec = found.get(text)
            if spec is not None and spec in results:
                parts.append(results[spec].html)
            position = end + len(_MARK_END)
        return _with_assets("".join(parts), css, js, request.csp_nonce)

    def fetch(
        self, request: ProxyRequest, fragments: Sequence[FragmentSpec]
    ) -> list[FragmentResult]:
        """Render ``fragments`` for ``request``'s visitor, concurrently; each within its own
        timeout, failures replaced by their fallbacks.  Never raises."""
        # What the workers share is made here, once: the user, the session and its CSRF secret.
        user = self.proxy.identify(request)
        request.session  # noqa: B018 (loaded in this thread)
        self.proxy.csrf_token(request)
        nonce = request.csp_nonce
        started = time.monotonic()
        futures = [
            self._pool.submit(self.render, request, spec, user=user, nonce=nonce)
            for spec in fragments
        ]
        results: list[FragmentResult] = []
        for spec, future in zip(fragments, futures, strict=True):
            mount = self._mounts[spec.service]
            timeout = spec.timeout if spec.timeout is not None else mount.timeout
            try:
                result = future.result(timeout=max(0.0, started + timeout - time.monotonic()))
            except concurrent.futures.TimeoutError:
                future.cancel()  # not started yet (every thread busy): never started
                log.warning(
                    "fragment %s/%s: no answer within %s s, its fallback is shown",
                    spec.service,
                    spec.path,
                    timeout,
                )
                result = self._fallback(request, spec, f"no answer within {timeout} s")
            except Exception as exc:  # a bug: the page still goes out
                log.exception("fragment %s/%s failed", spec.service, spec.path)
                result = self._fallback(request, spec, f"{type(exc).__name__}: {exc}")
            self.hooks.fragment_rendered(request, result)
            results.append(result)
        return results

    def render(
        self, request: ProxyRequest, spec: FragmentSpec, *, user: Any = None, nonce: str = ""
    ) -> FragmentResult:
        """One fragment through the page pipeline, without the layout (runs on the pool)."""
        mount = self._mounts[spec.service]
        sub = self._subrequest(request, mount, spec.path, user)
        user = sub.__dict__["user"]
        path = spec.path.partition("?")[0]
        client, variant = self.proxy.select_client(mount, sub, user)
        page = PageRequest(
            sub, self.proxy.context, mount, client, path, user, variant=variant, fragment=True
        )
        try:
            self.proxy.clients.check_compatible(client)
            self.proxy.pipeline.resolve_orga(page)
            response = self.proxy.pipeline.page(page)
        except RefusedError as refused:
            if refused.status in (401, 403):
                return FragmentResult(spec, spec.placeholder or "", "refused", refused.reason)
            log.warning(
                "fragment %s/%s: %s (%s)",
                spec.service,
                spec.path,
                refused.status,
                refused.detail or refused.reason,
            )
            return self._fallback(request, spec, f"{refused.status} {refused.reason}")
        except ServiceError as error:
            log.warning(
                "fragment %s/%s failed: %s (%s)", spec.service, spec.path, error.message, error.kind
            )
            return self._fallback(request, spec, error.message)
        try:
            status = response.status_code
            if status == 200 and response.mimetype == "text/html" and not response.is_streamed:
                html = response.get_data(as_text=True)
                if response.headers.get("Cache-Control") == "no-store":  # a stale copy
                    return FragmentResult(spec, html, "stale", "the service failed")
                self._last_good.put(
                    self._copy_key(request, spec, user), html, time.time() + mount.stale_for
                )
                css, js = self._assets(request, mount, page.meta)
                return FragmentResult(spec, html, "ok", css=css, js=js)
            if status in (401, 403):
                return FragmentResult(spec, spec.placeholder or "", "refused", str(status))
            what = f"the action answered {status} {response.mimetype or ''}".strip()
            log.warning("fragment %s/%s: %s, not a fragment", spec.service, spec.path, what)
            return self._fallback(request, spec, what)
        finally:
            response.close()

    def _fallback(self, request: ProxyRequest, spec: FragmentSpec, error: str) -> FragmentResult:
        if spec.fallback is not None:
            return FragmentResult(spec, spec.fallback, "fallback", error)
        copy = self._last_good.get(self._copy_key(request, spec, self.proxy.identify(request)))
        if copy is not None:
            return FragmentResult(spec, copy, "last_good", error)
        return FragmentResult(spec, "", "empty", error)

    def _copy_key(self, request: ProxyRequest, spec: FragmentSpec, user: Any) -> tuple[Any, ...]:
        """Whose copy a fragment is: the last good copy is only ever shown to the same kind of
        visitor (same user, organisation choice and simulated user)."""
        session = request.session
        orgas = session.get("orga")
        chosen = orgas.get(spec.service) if isinstance(orgas, dict) else None
        return (
            spec.service,
            spec.path,
            user.cache_key,
            repr(chosen),
            repr(session.get("dev_orga")),
            session.get("dev_user_mode"),
            self.proxy.base_path(request),
        )

    def _subrequest(
        self, request: ProxyRequest, mount: ServiceMount, target: str, user: Any
    ) -> ProxyRequest:
        """A GET of the fragment's action as the visitor: their session, user and address,
        none of the page's own parameters, body or conditional headers."""
        path, _, query = target.partition("?")
        environ = {
            k: v
            for k, v in request.environ.items()
            if k not in _DROPPED_HEADERS and not k.startswith("werkzeug.")
        }
        environ.update(
            {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": mount.mount + path,
                "QUERY_STRING": query,
                "wsgi.input": io.BytesIO(b""),
            }
        )
        sub = type(request)(environ)
        sub.proxy = self.proxy.context
        sub.__dict__["session"] = request.session
        sub.__dict__["user"] = user if user is not None else self.proxy.identify(request)
        sub.__dict__["csp_nonce"] = request.csp_nonce
        return sub

    def _assets(
        self, request: ProxyRequest, mount: ServiceMount, meta: ActionMeta | None
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The stylesheets and scripts the action's meta declares (``fragment_assets``): paths
        below the service's ``media/``; scripts only from a full-trust service."""
        declared = meta.raw.get("fragment_assets") if meta is not None else None
        if not isinstance(declared, dict):
            return (), ()
        base = self.proxy.site_url(request, mount.media_url)

        def urls(kind: str) -> tuple[str, ...]:
            items = declared.get(kind)
            if isinstance(items, str):
                items = [items]
            if not isinstance(items, list):
                return ()
            found = []
            for item in items[:MAX_ASSETS]:
                relative = isinstance(item, str) and not item.startswith("/") and ":" not in item
                normal = normal_media_path(item) if relative else None
                if not normal or "?" in normal or "#" in normal:
                    log.warning("%s: fragment asset %r refused", mount.name, str(item)[:100])
                    continue
                found.append(base + quote(normal, safe="/-._~"))
            return tuple(found)

        return urls("css"), urls("js") if mount.trust == "full" else ()

    # -- site pages -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The site pages of the configuration (``[[pages]]``), as routes."""
        return [
            Route(page.path, lambda request, _page=page: self.site_page(request, _page))
            for page in self.pages.values()
        ]

    def site_page(self, request: ProxyRequest, page: SitePage) -> Response:
        """A ``[[pages]]`` page: its fragments in the site's layout."""
        fragments = list(page.fragments)
        self.hooks.fragments(request, page.path, fragments)
        sections = []
        for spec in fragments:
            if not isinstance(spec, FragmentSpec) or spec.service not in self._mounts:
                log.warning("page %s: %r is not a fragment of a mounted service", page.path, spec)
                continue
            title = (
                f'<h2 class="h5 plugit-fragment-title">{escape(spec.title)}</h2>'
                if spec.title
                else ""
            )
            sections.append(
                f'<section class="col plugit-fragment" data-plugit-fragment='
                f'"{escape(spec.service)}/{escape(spec.path)}">{title}{self.marker(spec)}</section>'
            )
        content = Markup(  # noqa: S704 (escaped above; markers are base64)
            f'<h1 class="h3 mb-4" id="plugit-page-title">{escape(page.title)}</h1>'
            f'<div class="row row-cols-1 row-cols-md-{page.columns} g-4 plugit-fragments">'
            f"{''.join(sections)}</div>"
        )
        values = self.proxy.site.context(request, None)
        values.update(page_title=page.title, plugit_content=content, plugit_menu=Markup(""))
        html = self.proxy.site.env.get_template("plugit/layout.html").render(values)
        return self.proxy.site.response(request, html, 200)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _seconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 3600 else None


def _placed_markup(mount: ServiceMount, value: Any) -> str | None:
    """A fallback or placeholder given by a service's template: text is escaped, Markup kept
    as markup (sanitised when the service is sandboxed)."""
    if value is None:
        return None
    if isinstance(value, Markup):
        return sanitize_html(str(value), mount.name) if mount.trust == "sandboxed" else str(value)
    return str(escape(str(value)))


def _in_text(html: str, position: int) -> bool:
    """Whether ``position`` of ``html`` is where HTML text may stand: not inside a tag (an
    attribute), a comment, or an element whose content is not HTML (``<script>``, ...)."""
    if html.rfind("<", 0, position) > html.rfind(">", 0, position):
        return False
    before = html[:position].lower()
    if before.rfind("<!--") > before.rfind("-->"):
        return False
    return all(before.rfind(f"<{tag}") <= before.rfind(f"</{tag}") for tag in _RAW_TEXT)


def _with_assets(html: str, css: list[str], js: list[str], nonce: str) -> str:
    """Stylesheets before the head's end and scripts before the body's end (or around a page
    that has neither)."""
    if css:
        links = "".join(f'<link rel="stylesheet" href="{escape(url)}">' for url in css)
        at = html.lower().find("</head>")
        html = html[:at] + links + html[at:] if at >= 0 else links + html
    if js:
        scripts = "".join(
            f'<script src="{escape(url)}" nonce="{escape(nonce)}" defer></script>' for url in js
        )
        at = html.lower().rfind("</body>")
        html = html[:at] + scripts + html[at:] if at >= 0 else html + scripts
    return html
