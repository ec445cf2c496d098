"""A minimal Django project hosting a PlugIt service at ``/polls/`` for Django's users.

* :mod:`.settings`: the one settings module (SQLite, sessions, auth, CSRF);
* :mod:`.urls`: the site's own pages, a home page and a login/logout (:mod:`.views`);
* :mod:`.wsgi`: Django's WSGI application wrapped with
  :func:`plugit_contrib.django.wrap_django_wsgi`, so ``/polls/...`` and ``/_plugit/...`` are
  the PlugIt proxy's and every other URL Django's.

Run it (three shells, or background the first)::

    export PLUGIT_SERVICE_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    plugit service plugit_contrib.examples.voting.app:create_app --port 5000

    export DJANGO_SETTINGS_MODULE=plugit_contrib.examples.django_host.settings
    export DJANGO_HOST_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))')
    python -m django migrate
    python -m django createsuperuser        # or a staff user: a member of every service
    python -m django runserver 8000         # serves .wsgi.application

then open http://127.0.0.1:8000/, log in, and follow the link to the polls.  The environment
variables read by :mod:`.settings` are listed there.
"""
