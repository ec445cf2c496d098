"""The Django host example's own pages: home, login and logout (no templates needed)."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

__all__ = ["home", "login_view", "logout_view"]

POLLS = "/polls/"


def _page(title: str, body: str, status: int = 200) -> HttpResponse:
    html = format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{}</title>'
        '<link rel="stylesheet" href="/_plugit/static/plugit.css"></head>'
        '<body><main><h1>{}</h1>{}<p><a id="polls-link" href="{}">Polls</a> (a PlugIt service)'
        "</p></main></body></html>",
        title,
        title,
        body,
        POLLS,
    )
    return HttpResponse(html, status=status)


def _login_form(request: HttpRequest, next_url: str, error: str = "") -> str:
    return format_html(
        '{}<form method="post" action="/login/">'
        '<input type="hidden" name="csrfmiddlewaretoken" value="{}">'
        '<input type="hidden" name="next" value="{}">'
        '<label>User name <input name="username" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form>',
        format_html('<p id="error" role="alert">{}</p>', error) if error else "",
        get_token(request),
        next_url,
    )


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    if user.is_authenticated:
        body = format_html(
            '<p id="hello">Hello, {} ({}).</p><form method="post" action="/logout/">'
            '<input type="hidden" name="csrfmiddlewaretoken" value="{}">'
            '<button type="submit">Log out</button></form>',
            user.get_full_name() or user.get_username(),
            user.get_username(),
            get_token(request),
        )
    else:
        body = mark_safe('<p id="hello">Hello, visitor. <a href="/login/">Log in</a></p>')
    return _page("Django host", body)


def _safe_next(request: HttpRequest, target: str | None) -> str:
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "/"


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        next_url = _safe_next(request, request.GET.get("next"))
        return _page("Log in", _login_form(request, next_url))
    next_url = _safe_next(request, request.POST.get("next"))
    user = authenticate(
        request,
        username=request.POST.get("username", ""),
        password=request.POST.get("password", ""),
    )
    if user is None:
        form = _login_form(request, next_url, "Wrong user name or password.")
        return _page("Log in", form, status=401)
    login(request, user)  # a new session key and CSRF token
    return HttpResponseRedirect(next_url, status=303)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/", status=303)
