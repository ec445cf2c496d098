"""The declarative settings reader: every wrong value is an error naming its key and file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from plugit_core.config import ConfigError
from plugit_core.settings import SettingError, describe, read_section, setting


def _port(value: int) -> int:
    if value > 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


@dataclass(frozen=True)
class Inner:
    name: str = setting(help="a name")
    weight: float = setting(1.0, above=0, help="a weight")


@dataclass(frozen=True)
class Sample:
    host: str = setting(help="a host")
    port: int = setting(0, check=_port, help="a port")
    ratio: float = setting(0.5, minimum=0, maximum=1, help="a ratio")
    retries: int = setting(3, minimum=1, text=True, help="retries")
    verbose: bool = setting(False, help="verbosity")
    mode: str = setting("fast", choices=("fast", "safe"), help="a mode")
    label: str | None = setting(None, help="a label")
    password: str | None = setting(None, secret=True, help="a password")
    tags: tuple[str, ...] = setting((), help="tags")
    words: tuple[str, ...] = setting((), split=True, non_empty=True, help="words")
    extra: Mapping[str, Any] = setting(default_factory=dict, help="a free table")
    inner: Inner | None = setting(None, help="a nested table")
    items: tuple[Inner, ...] = setting((), expected="[[sample.items]] tables", help="items")
    derived: str = setting("", default_from=lambda v: f"{v['host']}:{v['port']}", help="x")
    not_read: int = 7


def read(**values: Any) -> Sample:
    return read_section(Sample, {"host": "h", **values}, "sample", "plugit.toml")


def error_of(data: Any, where: str = "sample", **options: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read_section(Sample, data, where, "plugit.toml", **options)
    return caught.value


def test_defaults_types_and_derived_values() -> None:
    sample = read()
    assert sample == Sample(host="h", derived="h:0")
    assert sample.extra == {} and sample.not_read == 7
    sample = read(ratio=1, port=80, tags="one", words="a b", label="")
    assert sample.ratio == 1.0 and isinstance(sample.ratio, float)
    assert (sample.tags, sample.words, sample.label) == (("one",), ("a", "b"), "")
    assert sample.derived == "h:80"


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        pytest.param({"port": True}, "port", "expected a number, got True", id="bool-as-int"),
        pytest.param({"port": 1.5}, "port", "expected a whole number, got 1.5", id="float-int"),
        pytest.param({"port": "80"}, "port", "expected a number, got '80'", id="string-int"),
        pytest.param({"port": 70000}, "port", "not a TCP port: 70000", id="check"),
        pytest.param({"ratio": float("nan")}, "ratio", "expected a number", id="nan"),
        pytest.param({"ratio": float("inf")}, "ratio", "expected a number", id="inf"),
        pytest.param({"ratio": 1.01}, "ratio", "must be at most 1, got 1.01", id="above-max"),
        pytest.param({"ratio": -0.1}, "ratio", "must be at least 0, got -0.1", id="below-min"),
        pytest.param({"retries": 0}, "retries", "must be at least 1, got 0", id="min"),
        pytest.param({"retries": "x"}, "retries", "expected a number, got 'x'", id="text"),
        pytest.param({"verbose": 1}, "verbose", "expected true or false, got 1", id="int-bool"),
        pytest.param({"verbose": "true"}, "verbose", "true or false", id="string-bool"),
        pytest.param({"mode": "slow"}, "mode", "must be one of fast, safe", id="choice"),
        pytest.param({"label": 3}, "label", "expected a string, got int", id="int-str"),
        pytest.param({"tags": [1]}, "tags", "expected a list of strings", id="list-int"),
        pytest.param({"tags": {"a": 1}}, "tags", "expected a list of strings", id="list-table"),
        pytest.param({"words": ["a", ""]}, "words", "non-empty strings", id="empty-item"),
        pytest.param({"extra": 3}, "extra", "expected a table", id="table"),
        pytest.param({"inner": "x"}, "inner", "expected a table", id="nested-type"),
        pytest.param({"inner": {}}, "inner.name", "is required", id="nested-required"),
        pytest.param(
            {"inner": {"name": "n", "weight": 0}}, "inner.weight", "more than 0", id="nested"
        ),
        pytest.param(
            {"inner": {"name": "n", "wieght": 1}}, "inner.wieght", "unknown", id="nested-typo"
        ),
        pytest.param({"items": {}}, "items", "expected [[sample.items]] tables", id="array"),
        pytest.param({"items": [{"name": "a"}, 3]}, "items[1]", "expected a table", id="item"),
        pytest.param(
            {"items": [{"name": "a"}, {"name": 1}]}, "items[1].name", "string", id="item-key"
        ),
        pytest.param({"verbos": True}, "verbos", "unknown setting", id="typo"),
        pytest.param({"not_read": 1}, "not_read", "unknown setting", id="not-a-setting"),
    ],
)
def test_wrong_values_name_the_key(values: dict[str, Any], key: str, message: str) -> None:
    error = error_of({"host": "h", **values})
    assert error.key == f"sample.{key}"
    assert message in str(error)
    assert "plugit.toml" in str(error)


def test_a_missing_required_key() -> None:
    error = error_of({})
    assert (error.key, str(error)) == ("sample.host", "sample.host: is required (in plugit.toml)")


def test_a_typo_is_the_first_error() -> None:
    assert error_of({"port": "bad", "hots": "h"}).key == "sample.hots"


def test_blank_is_missing_when_asked() -> None:
    assert read(label="").label == ""
    assert error_of({"host": ""}, blank_is_missing=True).key == "sample.host"
    sample = read_section(Sample, {"host": "h", "label": ""}, "s", None, blank_is_missing=True)
    assert sample.label is None


def test_not_a_table() -> None:
    assert error_of([1, 2]).key == "sample"
    assert error_of("x", where="").key == "config"


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIT_TEST_PASSWORD", "from-env")
    monkeypatch.setenv("PLUGIT_TEST_RETRIES", "5")
    monkeypatch.setenv("PLUGIT_TEST_PORT", "80")
    sample = read(password={"env": "PLUGIT_TEST_PASSWORD"}, retries={"env": "PLUGIT_TEST_RETRIES"})
    assert (sample.password, sample.retries) == ("from-env", 5)
    # A number from the environment is a string: read as one only where the field says so.
    error = error_of({"host": "h", "port": {"env": "PLUGIT_TEST_PORT"}})
    assert error.key == "sample.port"


@pytest.mark.parametrize("name", ["PLUGIT_TEST_NOT_SET", 3])
def test_an_unset_environment_variable(monkeypatch: pytest.MonkeyPatch, name: Any) -> None:
    monkeypatch.delenv("PLUGIT_TEST_NOT_SET", raising=False)
    error = error_of({"host": "h", "password": {"env": name}})
    assert error.key == "sample.password"
    assert "is not set" in str(error)


def test_a_table_with_more_than_env_is_a_table() -> None:
    assert error_of({"host": {"env": "X", "other": 1}}).key == "sample.host"
    assert read(extra={"env": "X", "y": 1}).extra == {"env": "X", "y": 1}


def test_secrets_are_never_shown() -> None:
    @dataclass(frozen=True)
    class Secretive:
        token: str = setting(secret=True, choices=("alpha",), help="a token")
        pin: int = setting(0, secret=True, maximum=9999, help="a pin")

    for data in ({"token": "hunter2-value"}, {"token": "alpha", "pin": 123456}):
        with pytest.raises(ConfigError) as caught:
            read_section(Secretive, data, "s", None)
        assert "hunter2" not in str(caught.value) and "123456" not in str(caught.value)
    settings = read_section(Secretive, {"token": "alpha", "pin": 1234}, "s", None)
    assert "alpha" not in repr(settings) and "1234" not in repr(settings)
    assert [entry["default"] for entry in describe(Secretive)] == [None, None]


def test_settings_check_names_a_key() -> None:
    @dataclass(frozen=True)
    class Pair:
        low: int = setting(0, help="low")
        high: int = setting(10, help="high")

        def settings_check(self) -> None:
            if self.low > self.high:
                raise SettingError("must not be above high", "low")

    assert read_section(Pair, {"low": 3}, "pair", None) == Pair(3, 10)
    with pytest.raises(ConfigError, match=r"^pair\.low: must not be above high$"):
        read_section(Pair, {"low": 30}, "pair", None)


def test_default_from_may_refuse() -> None:
    def needed(values: Mapping[str, Any]) -> str:
        raise SettingError("is required without a default")

    @dataclass(frozen=True)
    class Needy:
        key: str = setting(default_from=needed, help="a key")

    with pytest.raises(ConfigError, match=r"^needy\.key: is required without a default$"):
        read_section(Needy, {}, "needy", None)


def test_mutable_defaults_are_refused() -> None:
    with pytest.raises(TypeError):
        setting([])


def test_an_unknown_type_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Odd:
        when: complex = setting(0j, help="a complex number")

    with pytest.raises(TypeError):
        read_section(Odd, {"when": 1}, "odd", None)


def test_describe_lists_every_key() -> None:
    entries = {entry["key"]: entry for entry in describe(Sample)}
    assert "not_read" not in entries
    assert entries["password"]["secret"] is True
    assert entries["port"] == {
        "key": "port",
        "type": "int",
        "default": 0,
        "secret": False,
        "help": "a port",
    }


def test_a_check_of_the_whole_table_names_the_table() -> None:
    @dataclass(frozen=True)
    class Empty:
        name: str = setting("", help="a name")

        def settings_check(self) -> None:
            if not self.name:
                raise SettingError("needs a name")

    with pytest.raises(ConfigError, match=r"^empty: needs a name$"):
        read_section(Empty, {}, "empty", None)
