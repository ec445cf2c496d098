"""The habits of the ``plugit`` command: --version, where the configuration comes from, options
before or after sub-commands, one-line errors, defaults in --help, ``plugit config check``, the
access log and ``--reload``."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from plugit_core.cli import main
from plugit_core.service import PlugItService, action
from plugit_core.testing import free_port, wait_for_port

pytestmark = pytest.mark.embedded_backends

STRONG_KEY = "k3y-for-cli-habits-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SECRET = "cli-habits-service-secret-0123456789"


def _config_text(tmp_path: Path, services: str = "") -> str:
    return (
        f'secret_key = "{STRONG_KEY}"\nauth = ["session"]\n'
        f'[users_sqlite]\npath = "{(tmp_path / "directory.sqlite3").as_posix()}"\n'
        "[session_cookie]\nsecure = false\n" + services
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(_config_text(tmp_path))
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder: an empty one, without PLUGIT_CONFIG."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PLUGIT_CONFIG", raising=False)
    return folder


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- --version -------------------------------------------------------------------------------------


def test_version_names_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = importlib.metadata.version("plugit-wsgi")
    assert capsys.readouterr().out.strip() == f"plugit-wsgi {version}"


def test_version_of_the_console_script() -> None:
    script = Path(sys.executable).with_name("plugit")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plugit-wsgi ")


# -- where the configuration comes from ------------------------------------------------------------


def test_plugit_toml_in_the_current_folder_is_the_default(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (elsewhere / "plugit.toml").write_text(_config_text(tmp_path))
    assert main(["users", "orga-add", "Newsroom"]) == 0
    assert "added organisation Newsroom" in capsys.readouterr().out
    assert main(["users", "list"]) == 0
    assert (tmp_path / "directory.sqlite3").is_file()


def test_plugit_config_environment_variable_is_read(
    config: Path,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (elsewhere / "plugit.toml").write_text("this is not read")
    monkeypatch.setenv("PLUGIT_CONFIG", str(config))
    assert main(["users", "orga-add", "Sports"]) == 0
    assert "added organisation Sports" in capsys.readouterr().out


def test_config_option_wins_over_the_environment(
    config: Path,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PLUGIT_CONFIG", str(elsewhere / "missing.toml"))
    assert main(["users", "orga-add", "Archive", "--config", str(config)]) == 0
    assert "added organisation Archive" in capsys.readouterr().out


def test_no_configuration_anywhere_is_one_line_naming_the_option(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proxy"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1
    assert err[0].startswith("plugit: error: --config: no configuration file given")
    assert "PLUGIT_CONFIG" in err[0] and "plugit.toml" in err[0]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["users", "list", "--config", "nope.toml"], None, "--config: no such file: nope.toml"),
        (["config", "check"], "gone.toml", "PLUGIT_CONFIG: no such file: gone.toml"),
        (["--config", "x.toml", "demo"], None, "--config: plugit demo reads no configuration"),
    ],
)
def test_configuration_errors_name_where_they_come_from(
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    message: str,
) -> None:
    if env:
        monkeypatch.setenv("PLUGIT_CONFIG", env)
    assert main(argv) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"plugit: error: {message}")


@pytest.mark.parametrize(
    "place",
    [
        pytest.param(lambda c: ["--config", c, "users", "orga-add", "X"], id="before-command"),
        pytest.param(lambda c: ["users", "--config", c, "orga-add", "X"], id="before-action"),
        pytest.param(lambda c: ["users", "orga-add", "--config", c, "X"], id="after-action"),
        pytest.param(lambda c: ["users", "orga-add", "X", "--config", c], id="at-the-end"),
    ],
)
def test_config_option_works_before_or_after_sub_commands(
    config: Path,
    elsewhere: Path,
    capsys: pytest.CaptureFixture[str],
    place: Callable[[str], list[str]],
) -> None:
    assert main(place(str(config))) == 0
    assert "added organisation X" in capsys.readouterr().out


def test_plugin_commands_take_the_default_configuration_too(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plugit billing`` is a plugin's command: its --config is optional and placed anywhere."""
    (elsewhere / "plugit.toml").write_text(
        'billing = "sqlite"\n'
        + _config_text(tmp_path, '[[services]]\nname = "polls"\nurl = "http://127.0.0.1:9"\n')
        + f'[billing_sqlite]\npath = "{(tmp_path / "billing.sqlite3").as_posix()}"\n'
    )
    assert main(["billing", "plans", "polls"]) == 0
    assert "polls has no plans" in capsys.readouterr().out
    assert main(["billing", "--config", "plugit.toml", "plans", "polls"]) == 0
    assert main(["billing", "plans", "--config", "plugit.toml", "polls"]) == 0


