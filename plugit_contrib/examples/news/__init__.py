"""An example PlugIt service: a news board, the demo's second service.

Anyone reads the news (``/`` and ``/item/<itemId>``), members post news items (``/post``).  Two
actions are meant to be placed as fragments in other pages (see docs/fragments.md): ``/latest``
(the three newest items with their summaries, for a dashboard) and ``/headlines`` (the newest
titles, for a sidebar).  The items live in the service's memory (:mod:`.store`), seeded with a
few; ``media/news.css`` is the stylesheet the fragments declare (``fragment_assets``).

Run it
------

With the voting service, a composed home page and a shared sidebar::

    plugit demo                      # then open http://127.0.0.1:8000/

The service alone, for a proxy of your own::

    plugit service plugit_contrib.examples.news.app:create_app --port 5001 --secret "$SECRET"

In Python, :func:`create_app` returns the WSGI application.
"""

from .app import create_app

__all__ = ["create_app"]
