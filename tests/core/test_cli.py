"""The plugit command: refusals happen before any server starts."""

from __future__ import annotations

import json

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


# -- `plugit service` options on a module that defines `app` ---------------------------------------

SECRET = "cli-option-secret-0123456789abcdef"

SERVICE_MODULE = """\
import os

from plugit_core.service import PlugItService, action


@action("/", template="home.html")
def home(request):
    return {"hello": "hi"}


# The pattern docs/writing-a-service.md teaches, with settings the command line must beat:
# anyone may call it, no secret, endpoints at the root, meta cached.
app = PlugItService.from_module(
    __name__,
    root=os.path.dirname(os.path.abspath(__file__)),
    allowed_networks=["0.0.0.0/0", "::/0"],
    debug=False,
)


def wsgi(environ, start_response):  # a WSGI app that is no PlugItService
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain"]


def make_plain():  # a factory that takes no settings and makes no PlugItService
    return wsgi


def make_service():  # a factory that takes no settings
    return PlugItService.from_module(__name__, root=os.path.dirname(os.path.abspath(__file__)))
"""


@pytest.fixture
def app_module(tmp_path):
    """A one-file service defining ``app``, with two template and two media folders."""
    for folder, text in (("templates", "module's"), ("other_templates", "command line's")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "home.html").write_text(f"<p>{text} template</p>")
    for folder, text in (("media", "module's"), ("other_media", "command line's")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "site.css").write_text(f"/* {text} media */")
    path = tmp_path / "optpolls.py"
    path.write_text(SERVICE_MODULE)
    return path


def _start_service(module, *options, env=None, cwd=None):
    import os
    import subprocess
    import sys

    from plugit_core.testing import wait_for_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "plugit_core.cli", "service", str(module), "--port", str(port),
         *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
    except TimeoutError:
        process.kill()
        process.wait(20)
        raise
    return process, port


def _stop(process):
    process.terminate()
    process.wait(20)


def _get(port, path, secret=None, source="127.0.0.1"):
    """GET ``path`` over a real connection from ``source``, signed when ``secret`` is given."""
    import http.client

    from plugit_core.signing import sign_request

    headers = {"Connection": "close"}
    if secret:
        route, _, query = path.partition("?")
        headers.update(sign_request(secret, method="GET", path=route, query=query, headers=headers))
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()  # names case-insensitive
    finally:
        connection.close()


def test_service_options_apply_to_a_module_app(app_module):
    """Each option given on the command line beats the module's own ``app`` settings."""
    process, port = _start_service(
        app_module,
        "--secret", SECRET,
        "--base-url", "/svc/",
        "--debug",
        "--templates", "other_templates",
        "--media", "other_media",
        cwd=app_module.parent,
    )  # fmt: skip
    try:
        # --secret: a request that is not signed, claiming to be a user, is refused
        status, _, body = _get(port, "/svc/action/?ebuio_u_pk=1&ebuio_u_username=admin")
        assert status == 403 and b'"error":"signature"' in body
        assert _get(port, "/svc/version")[0] == 403
        status, _, body = _get(port, "/svc/version", SECRET)
        assert status == 200 and b'"result":"Ok"' in body
        # --base-url: the endpoints moved below /svc/
        assert _get(port, "/version", SECRET)[0] == 404
        assert _get(port, "/svc/ping?data=x", SECRET)[0] == 200
        # --debug: the proxy may not cache the meta
        status, headers, _ = _get(port, "/svc/meta/", SECRET)
        assert status == 200 and headers["Cache-Control"] == "public, max-age=0"
        # --templates and --media: the command line's folders (relative to the current one)
        status, _, body = _get(port, "/svc/template/", SECRET)
        assert status == 200 and body == b"<p>command line's template</p>"
        status, _, body = _get(port, "/svc/media/site.css", SECRET)
        assert status == 200 and body == b"/* command line's media */"
    finally:
        _stop(process)


