"""``plugit users``: the directory managed from the command line, with a real configuration."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest
from werkzeug.security import check_password_hash

from plugit_backends.users_cli import users_command
from plugit_backends.users_sqlite import SQLiteUserStore
from plugit_core.cli import main
from plugit_core.plugins import make_plugin_manager

# The commands are checked against the SQLite directory file the configuration names.
pytestmark = pytest.mark.embedded_backends


STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PASSWORD = "a long enough password"


@pytest.fixture
def config(tmp_path: Any) -> str:
    path = tmp_path / "plugit.toml"
    path.write_text(
        f"""
secret_key = "{STRONG_KEY}"
auth = ["session"]

[[services]]
name = "polls"
url = "http://127.0.0.1:9"

[[services]]
name = "wiki"
url = "http://127.0.0.1:9"

[users_sqlite]
path = "{(tmp_path / "directory.sqlite3").as_posix()}"

[auth_session]
password_method = "pbkdf2:sha256:1000"
min_password_length = 12
""",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture
def store(tmp_path: Any) -> Any:
    """The directory the commands write to, read after them."""
    stores = []

    def open_store() -> SQLiteUserStore:
        stores.append(SQLiteUserStore(tmp_path / "directory.sqlite3"))
        return stores[-1]

    yield open_store
    for opened in stores:
        opened.close()


@pytest.fixture
def run(config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``run(*args, stdin="")``: the exit status, stdout and stderr of ``plugit users``."""

    def runner(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = main(["users", "--config", config, *args])
        out, err = capsys.readouterr()
        return status, out, err

    return runner


def test_add_a_user_with_the_password_on_stdin(run: Any, store: Any) -> None:
    status, out, err = run(
        "add",
        "alice",
        "--email",
        "alice@example.org",
        "--first-name",
        "Alice",
        "--last-name",
        "Liddell",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert status == 0, err
    assert out.startswith("added alice (id ")
    directory = store()
    alice = directory.get_by_username("alice")
    assert (alice.email, alice.first_name, alice.last_name) == (
        "alice@example.org",
        "Alice",
        "Liddell",
    )
    assert not alice.is_superuser and directory.is_active(alice.pk)
    stored = directory.password_hash(alice.pk)
    assert stored.startswith("pbkdf2:sha256:1000$") and check_password_hash(stored, PASSWORD)


def test_add_asks_the_password_twice(run: Any, store: Any, monkeypatch: Any) -> None:
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    status, _, err = run("add", "boss", "--superuser")
    assert status == 0, err
    boss = store().get_by_username("boss")
    assert boss.is_superuser and boss.is_admin("polls")


def test_add_refuses_two_different_passwords(run: Any, store: Any, monkeypatch: Any) -> None:
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    status, out, err = run("add", "alice")
    assert status == 2 and out == ""
    assert err.strip() == "plugit: error: the two passwords differ"
    assert store().get_by_username("alice") is None


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("short\n", "a password needs at least 12 characters"),
        ("\n", "no password on standard input"),
    ],
)
def test_add_refuses_a_bad_password(run: Any, store: Any, stdin: str, message: str) -> None:
    status, _, err = run("add", "alice", "--password-stdin", stdin=stdin)
    assert status == 2 and err.strip() == f"plugit: error: {message}"
    assert store().get_by_username("alice") is None


def test_add_refuses_a_taken_name(run: Any) -> None:
    assert run("add", "alice", "--password-stdin", stdin=PASSWORD)[0] == 0
    status, _, err = run("add", "ALICE", "--password-stdin", stdin=PASSWORD)
    assert status == 2 and err.strip() == "plugit: error: the user name 'ALICE' is taken"


def test_passwd(run: Any, store: Any) -> None:
    run("add", "alice", "--password-stdin", stdin=PASSWORD)
    status, out, _ = run("passwd", "alice", "--password-stdin", stdin="another good password\n")
    assert status == 0 and "password of alice changed" in out
    directory = store()
    assert check_password_hash(
        directory.password_hash(directory.get_by_username("alice").pk), "another good password"
    )
    assert run("passwd", "nobody", "--password-stdin", stdin=PASSWORD)[2].strip() == (
        "plugit: error: no user named 'nobody'"
    )


def test_passwd_refuses_external_users(run: Any, store: Any) -> None:
    store().sync_external_user("ldap", "uid=dana", {"username": "dana"})
    status, _, err = run("passwd", "dana", "--password-stdin", stdin=PASSWORD)
    assert (
        status == 2 and err.strip() == "plugit: error: dana logs in through ldap: no local password"
    )


def test_grant_and_revoke(run: Any, store: Any) -> None:
    run("add", "alice", "--password-stdin", stdin=PASSWORD)
    assert run("grant", "alice", "polls", "member")[1].strip() == "alice is member of polls"
    assert run("grant", "alice", "wiki", "admin")[0] == 0
    alice = store().get_by_username("alice")
    assert alice.is_member("polls") and not alice.is_admin("polls") and alice.is_admin("wiki")
    assert run("revoke", "alice", "polls")[0] == 0
    assert run("grant", "alice", "*", "member")[0] == 0
    alice = store().get_by_username("alice")
    assert alice.member_of == {"wiki", "*"} and alice.is_member("anything")


