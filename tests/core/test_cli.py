"""The plugit command: refusals happen before any server starts."""

from __future__ import annotations

import pytest

from plugit_core.cli import main
from plugit_core.testing import free_port


@pytest.fixture
def dev_config(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text('dev_mode = true\n[[services]]\nname = "x"\nurl = "http://127.0.0.1:9"\n')
    return path


@pytest.mark.parametrize(
    "host", [pytest.param("0.0.0.0", id="any-v4"), pytest.param("::", id="any-v6")]
)
def test_dev_mode_refuses_a_public_address(dev_config, host, capsys):
    assert main(["proxy", "--config", str(dev_config), "--host", host]) == 2
    err = capsys.readouterr().err
    assert "dev mode" in err and "refusing to listen" in err and "--force" in err


def test_invalid_config_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('secret_key = "x"\n')
    assert main(["proxy", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plugit: error: secret_key: is too weak")
    assert "Traceback" not in err


def test_service_needs_a_module_or_check(capsys):
    assert main(["service"]) == 2
    assert "give a MODULE" in capsys.readouterr().err


def test_service_module_that_does_not_import(capsys):
    assert main(["service", "no_such_module_anywhere"]) == 2
    assert "cannot import no_such_module_anywhere" in capsys.readouterr().err


@pytest.fixture
def service_process(tmp_path):
    """`plugit service` serving a one-file service, as a real process."""
    import subprocess
    import sys

    from plugit_core.testing import wait_for_port

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "home.html").write_text(
        '{% extends "plugit/base.html" %}'
        '{% block content %}<p id="hello">{{ hello }}</p>{% endblock %}'
    )
    (tmp_path / "hello.py").write_text(
        "from plugit_core.service import action\n\n"
        '@action("/", template="home.html")\n'
        "def home(request):\n"
        '    return {"hello": "Hello from a file"}\n'
    )
    port = free_port()
    secret = "cli-test-secret-0123456789abcdef"
    process = subprocess.Popen(
        [sys.executable, "-m", "plugit_core.cli", "service", str(tmp_path / "hello.py"),
         "--port", str(port), "--secret", secret],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}", secret
    finally:
        process.terminate()
        process.wait(20)


def test_service_check_passes_on_a_served_module(service_process, capsys):
    url, secret = service_process
    assert main(["service", "--check", url, "--secret", secret]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.strip().splitlines()[-1].endswith("0 failed")


def test_service_check_reports_failures(service_process, capsys):
    url, _ = service_process
    assert main(["service", "--check", url, "--secret", "not-the-right-secret-0123456789"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_proxy_command_serves_the_service(service_process, tmp_path):
    import subprocess
    import sys

    import requests

    from plugit_core.testing import wait_for_port

    url, secret = service_process
    config = tmp_path / "plugit.toml"
    config.write_text(
        'secret_key = "cli-proxy-key-0123456789-abcdefghijklmnopqrstuvwxyz"\n'
        "[session_cookie]\nsecure = false\n"
        f'[[services]]\nname = "hello"\nurl = "{url}"\nsecret = "{secret}"\n'
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plugit_core.cli",
            "proxy",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        page = requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10)
        assert page.status_code == 200
        assert '<p id="hello">Hello from a file</p>' in page.text
        assert 'id="plugit-content"' in page.text
    finally:
        process.terminate()
        process.wait(20)