def test_service_allowed_networks_and_environment_secret_apply_to_a_module_app(app_module):
    """--allowed-networks replaces the module's allow-everyone list (the loopback peer is
    refused, 127.0.0.2 let in), and PLUGIT_SERVICE_SECRET is required of those let in."""
    process, port = _start_service(
        app_module,
        "--allowed-networks", "127.0.0.2/32",
        env={"PLUGIT_SERVICE_SECRET": SECRET},
    )  # fmt: skip
    try:
        assert _get(port, "/version", SECRET)[0] == 404
        assert _get(port, "/ping", SECRET)[0] == 404
        assert _get(port, "/version", source="127.0.0.2")[0] == 403
        status, _, body = _get(port, "/version", SECRET, source="127.0.0.2")
        assert status == 200 and b'"result":"Ok"' in body
    finally:
        _stop(process)


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        pytest.param(
            ["--secret", "short"], {},
            "plugit: error: --secret: secret must be at least 16 characters long",
            id="short-secret",
        ),
        pytest.param(
            ["--secret", ""], {},
            "plugit: error: --secret: secret must be at least 16 characters long",
            id="empty-secret",
        ),
        pytest.param(
            [], {"PLUGIT_SERVICE_SECRET": "short"},
            "plugit: error: PLUGIT_SERVICE_SECRET: secret must be at least 16 characters long",
            id="short-environment-secret",
        ),
        pytest.param(
            ["--base-url", "svc"], {},
            "plugit: error: --base-url: base_url must start and end with '/': 'svc'",
            id="base-url",
        ),
        pytest.param(
            ["--allowed-networks", "10.0.0.0/8,not-a-network"], {},
            "plugit: error: --allowed-networks: ",
            id="allowed-networks",
        ),
    ],
)  # fmt: skip
def test_service_bad_option_is_one_line(app_module, monkeypatch, capsys, options, env, message):
    monkeypatch.delenv("PLUGIT_SERVICE_SECRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["service", str(app_module), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("attribute", "options", "named"),
    [
        pytest.param("wsgi", ["--secret", SECRET], "--secret", id="wsgi-app-secret"),
        pytest.param(
            "wsgi", ["--debug", "--base-url", "/x/"], "--base-url, --debug", id="wsgi-app-two"
        ),
        pytest.param("make_plain", ["--allowed-networks", "10.0.0.0/8"], "--allowed-networks",
                     id="factory-of-a-wsgi-app"),
    ],
)  # fmt: skip
def test_service_option_that_cannot_apply_is_an_error(
    app_module, monkeypatch, capsys, attribute, options, named
):
    monkeypatch.delenv("PLUGIT_SERVICE_SECRET", raising=False)
    assert main(["service", f"{app_module}:{attribute}", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"plugit: error: {named} cannot be applied to ")
    assert "not a PlugItService" in err
    assert len(err.strip().splitlines()) == 1


def test_load_service_applies_options_to_every_kind_of_module(app_module, served):
    """``app``, ``module:app``, a factory that takes no settings: the options win each time;
    a WSGI app given without options is served as it is."""
    from plugit_core.cli import load_service

    for target in (str(app_module), f"{app_module}:app", f"{app_module}:make_service"):
        service = load_service(target, secret=SECRET, base_url="/p/", allowed_networks="::1/128")
        assert service.config.secret == SECRET
        assert service.config.base_url == "/p/"
        assert service.config.allowed_networks == ("::1/128",)
        url = served(service)
        assert _get(int(url.rsplit(":", 1)[1]), "/p/version", SECRET)[0] == 404  # not ::1
    module_app = load_service(str(app_module))
    assert module_app.config.secret is None  # the module's own, untouched without options
    plain = load_service(f"{app_module}:wsgi")
    url = served(plain)
    assert _get(int(url.rsplit(":", 1)[1]), "/")[2] == b"plain"


# -- a service written for the original: actions.py beside its config.py ---------------------------

ORIGINAL_ACTIONS = """
import config
from plugit_core.service import action


@action("/", template="home.html")
def home(request):
    return {"greeting": config.GREETING}
"""

ORIGINAL_CONFIG = """
DEBUG = True
PI_BASE_URL = "/base/"
PI_API_NAME = "plugit-sample"
PI_ALLOWED_NETWORKS = ["127.0.0.1/32"]
API_URL = "http://127.0.0.1:8000/ebuio_api/"
GREETING = "hello from config.py"
"""


@pytest.fixture
def original_service(tmp_path):
    """A service laid out as the original's were: actions.py, config.py, templates/."""
    import sys

    folder = tmp_path / "voting"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "home.html").write_text("{{ greeting }}")
    (folder / "actions.py").write_text(ORIGINAL_ACTIONS)
    (folder / "config.py").write_text(ORIGINAL_CONFIG)
    before = set(sys.modules)
    saved = {name: sys.modules.pop(name) for name in ("config", "actions") if name in sys.modules}
    yield folder
    for name in set(sys.modules) - before:
        if name in ("config", "actions") or name.startswith("_plugit_service_config_"):
            del sys.modules[name]
    sys.modules.update(saved)