def test_grant_refuses_unknown_services_roles_and_users(run: Any) -> None:
    run("add", "alice", "--password-stdin", stdin=PASSWORD)
    status, _, err = run("grant", "alice", "pols", "member")
    assert status == 2
    assert "no service named 'pols'" in err and "known: polls, wiki" in err
    assert run("grant", "nobody", "polls", "member")[0] == 2
    with pytest.raises(SystemExit) as exit_:  # argparse refuses the role itself
        run("grant", "alice", "polls", "owner")
    assert exit_.value.code == 2


def test_disable_and_enable(run: Any, store: Any) -> None:
    run("add", "alice", "--password-stdin", stdin=PASSWORD)
    assert run("disable", "alice")[1].strip() == "alice is disabled"
    directory = store()
    pk = directory.get_by_username("alice").pk
    assert directory.is_active(pk) is False
    assert run("enable", "alice")[1].strip() == "alice is enabled"
    assert directory.is_active(pk) is True


def test_organisations(run: Any, store: Any) -> None:
    run("add", "alice", "--password-stdin", stdin=PASSWORD)
    assert run("orga-add", "RTS", "--codops", "chrts")[1].startswith("added organisation RTS")
    assert run("orga-add", "EBU")[0] == 0
    status, _, err = run("orga-add", "rts")
    assert status == 2 and "exists" in err
    assert run("orga-join", "alice", "rts", "--admin")[1].strip() == (
        "alice is an administrator of RTS"
    )
    assert run("orga-join", "alice", "EBU")[0] == 0
    alice = store().get_by_username("alice")
    assert {(o.name, o.codops, o.is_admin) for o in alice.orgas} == {
        ("RTS", "chrts", True),
        ("EBU", "", False),
    }
    assert run("orga-leave", "alice", "RTS")[1].strip() == "alice left RTS"
    assert [o.name for o in store().get_by_username("alice").orgas] == ["EBU"]
    status, _, err = run("orga-join", "alice", "BBC")
    assert status == 2 and "no organisation named 'BBC'" in err


def test_list(run: Any, store: Any) -> None:
    run("add", "bob", "--email", "bob@example.org", "--password-stdin", stdin=PASSWORD)
    run("add", "alice", "--superuser", "--password-stdin", stdin=PASSWORD)
    run("grant", "bob", "polls", "admin")
    run("grant", "bob", "wiki", "member")
    run("orga-add", "RTS")
    run("orga-join", "bob", "RTS", "--admin")
    run("disable", "bob")
    store().sync_external_user("ldap", "uid=dana", {"username": "dana"})
    status, out, _ = run("list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "USERNAME",
        "ID",
        "SOURCE",
        "STATE",
        "EMAIL",
        "SERVICES",
        "ORGANISATIONS",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == ["alice", "bob", "dana"]
    assert rows["alice"][2:] == ["local", "active,superuser", "-", "-", "-"]
    assert rows["bob"][2:] == [
        "local",
        "disabled",
        "bob@example.org",
        "polls:admin,wiki:member",
        "RTS:admin",
    ]
    assert rows["dana"][2] == "ldap"


def test_a_configuration_without_a_directory(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "bare.toml"
    path.write_text(f'secret_key = "{STRONG_KEY}"\n', encoding="utf-8")
    assert main(["users", "--config", str(path), "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plugit: error: ") and 'set auth = ["session"]' in err


def test_a_misspelt_table_is_one_clear_line(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        f'secret_key = "{STRONG_KEY}"\nauth = ["session"]\n[users_sqlit]\npath = "x"\n',
        encoding="utf-8",
    )
    assert main(["users", "--config", str(path), "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plugit: error: users_sqlit: unknown table") and "\n" not in err


def test_a_missing_configuration_file(tmp_path: Any, capsys: Any) -> None:
    assert main(["users", "--config", str(tmp_path / "none.toml"), "list"]) == 2
    err = capsys.readouterr().err
    assert f"--config: no such file: {tmp_path / 'none.toml'}" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "builtins",
    [
        pytest.param(("plugit_backends.users_sqlite",), id="sqlite"),
        pytest.param(("plugit_backends.users_postgres",), id="postgres"),
        pytest.param(("plugit_backends.users_sqlite", "plugit_backends.users_postgres"), id="both"),
    ],
)
def test_each_users_backend_adds_the_command_once(builtins: tuple[str, ...]) -> None:
    """The command comes with whichever users backend is installed, once when both are."""
    pm = make_plugin_manager(load_entry_points=False, builtins=builtins)
    commands = argparse.ArgumentParser().add_subparsers()
    pm.hook.plugit_add_commands(commands=commands)
    assert list(commands.choices) == ["users"]
    assert commands.choices["users"].get_default("handler") is users_command
