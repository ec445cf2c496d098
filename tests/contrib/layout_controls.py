"""Read the PlugIt layout's controls as a browser does (imported by name by the contrib tests)."""

from __future__ import annotations

from html.parser import HTMLParser


class _LogoutControl(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.control: tuple[str, str, dict[str, str]] | None = None
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if values.get("id") == "plugit-logout":
            if tag == "a":
                self.control = ("GET", values["href"], {})
            elif tag == "form":
                method = values.get("method", "get").upper()
                self.control = (method, values.get("action", ""), {})
                self._inside = True
        elif self._inside and tag == "input" and "name" in values:
            assert self.control is not None
            self.control[2][values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def logout_control(html: str) -> tuple[str, str, dict[str, str]]:
    """The layout's "Log out" control: (method, URL, fields the browser would submit)."""
    parser = _LogoutControl()
    parser.feed(html)
    parser.close()
    assert parser.control is not None, "no logout control in the page"
    return parser.control
