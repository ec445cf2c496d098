"""The news service's data: items kept in the process's memory, seeded with a few.

A :class:`NewsStore` is safe to share between threads.  The demo runs the service as one
process, so every visitor sees the same items until the service stops.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SAMPLE_ITEMS", "NewsItem", "NewsStore"]

SAMPLE_ITEMS: tuple[tuple[str, str, str], ...] = (
    (
        "The team meeting moves to Brussels",
        "Most of you voted for Brussels: the next meeting is there.",
        "The poll is closed and the room is booked. Details follow by mail.",
    ),
    (
        "New coffee machine on the second floor",
        "It makes espresso, and tea for those who prefer.",
        "Please rinse the milk frother after use.",
    ),
    (
        "Pages composed of several services",
        "The home page now shows the latest polls and the news side by side.",
        "Each box is a fragment: an action of a service, fetched by the proxy in parallel with "
        "the others, each within its own timeout.",
    ),
)


@dataclass(frozen=True)
class NewsItem:
    id: int
    title: str
    summary: str
    body: str
    author: str
    published: str  # ISO date

    def as_data(self) -> dict[str, Any]:
        """The item as JSON-like data for a template."""
        return asdict(self)


class NewsStore:
    """News items in memory, newest first."""

    def __init__(self, *, seed: bool = True) -> None:
        self._lock = threading.Lock()
        self._items: list[NewsItem] = []
        if seed:
            for title, summary, body in SAMPLE_ITEMS:
                self.add(title, summary, body, author="editor")

    def add(self, title: str, summary: str, body: str, *, author: str) -> NewsItem:
        """Publish an item today; return it."""
        with self._lock:
            item = NewsItem(
                id=len(self._items) + 1,
                title=title,
                summary=summary,
                body=body,
                author=author,
                published=datetime.date.today().isoformat(),
            )
            self._items.append(item)
        return item

    def latest(self, count: int | None = None) -> list[NewsItem]:
        """The newest ``count`` items (all of them when None), newest first."""
        with self._lock:
            items = list(reversed(self._items))
        return items if count is None else items[:count]

    def get(self, item_id: int) -> NewsItem | None:
        with self._lock:
            if 1 <= item_id <= len(self._items):
                return self._items[item_id - 1]
        return None
