"""Every built-in table is read declaratively, and every key it reads has help and is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugit_backends.auth_ldap import LDAPSettings
from plugit_backends.auth_oidc import OIDCSettings
from plugit_backends.auth_session import SessionAuthSettings
from plugit_backends.billing.sqlite import SQLiteBillingSettings
from plugit_backends.cache_memory import MemoryCacheSettings
from plugit_backends.cache_redis import RedisCacheSettings
from plugit_backends.login import LoginSettings
from plugit_backends.mail_smtp import MailSettings
from plugit_backends.session_cookie import CookieSettings
from plugit_backends.session_redis import RedisSessionSettings
from plugit_backends.sql.postgres import PgSettings
from plugit_backends.users_sqlite import SQLiteUsersSettings
from plugit_core.config import FragmentSpec, ProxyConfig, ServiceMount, SitePage, Variant
from plugit_core.settings import describe

ROOT = Path(__file__).resolve().parents[2]
DOCS = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
TABLES = [
    ProxyConfig,
    ServiceMount,
    Variant,
    SitePage,
    FragmentSpec,
    LDAPSettings,
    OIDCSettings,
    SessionAuthSettings,
    SQLiteBillingSettings,
    MemoryCacheSettings,
    RedisCacheSettings,
    LoginSettings,
    MailSettings,
    CookieSettings,
    RedisSessionSettings,
    PgSettings,
    SQLiteUsersSettings,
]


@pytest.mark.parametrize("table", [pytest.param(t, id=t.__name__) for t in TABLES])
def test_every_key_has_help_and_documentation(table: type) -> None:
    entries = describe(table)
    assert entries
    for entry in entries:
        assert entry["help"], f"{table.__name__}.{entry['key']} has no help"
        assert re.search(rf"\b{entry['key']}\b", DOCS), f"{entry['key']} is not in docs/"
        if entry["secret"]:
            assert entry["default"] is None
