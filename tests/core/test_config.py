"""Configuration: validated at start-up, every error names the key and the file."""

from __future__ import annotations

import pytest

from plugit_core.config import DEV_SECRET_KEY, ConfigError, ProxyConfig, load_config
from plugit_core.proxy.app import ProxyApp

STRONG = "s3cret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEF"


def service(**overrides):
    return {"name": "polls", "url": "http://127.0.0.1:5000", **overrides}


def test_minimal_file(tmp_path):
    path = tmp_path / "plugit.toml"
    path.write_text(
        f'secret_key = "{STRONG}"\n'
        '[[services]]\nname = "polls"\nurl = "http://127.0.0.1:5000/base/"\n'
        'template_dialect = "django"\n'
    )
    config = load_config(path)
    (mount,) = config.services
    assert mount.url == "http://127.0.0.1:5000/base"
    assert mount.mount == "/polls/"
    assert mount.template_dialect == "django"
    assert mount.timeout == 5.0
    assert config.dev_mode is False


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("TEST_PLUGIT_KEY", STRONG)
    config = ProxyConfig.from_mapping({"secret_key": {"env": "TEST_PLUGIT_KEY"}})
    assert config.secret_key == STRONG


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        pytest.param({}, "secret_key", "required outside dev mode", id="no-secret"),
        pytest.param({"secret_key": "short"}, "secret_key", "too weak", id="weak-secret"),
        pytest.param({"secret_key": "a" * 40}, "secret_key", "too weak", id="low-entropy-secret"),
        pytest.param(
            {"secret_key": {"env": "NOPE_NOT_SET"}}, "secret_key", "not set", id="missing-env"
        ),
        pytest.param(
            {"secret_key": STRONG, "dev_mod": True}, "dev_mod", "unknown setting", id="typo-top"
        ),
        pytest.param(
            {"secret_key": STRONG, "dev_mode": "yes"}, "dev_mode", "true or false", id="bad-bool"
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(timeout="slow")]},
            "services[0].timeout",
            "expected a number",
            id="bad-timeout",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(timeout=-1)]},
            "services[0].timeout",
            "at least",
            id="negative-timeout",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [{"url": "http://x"}]},
            "services[0].name",
            "required",
            id="no-name",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(url="ftp://x")]},
            "services[0].url",
            "http",
            id="bad-url",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(mount="polls")]},
            "services[0].mount",
            "start and end",
            id="mount",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(mount="/_plugit/x/")]},
            "services[0].mount",
            "reserved",
            id="reserved-mount",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(template_dialect="mako")]},
            "services[0].template_dialect",
            "one of jinja, django",
            id="dialect",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(secret="tiny")]},
            "services[0].secret",
            "16",
            id="short-secret",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(timout=3)]},
            "services[0].timout",
            "unknown",
            id="typo-service",
        ),
        pytest.param(
            {"secret_key": STRONG, "services": [service(), service(mount="/other/")]},
            "services[1].name",
            "used twice",
            id="duplicate-name",
        ),
        pytest.param(
            {"secret_key": STRONG, "user_data": ["username"]},
            "user_data",
            "must contain 'pk'",
            id="user-data-pk",
        ),
        pytest.param(
            {"secret_key": STRONG, "trusted_proxies": ["10.0.0.0/33"]},
            "trusted_proxies",
            "not an IP",
            id="cidr",
        ),
        pytest.param(
            {"dev_mode": True, "dev_allowed_clients": ["10.1.2.0/33"]},
            "dev_allowed_clients",
            "not an IP network",
            id="dev-allowed-cidr",
        ),
        pytest.param(
            {"dev_mode": True, "dev_allowed_clients": ["everyone"]},
            "dev_allowed_clients",
            "'everyone' is not an IP network",
            id="dev-allowed-word",
        ),
        pytest.param(
            {"dev_mode": True, "dev_allowed_clients": [""]},
            "dev_allowed_clients",
            "non-empty strings",
            id="dev-allowed-empty",
        ),
        pytest.param(
            {"dev_mode": True, "dev_allowed_clients": 10},
            "dev_allowed_clients",
            "list of",
            id="dev-allowed-type",
        ),
    ],
)
def test_invalid_configuration_names_the_key(data, key, words):
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping(data, "site.toml")
    assert info.value.key == key
    assert words in str(info.value)
    assert "site.toml" in str(info.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("secret_key = \n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/plugit.toml")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        pytest.param(
            {"cache_memory": {"max_bytes": "big"}}, "cache_memory.max_bytes", id="backend-value"
        ),
        pytest.param({"cache_memory": {"maxbytes": 1}}, "cache_memory.maxbytes", id="backend-typo"),
        pytest.param({"cache_memroy": {}}, "cache_memroy", id="unknown-table"),
        pytest.param(
            {"session_cookie": {"samesite": "None", "secure": False}},
            "session_cookie.samesite",
            id="samesite",
        ),
    ],
)
@pytest.mark.embedded_backends
def test_backend_sections_are_checked_at_start_up(section, key):
    with pytest.raises(ConfigError) as info:
        ProxyApp({"secret_key": STRONG, **section}, load_entry_points=False)
    assert info.value.key == key


def test_unknown_backend_name():
    with pytest.raises(ConfigError, match="no cache backend named 'memcached'"):
        ProxyApp({"secret_key": STRONG, "cache": "memcached"}, load_entry_points=False)


