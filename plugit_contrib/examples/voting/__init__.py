"""An example PlugIt service: polls and votes (the original's "SimplePolls" sample).

Anyone can read the polls and their results, logged-in users vote (one vote per poll, which they
can change), members create polls and administrators also see who voted for what.  The data lives
in a SQLite file (:mod:`.db`), the pages are Jinja2 templates rendered by the proxy inside the
site's layout (``templates/``), and ``media/`` holds the service's stylesheet.

Run it
------

With the proxy and simulated users, in one command::

    plugit demo                      # then open http://127.0.0.1:8000/voting/

The service alone, for a proxy of your own (it answers only loopback callers unless told)::

    python -m plugit_contrib.examples.voting.db --seed polls.sqlite3     # optional sample polls
    PLUGIT_DATABASE=polls.sqlite3 plugit service \\
        plugit_contrib.examples.voting.app:create_app --port 5000 --secret "$SECRET"

and mount ``http://127.0.0.1:5000`` in the proxy's configuration with the same secret.  In
Python, :func:`create_app` returns the WSGI application::

    from plugit_contrib.examples.voting import create_app
    app = create_app("polls.sqlite3", secret="...", debug=True)

Actions: ``/`` (list), ``/latest`` (the newest polls, a fragment for other pages),
``/show/<pollId>``, ``/vote/<pollId>/<responseId>`` (POST),
``/create/``, ``/test_json``, ``/test_xml``, ``/test_send_file``, plus a mail callback that keeps
replies to the service's e-mails.
"""

from .app import create_app

__all__ = ["create_app"]
