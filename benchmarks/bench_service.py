"""The service every benchmark measures: one small JSON action, one page, one cached page."""

from __future__ import annotations

from pathlib import Path

from plugit_core.service import PlugItService, action, cache, json_only

ITEMS = [{"id": i, "title": f"Poll number {i}", "votes": i * 7} for i in range(10)]


@action("/data")
@json_only()
def data(request):
    return {"items": ITEMS}


@action("/page", template="page.html")
def page(request):
    return {"items": ITEMS}


@action("/cached", template="page.html")
@cache(time=3600)
def cached(request):
    return {"items": ITEMS}


def create_app(**settings) -> PlugItService:
    return PlugItService([data, page, cached], root=str(Path(__file__).parent), **settings)
