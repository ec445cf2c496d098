"""Settings of the Django host example (one module, read from the environment).

=============================  ===========================================================
``DJANGO_HOST_SECRET_KEY``     Django's ``SECRET_KEY`` (default: a random one per process,
                               so logins end when the process does)
``DJANGO_HOST_DB``             the SQLite file (default: ``plugit-django-host.sqlite3`` in
                               the temporary folder)
``DJANGO_HOST_ALLOWED_HOSTS``  comma-separated ``ALLOWED_HOSTS`` (default: loopback names)
``DJANGO_HOST_DEBUG``          ``1`` for ``DEBUG = True``
``DJANGO_HOST_HTTPS``          ``1`` when the site is served over HTTPS: every cookie (Django's
                               and the proxy's) is then ``Secure``; the default suits plain
                               HTTP on this machine
``PLUGIT_CONFIG``              a PlugIt TOML file for the proxy; without it, :data:`PLUGIT`
                               mounts one service at ``/polls/`` from the next three
``PLUGIT_POLLS_URL``           the polls service (default: ``http://127.0.0.1:5000``)
``PLUGIT_SERVICE_SECRET``      the secret shared with that service (as ``plugit service``)
``PLUGIT_SECRET_KEY``          the proxy's own key (default: a random one per process)
=============================  ===========================================================
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

DEBUG = os.environ.get("DJANGO_HOST_DEBUG") == "1"
SECRET_KEY = os.environ.get("DJANGO_HOST_SECRET_KEY") or secrets.token_urlsafe(50)
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_HOST_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "plugit_contrib.examples.django_host.urls"
WSGI_APPLICATION = "plugit_contrib.examples.django_host.wsgi.application"
TEMPLATES: list[dict[str, Any]] = []  # the example's pages are built in its views

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_HOST_DB")
        or str(Path(tempfile.gettempdir()) / "plugit-django-host.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

HTTPS = os.environ.get("DJANGO_HOST_HTTPS") == "1"
LOGIN_URL = "/login/"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
USE_TZ = True
TIME_ZONE = "UTC"

# The PlugIt proxy's configuration (what wsgi.py gives wrap_django_wsgi).
PLUGIT: str | dict[str, Any] = os.environ.get("PLUGIT_CONFIG") or {
    "secret_key": os.environ.get("PLUGIT_SECRET_KEY") or secrets.token_urlsafe(48),
    "site_name": "Django host example",
    "session_cookie": {"secure": HTTPS},
    "services": [
        {
            "name": "polls",
            "title": "Polls",
            "url": os.environ.get("PLUGIT_POLLS_URL", "http://127.0.0.1:5000"),
            "mount": "/polls/",
            **(
                {"secret": os.environ["PLUGIT_SERVICE_SECRET"]}
                if os.environ.get("PLUGIT_SERVICE_SECRET")
                else {}
            ),
        }
    ],
}