# -- one-line errors and --help --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["proxy", "--port", "eighty"], "--port"),
        (["proxy", "--server", "apache"], "--server"),
        (["users", "add"], "username"),
        (["users", "grant", "alice", "polls", "owner"], "role"),
        (["service", "--workers"], "--workers"),
        (["proxy", "--no-such-option"], "--no-such-option"),
    ],
)
def test_argument_errors_are_one_line_naming_the_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = _lines(captured.err)
    assert len(err) == 1, captured.err
    assert err[0].startswith("plugit") and ": error: " in err[0] and option in err[0]
    assert "--help" in err[0]


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["proxy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 16)", "(default: 1)"):
        assert default in text
    assert "(default: $PLUGIT_CONFIG, else ./plugit.toml)" in text
    assert text.count("(default: granian") == 1  # said once, not twice
    with pytest.raises(SystemExit):
        main(["service", "--help"])
    assert "(default: 5000)" in " ".join(capsys.readouterr().out.split())


# -- plugit config check ---------------------------------------------------------------------------


@action("/", template="home.html")
def home(request: Any) -> dict[str, Any]:
    return {}


@pytest.fixture
def live_service(served: Callable[..., str], tmp_path: Path) -> str:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "home.html").write_text("<p>home</p>")
    return served(PlugItService([home], root=tmp_path, secret=SECRET))


def _services(*entries: tuple[str, str]) -> str:
    return "".join(
        f'[[services]]\nname = "{name}"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        for name, url in entries
    )


