"""A theme per mount: a service's pages in a theme of their own, its files in /_plugit/themes/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import SECRET, Browser

from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR, TEMPLATES_DIR
from plugit_core.backends import Theme
from plugit_core.config import ConfigError
from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve


class AltTheme:
    """A second theme: the Bootstrap templates with static files of its own."""

    def __init__(self, static: Path) -> None:
        self.static = static

    @hookimpl
    def plugit_register_backends(self, register: Any) -> None:
        register(
            "theme",
            "alt",
            lambda config, section: Theme("alt", TEMPLATES_DIR, SERVICE_TEMPLATES_DIR, self.static),
        )


def _config(service_url: str, **alt: Any) -> dict[str, Any]:
    return {
        "dev_mode": True,
        "services": [
            {"name": "svc", "url": service_url, "mount": "/svc/", "secret": SECRET},
            {"name": "old", "url": service_url, "mount": "/old/", "secret": SECRET, **alt},
        ],
    }


@pytest.fixture
def alt_static(tmp_path: Path) -> Path:
    (tmp_path / "bootstrap").mkdir()
    (tmp_path / "bootstrap" / "bootstrap.min.css").write_text("/* alt */")
    (tmp_path / "plugit.css").write_text("/* alt plugit */")
    return tmp_path


def test_a_mount_with_a_theme_of_its_own(service_url, alt_static) -> None:
    proxy = ProxyApp(
        _config(service_url, theme="alt"), plugins=[AltTheme(alt_static)], load_entry_points=False
    )
    try:
        with serve(proxy) as base, Browser(base, proxy) as browser:
            site_page = browser.get("/svc/").text
            old_page = browser.get("/old/").text
            assert 'href="/_plugit/static/bootstrap/bootstrap.min.css"' in site_page
            assert 'href="/_plugit/themes/alt/bootstrap/bootstrap.min.css"' in old_page
            assert "/_plugit/static/" not in old_page
            css = browser.get("/_plugit/themes/alt/bootstrap/bootstrap.min.css")
            assert css.status_code == 200 and css.text == "/* alt */"
            assert browser.get("/_plugit/static/bootstrap/bootstrap.min.css").text != "/* alt */"
            # Its error pages are in its theme too; the site's own theme has no second address.
            missing = browser.get("/old/no-such-page")
            assert missing.status_code == 404
            assert "/_plugit/themes/alt/plugit.css" in missing.text
            assert browser.get("/_plugit/themes/bootstrap/plugit.css").status_code == 404
            assert browser.get("/_plugit/themes/alt/../plugit.css").status_code == 404
    finally:
        proxy.close()


def test_an_unknown_theme_names_the_service(service_url) -> None:
    with pytest.raises(ConfigError, match=r"services\[1\]\.theme: no theme 'nope'.*'old'"):
        ProxyApp(_config(service_url, theme="nope"), load_entry_points=False)