def test_dev_mode_needs_no_secret():
    config = ProxyConfig.from_mapping({"dev_mode": True})
    assert config.secret_key


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(DEV_SECRET_KEY, id="dev-key"),
        pytest.param(f"  {DEV_SECRET_KEY}\n", id="dev-key-padded"),
        pytest.param("change-me-0123456789-abcdefghijklmnopqrstuvwxyz", id="placeholder"),
        pytest.param("REPLACE-ME-with-a-long-random-string-0123456789", id="placeholder-caps"),
    ],
)
def test_published_keys_are_refused_outside_dev_mode(key, tmp_path):
    """Anyone can read these keys, so anyone could sign a session cookie with them."""
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping({"secret_key": key}, "site.toml")
    assert info.value.key == "secret_key"
    message = str(info.value)
    assert "published example or dev-mode key" in message
    assert "secrets.token_urlsafe(48)" in message  # says how to make one
    path = tmp_path / "plugit.toml"  # from a file and from the environment alike
    path.write_text('secret_key = { env = "TEST_PLUGIT_PUBLISHED_KEY" }\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_PLUGIT_PUBLISHED_KEY", key)
        with pytest.raises(ConfigError, match="published example or dev-mode key"):
            load_config(path)


def test_the_dev_key_is_only_for_dev_mode():
    assert ProxyConfig.from_mapping({"dev_mode": True}).secret_key == DEV_SECRET_KEY
    config = ProxyConfig.from_mapping({"dev_mode": True, "secret_key": DEV_SECRET_KEY})
    assert config.dev_mode is True


def test_missing_secret_says_how_to_make_one():
    with pytest.raises(ConfigError, match=r"make one with python -c .*token_urlsafe"):
        ProxyConfig.from_mapping({})


def test_dev_allowed_clients():
    assert ProxyConfig.from_mapping({"dev_mode": True}).dev_allowed_clients == ()
    config = ProxyConfig.from_mapping(
        {"dev_mode": True, "dev_allowed_clients": ["10.1.2.0/24", "fd00::/8", "192.0.2.7"]}
    )
    assert config.dev_allowed_clients == ("10.1.2.0/24", "fd00::/8", "192.0.2.7")


# -- where an error is: the service by its name, and the line --------------------------------------

LOCATED = f'''# the site
secret_key = "{STRONG}"

[[services]]
name = "polls"
url = "http://127.0.0.1:5000"

[[services]]
name = "wiki"
title = """A title
timeout = "over two lines"
"""
url = "http://127.0.0.1:5001"
timeout = TIMEOUT

[[services.variants]]
name = "beta"
url = "http://127.0.0.1:5002"
roles = ["admin"]
cookie = "COOKIE"

[cache_memory]
max_items = ITEMS
'''


def _located(tmp_path, timeout="5", cookie="beta=1", items="100", **more):
    path = tmp_path / "plugit.toml"
    text = LOCATED.replace("TIMEOUT", timeout).replace("COOKIE", cookie)
    text = text.replace("ITEMS", items)
    for old, new in more.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("changes", "key", "service", "line"),
    [
        pytest.param({"timeout": "-1"}, "services[1].timeout", "wiki", 14, id="value"),
        pytest.param({"cookie": "beta"}, "services[1].variants[0].cookie", "wiki", 20, id="nested"),
        pytest.param(
            {"http://127.0.0.1:5000": "ftp://a"}, "services[0].url", "polls", 6, id="first"
        ),
        # A key that is missing: the line of its table.
        pytest.param({'name = "beta"\n': ""}, "services[1].variants[0].name", "wiki", 16,
                     id="missing-key"),
    ],
)  # fmt: skip
def test_a_service_value_error_names_the_service_and_the_line(
    tmp_path, changes, key, service, line
):
    simple = {k: v for k, v in changes.items() if k in ("timeout", "cookie")}
    text_changes = {k: v for k, v in changes.items() if k not in simple}
    path = _located(tmp_path, **simple, **text_changes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.key, error.service, error.line) == (key, service, line)
    assert str(error).endswith(f"(service {service!r}, in {path}, line {line})")


@pytest.mark.embedded_backends  # the error is in [cache_memory]: matrix runs would swap it out
def test_a_backend_table_error_names_the_line(tmp_path):
    path = _located(tmp_path, items="-3", **{"[cache_memory]": "[cache_memory]\n# items"})
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        ProxyApp(config, check_services=False)
    assert info.value.key.startswith("cache_memory.")
    assert info.value.service is None
    assert info.value.line == 24
    assert str(info.value).endswith(f"(in {path}, line 24)")


def test_a_key_inside_a_multi_line_string_is_not_taken_for_one(tmp_path):
    # `timeout = "over two lines"` (line 11) is text of the title: the real timeout is line 14.
    path = _located(tmp_path, timeout='"soon"')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("services[1].timeout", 14)


def test_errors_without_a_file_name_the_key_only():
    with pytest.raises(ConfigError) as info:
        ProxyConfig.from_mapping({"secret_key": STRONG, "services": [service(timeout=-1)]})
    assert str(info.value) == "services[0].timeout: must be at least 0.001, got -1"
    assert (info.value.line, info.value.service) == (None, None)


def test_blank_titles_stand_for_the_name_and_the_path():
    config = ProxyConfig.from_mapping(
        {
            "dev_mode": True,
            "services": [service(name="my_app", title=""), service(name="b-c", mount="/bc/")],
            "pages": [{"path": "/p", "title": ""}],
        }
    )
    assert [mount.title for mount in config.services] == ["my_app", "B C"]
    assert config.pages[0].title == "/p"