def test_config_check_passes_when_every_service_answers(
    tmp_path: Path, live_service: str, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (elsewhere / "plugit.toml").write_text(
        _config_text(tmp_path, _services(("polls", live_service)))
    )
    assert main(["config", "check"]) == 0
    out = _lines(capsys.readouterr().out)
    assert out[0].startswith("ok    plugit.toml: a valid configuration, 1 service(s)")
    assert out[1].startswith(f"ok    service polls ({live_service}")
    assert "protocol EBUio-PlugIt version 1" in out[1]


def test_config_check_fails_naming_the_dead_service(
    tmp_path: Path, config: Path, live_service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config.write_text(_config_text(tmp_path, _services(("polls", live_service), ("wiki", dead))))
    assert main(["config", "check", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert lines[1].startswith("ok    service polls")
    assert lines[2].startswith(f"FAIL  service wiki ({dead}")
    assert "1 of 2 service(s) failed" in captured.err


def test_config_check_refuses_an_invalid_configuration(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(
        _config_text(tmp_path, '[[services]]\nname = "polls"\nurl = "ftp://example.org/"\n')
    )
    assert main(["config", "check", "--config", str(config)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("plugit: error: ") and "polls" in err[0]


# -- served: the access log and --reload -----------------------------------------------------------


class Spawned:
    """A ``plugit`` process, its output (stdout and stderr) going to a file."""

    def __init__(self, argv: tuple[str, ...], cwd: Path | None, log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "plugit_core.cli", *argv],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL after 20 s); what it wrote."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)
        self._out.close()
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """``spawn(*argv, cwd=...)``: ``plugit`` as a real process, stopped at the end."""
    spawned: list[Spawned] = []

    def start(*argv: str, cwd: Path | None = None) -> Spawned:
        spawned.append(Spawned(argv, cwd, tmp_path / f"plugit-{len(spawned)}.log"))
        return spawned[-1]

    yield start
    for one in spawned:
        one.stop()


def _poll(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_the_proxy_writes_an_access_log_by_default(
    tmp_path: Path,
    live_service: str,
    spawn: Callable[..., Spawned],
    server: str,
) -> None:
    config = tmp_path / "plugit.toml"
    config.write_text(_config_text(tmp_path, _services(("polls", live_service))))
    port = free_port()
    process = spawn("proxy", "--port", str(port), "--server", server, cwd=tmp_path)
    wait_for_port("127.0.0.1", port, timeout=60)
    assert requests.get(f"http://127.0.0.1:{port}/polls/", timeout=10).status_code == 200
    assert requests.get(f"http://127.0.0.1:{port}/nowhere", timeout=10).status_code == 404
    # The server writes its access log after the answer went out: wait for the line, then stop.
    _poll(
        lambda: '"GET /nowhere HTTP/1.1" 404 ' in process.log.read_text(errors="replace"),
        "the access log line of GET /nowhere",
        timeout=30,
    )
    # the line of a request answered just before the server stops is written as it stops
    assert requests.get(f"http://127.0.0.1:{port}/last?page=2", timeout=10).status_code == 404
    output = process.stop()
    lines = [line for line in output.splitlines() if '"GET ' in line]
    assert any(
        line.startswith("127.0.0.1 - - [") and '"GET /polls/ HTTP/1.1" 200 ' in line
        for line in lines
    ), output
    assert any('"GET /nowhere HTTP/1.1" 404 ' in line for line in lines), output
    assert any('"GET /last?page=2 HTTP/1.1" 404 ' in line for line in lines), output


def test_no_access_log_when_asked(
    tmp_path: Path, live_service: str, spawn: Callable[..., Spawned]
) -> None:
    config = tmp_path / "plugit.toml"
    config.write_text(_config_text(tmp_path, _services(("polls", live_service))))
    port = free_port()
    process = spawn("proxy", "--port", str(port), "--no-access-log", cwd=tmp_path)
    wait_for_port("127.0.0.1", port, timeout=60)
    assert requests.get(f"http://127.0.0.1:{port}/polls/", timeout=10).status_code == 200
    assert '"GET /polls/' not in process.stop()


def test_reload_follows_the_configuration(
    tmp_path: Path, live_service: str, spawn: Callable[..., Spawned]
) -> None:
    config = tmp_path / "plugit.toml"
    config.write_text(_config_text(tmp_path, _services(("polls", live_service))))
    port = free_port()
    spawn("proxy", "--reload", "--port", str(port), cwd=tmp_path)
    wait_for_port("127.0.0.1", port, timeout=60)
    base = f"http://127.0.0.1:{port}"

    def status(path: str) -> int:
        try:
            return requests.get(base + path, timeout=10).status_code
        except requests.RequestException:  # between a restart's two processes
            return 0

    _poll(lambda: status("/polls/") == 200, "the first page")
    assert status("/wiki/") == 404
    # A second service: served once the file is saved, without restarting by hand.
    config.write_text(
        _config_text(tmp_path, _services(("polls", live_service), ("wiki", live_service)))
    )
    _poll(lambda: status("/wiki/") == 200, "the added service")
    # A broken edit is shown, and the watch goes on.
    config.write_text(config.read_text() + "this is not TOML\n")
    _poll(lambda: status("/polls/") == 500, "the error page")
    page = requests.get(base + "/polls/", timeout=10).text
    assert "invalid TOML" in page and "Fix it and save" in page
    config.write_text(_config_text(tmp_path, _services(("polls", live_service))))
    _poll(lambda: status("/polls/") == 200 and status("/wiki/") == 404, "the fixed file")


def test_reload_follows_the_service_module(tmp_path: Path, spawn: Callable[..., Spawned]) -> None:
    module = tmp_path / "hello.py"
    source = (
        "from plugit_core.service import action\n\n"
        '@action("/")\n'
        "def home(request):\n"
        '    return {"said": "WORD"}\n'
    )
    module.write_text(source.replace("WORD", "first"))
    port = free_port()
    spawn("service", str(module), "--reload", "--port", str(port), "--secret", SECRET)
    wait_for_port("127.0.0.1", port, timeout=60)
    from plugit_core.signing import sign_request

    def said() -> str:
        headers = sign_request(SECRET, method="GET", path="/action/", query="", headers={})
        try:
            reply = requests.get(f"http://127.0.0.1:{port}/action/", headers=headers, timeout=10)
        except requests.RequestException:  # restarting: refused, or a reply cut short
            return ""
        return reply.json().get("said", "") if reply.status_code == 200 else ""

    _poll(lambda: said() == "first", "the first answer")
    module.write_text(source.replace("WORD", "second"))
    os.utime(module, (time.time() + 5, time.time() + 5))
    _poll(lambda: said() == "second", "the edited answer")