def test_service_command_reads_the_config_module(original_service):
    """`plugit service actions.py` serves with the PI_* settings of config.py, as the original
    library read them; the action's own `import config` gets the same module."""
    process, port = _start_service(original_service / "actions.py")
    try:
        status, headers, body = _get(port, "/base/version")
        assert status == 200
        assert json.loads(body)["protocol"] == "plugit-sample"
        status, headers, body = _get(port, "/base/meta/")
        assert status == 200
        assert headers["Cache-Control"] == "public, max-age=0"  # DEBUG = True
        assert _get(port, "/base/action/")[2] == b'{"greeting":"hello from config.py"}'
        assert _get(port, "/version")[0] == 404  # not below PI_BASE_URL
    finally:
        _stop(process)


def test_config_module_settings_give_way(original_service):
    """The module's own settings win over config.py, the command line over both."""
    from plugit_core.cli import load_service

    service = load_service(str(original_service / "actions.py"))
    assert service.config.base_url == "/base/"
    assert service.config.api_url == "http://127.0.0.1:8000/ebuio_api/"
    assert service.config.allowed_networks == ("127.0.0.1/32",)
    assert service.config.debug is True
    service = load_service(str(original_service / "actions.py"), base_url="/cli/", debug=None)
    assert service.config.base_url == "/cli/"
    assert service.config.api_name == "plugit-sample"
    (original_service / "actions.py").write_text(ORIGINAL_ACTIONS + 'PI_API_NAME = "own"\n')
    assert load_service(str(original_service / "actions.py")).config.api_name == "own"


def test_config_module_is_found_beside_the_file_only(original_service, tmp_path):
    """A `config` module imported from elsewhere is not the service's: its config.py is read
    under another name; a service without config.py keeps the defaults."""
    import sys
    import types

    from plugit_core.cli import load_service

    sys.modules["config"] = types.SimpleNamespace(__file__=str(tmp_path / "config.py"))
    service = load_service(str(original_service / "actions.py"))
    assert service.config.base_url == "/base/"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "solo.py").write_text(ORIGINAL_ACTIONS.replace("config.GREETING", '"x"'))
    del sys.modules["config"]
    service = load_service(str(lone / "solo.py"))
    assert (service.config.base_url, service.config.api_name) == ("/", "EBUio-PlugIt")


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        pytest.param(
            'PI_BASE_URL = "base"\n',
            "base_url must start and end with '/': 'base' (settings read from ",
            id="bad-value",
        ),
        pytest.param(
            'PI_ALLOWED_NETWORKS = ["10.0.0.0/33"]\n', "allowed_networks", id="bad-network"
        ),
        pytest.param(
            "import no_such_module_for_config\n",
            "cannot import the settings in ",
            id="import-error",
        ),
        pytest.param("PI_BASE_URL = \n", "SyntaxError", id="syntax-error"),
    ],
)
def test_bad_config_module_is_one_line(original_service, capsys, config_text, message):
    (original_service / "actions.py").write_text(ORIGINAL_ACTIONS.replace("import config", ""))
    (original_service / "config.py").write_text(config_text)
    assert main(["service", str(original_service / "actions.py")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plugit: error: the settings of ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
