"""Fixtures shared by every test directory: an HTTP client and real loopback servers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

# Before anything imports them: failed checks of the shared suites show their values.
pytest.register_assert_rewrite(
    "plugit_core.testing",
    *(
        f"plugit_core.kinds.{kind}.testing"
        for kind in ("auth", "billing", "cache", "mailqueue", "session", "users")
    ),
)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session, closed after the test (no unclosed-socket warnings)."""
    with requests.Session() as session:
        yield session


@pytest.fixture
def served() -> Iterator[Callable[..., str]]:
    """``served(app, host="127.0.0.1")`` serves a WSGI app over HTTP until the test ends."""
    from plugit_core.testing import serve

    with contextlib.ExitStack() as stack:

        def start(app: Callable[..., Any], host: str = "127.0.0.1") -> str:
            return stack.enter_context(serve(app, host=host))

        yield start


# -- the backend matrix (tox.ini): PLUGIT_TEST_CACHE, PLUGIT_TEST_SESSION, PLUGIT_TEST_STORE ------
# (and PLUGIT_TEST_HTTP_CLIENT: the proxy's transport to services, "auto" by default)
#
# Every proxy configuration built in a test goes through ProxyConfig.from_mapping; in a matrix
# environment the embedded defaults it names are swapped for the shared backends, with a key prefix
# (Redis) or a schema (PostgreSQL) of this run's own, removed at the end.

MATRIX = {
    "cache": os.environ.get("PLUGIT_TEST_CACHE", "memory"),
    "session": os.environ.get("PLUGIT_TEST_SESSION", "cookie"),
    "store": os.environ.get("PLUGIT_TEST_STORE", "sqlite"),
    "http_client": os.environ.get("PLUGIT_TEST_HTTP_CLIENT", "auto"),
}
REDIS_URL = os.environ.get("PLUGIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "PLUGIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RUN = f"plugit_matrix_{secrets.token_hex(4)}"


def apply_matrix(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """``data`` with the matrix's backends in place of the embedded defaults.

    Each configuration gets a namespace of its own, as the embedded defaults would (a fresh
    memory cache, a fresh SQLite file); the same file read twice (by a command, then by a
    proxy) gets the same one.
    """
    data = dict(data)
    token = hashlib.sha256(source.encode()).hexdigest()[:8] if source else secrets.token_hex(4)
    own = f"{RUN}:{token}"
    if MATRIX["http_client"] != "auto":
        data.setdefault("http_client", MATRIX["http_client"])
    if MATRIX["cache"] == "redis" and data.get("cache", "memory") == "memory":
        data["cache"] = "redis"
        data["cache_redis"] = {"url": REDIS_URL, "prefix": f"{own}:cache:"}
    if MATRIX["session"] == "redis" and data.get("session", "cookie") == "cookie":
        cookie = dict(data.pop("session_cookie", {}) or {})
        data["session"] = "redis"
        data["session_redis"] = {"url": REDIS_URL, "prefix": f"{own}:session:", **cookie}
    if MATRIX["store"] == "postgres":
        schema = f"{RUN}_{token}"
        if (data.get("auth") or data.get("users")) and data.get("users", "sqlite") == "sqlite":
            data.pop("users_sqlite", None)
            data["users"] = "postgres"
            data["users_postgres"] = {"dsn": POSTGRES_DSN, "schema": schema}
        if data.get("billing") == "sqlite":
            data.pop("billing_sqlite", None)
            data["billing"] = "postgres"
            data["billing_postgres"] = {"dsn": POSTGRES_DSN, "schema": schema}
        mail = data.get("mail_smtp")
        if data.get("mail") == "smtp" and isinstance(mail, dict):
            if mail.get("queue", "sqlite") == "sqlite":
                mail = {k: v for k, v in mail.items() if k != "queue_path"}
                mail.update(queue="postgres", queue_dsn=POSTGRES_DSN, queue_schema=schema)
                data["mail_smtp"] = mail
    return data


@pytest.fixture(autouse=True)
def _backend_matrix(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    if MATRIX == {"cache": "memory", "session": "cookie", "store": "sqlite", "http_client": "auto"}:
        return
    if request.node.get_closest_marker("embedded_backends"):
        return  # the test is about the embedded defaults themselves
    from plugit_core.config import ProxyConfig

    original = ProxyConfig.from_mapping.__func__  # type: ignore[attr-defined]

    def from_mapping(
        cls: type[ProxyConfig], data: Any, source: str | None = None, **kw: Any
    ) -> Any:
        return original(cls, apply_matrix(dict(data), source), source, **kw)

    monkeypatch.setattr(ProxyConfig, "from_mapping", classmethod(from_mapping))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove what the matrix run left in Redis and PostgreSQL."""
    if "redis" in (MATRIX["cache"], MATRIX["session"]):
        import redis

        with contextlib.suppress(redis.RedisError), redis.Redis.from_url(REDIS_URL) as client:
            for key in client.scan_iter(match=f"{RUN}:*"):
                client.delete(key)
    if MATRIX["store"] == "postgres":
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(POSTGRES_DSN, autocommit=True) as db,
        ):
            schemas = db.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{RUN}%",)
            ).fetchall()
            for (name,) in schemas:
                db.execute(f'DROP SCHEMA "{name}" CASCADE')
