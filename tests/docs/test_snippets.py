"""Every fenced block of README.md and docs/*.md is run or checked, or marked as an illustration.

The convention is in ``tests/docs/docs_snippets.py`` and docs/index.md. Each page's blocks run in
order in a folder of their own, so a block may use the files and names earlier blocks made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from docs_snippets import PAGES, ROOT, SHELL, Block, blocks_of, shell_commands

BIN = Path(sys.executable).parent
POSTGRES_DSN = os.environ.get(
    "PLUGIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PLUGIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Where documented configs keep files; the tests move them into the page's folder.
SYSTEM_DIRS = ("/var/", "/etc/", "/srv/", "/opt/", "/run/", "/home/")
#: What a minimal site is made of, under a TOML fragment of the docs.
BASE = {
    "secret_key": secrets.token_urlsafe(32),
    "services": [{"name": "polls", "url": "http://127.0.0.1:9", "mount": "/polls/"}],
}


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _env_names(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            yield value["env"]
        for item in value.values():
            yield from _env_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _env_names(item)


def _test_value(name: str) -> str:
    """A value for the environment variable ``name`` a documented config reads."""
    upper = name.upper()
    if "REDIS" in upper:
        return REDIS_URL
    if "DATABASE" in upper or "DSN" in upper or "POSTGRES" in upper:
        return POSTGRES_DSN
    return secrets.token_urlsafe(32)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class Page:
    """One page's run: its folder, its Python namespace, and what must be undone."""

    def __init__(self, page: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from plugit_core.testing import free_port

        self.page = page
        self.blocks = blocks_of(page)
        #: The ports the page's servers listen on, and the free ones the test uses instead.
        self.ports = {
            int(port): free_port()
            for block in self.blocks
            if "serve" in block.markers
            for port in re.findall(r"--port (\d+)", block.text)
        }
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.servers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.folder = folder
        self.monkeypatch = monkeypatch
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        self.schemas: list[str] = []
        self.apps: list[Any] = []

    # -- files ----------------------------------------------------------------------------------
    def path_of(self, name: str) -> Path:
        path = (self.folder / name.lstrip("/")).resolve()
        assert path.is_relative_to(self.folder), name
        return path

    def port(self, documented: int) -> int:
        return self.ports.get(documented, documented)

    def local(self, text: str) -> str:
        """``text`` with the page's documented server ports swapped for the test's."""
        for documented, port in self.ports.items():
            text = re.sub(
                rf"(127\.0\.0\.1:|localhost:|--port ){documented}\b", rf"\g<1>{port}", text
            )
        return text

    def write(self, block: Block) -> Path:
        assert block.file is not None
        path = self.path_of(block.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.local(block.text), encoding="utf-8")
        return path

    # -- kinds ----------------------------------------------------------------------------------
    def run(self, block: Block) -> None:
        if block.prelude:
            exec(compile(block.prelude, f"{block.where} (prelude)", "exec"), self.namespace)
        if block.illustration:
            if block.lang == "python":  # shown only, but it must still be Python
                compile(block.text, block.where, "exec")
            return
        if block.file:
            self.write(block)
        if block.lang == "python":
            self.python(block)
        elif block.lang == "toml":
            self.toml(block)
        elif block.lang == "json":
            json.loads(block.text)
        elif block.lang in SHELL and "run" in block.markers:
            self.shell(block)
        elif block.lang in SHELL and "serve" in block.markers:
            self.serve(block)

    def python(self, block: Block) -> None:
        code = compile(block.text, block.where, "exec")
        if block.file is None:
            exec(code, self.namespace)
        elif "run" in block.markers:
            module = Path(block.file).stem
            exec(f"import {module}", self.namespace)

    def toml(self, block: Block) -> None:
        from plugit_core.config import ProxyConfig
        from plugit_core.proxy import ProxyApp

        data = tomllib.loads(self.local(block.text))
        if "parse-only" in block.markers:  # not a proxy configuration (a pyproject.toml)
            return
        for name in set(_env_names(data)):
            if name not in os.environ:
                self.monkeypatch.setenv(name, _test_value(name))
        if "secret_key" not in data and not data.get("dev_mode"):
            data = {"secret_key": BASE["secret_key"], **data}
        if "services" not in data:
            data = {**data, "services": BASE["services"]}
        # Resolve relative paths (SQLite files, templates) inside the page's folder.
        source = str(self.path_of(block.file)) if block.file else f"{block.where}"
        config = ProxyConfig.from_mapping(data, source=source)
        if "config-only" in block.markers:
            return
        data = self.own_storage(self.rehome(data))
        config = ProxyConfig.from_mapping(data, source=source)
        app = ProxyApp(config, check_services=False)
        self.apps.append(app)

    def rehome(self, value: Any) -> Any:
        """``value`` with the system paths a documented config names (``/var/lib/plugit/...``)
        moved into the page's folder; a certificate file named there is the system's CA bundle."""
        if isinstance(value, dict):
            return {key: self.rehome(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.rehome(item) for item in value]
        if isinstance(value, str) and value.startswith(SYSTEM_DIRS):
            path = self.path_of(value)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in (".pem", ".crt") and not path.exists():
                import certifi

                shutil.copyfile(certifi.where(), path)
            return str(path)
        return value

    def own_storage(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with a PostgreSQL schema of this run for each PostgreSQL store it names, and
        SQLite files in the page's folder; skips when a shared server is not running."""
        data = json.loads(json.dumps(data))
        names = {data.get("cache"), data.get("session")}
        if "redis" in names and not _port_open(6379):
            _missing("Redis on 127.0.0.1:6379")
        for role in ("users", "billing"):
            if data.get(role) == "postgres":
                if not _port_open(5432):
                    _missing("PostgreSQL on 127.0.0.1:5432")
                schema = f"plugit_docs_{secrets.token_hex(4)}"
                self.schemas.append(schema)
                data.setdefault(f"{role}_postgres", {})["schema"] = schema
        return data

    def shell(self, block: Block) -> None:
        for command in shell_commands(block):
            self.command(block, self.local(command))

    def command(self, block: Block, command: str) -> str:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block.where}: `{command}` ended with {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def serve(self, block: Block) -> None:
        from plugit_core.testing import wait_for_port

        for command in map(self.local, shell_commands(block)):
            words = shlex.split(command.rstrip("& "))
            export = re.fullmatch(r"export (\w+)=(.*)", command)
            if export:
                name = export.group(1)
                self.env[name] = self.command(block, f'{command}; printf %s "${name}"')
            elif (
                words[:2] in (["plugit", "service"], ["plugit", "proxy"]) and "--check" not in words
            ):
                log = self.folder / f"server-{len(self.servers)}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(  # a server: stopped when the page ends
                        ["bash", "-c", f"exec {command.rstrip('& ')}"],
                        cwd=self.folder,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                self.servers.append((process, log))
                port = int(words[words.index("--port") + 1]) if "--port" in words else 8000
                try:
                    wait_for_port("127.0.0.1", port, timeout=60)
                except TimeoutError:
                    process.kill()
                    process.wait()
                    pytest.fail(f"{block.where}: `{command}` did not listen:\n{log.read_text()}")
            else:
                self.command(block, command)

    def close(self) -> None:
        for process, _log in self.servers:
            process.terminate()
        for process, _log in self.servers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for app in self.apps:
            app.close()
        from plugit_core.proxy import PlugItMiddleware, ProxyApp

        for value in self.namespace.values():
            for app in (value, getattr(value, "wsgi_app", None)):  # a Flask app's middleware
                if isinstance(app, PlugItMiddleware):
                    app = app.proxy
                if isinstance(app, ProxyApp):
                    app.close()
        if self.schemas:
            import psycopg

            with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _missing(what: str) -> None:
    if os.environ.get("PLUGIT_REQUIRE_SERVERS"):
        pytest.fail(f"{what} is not running")
    pytest.skip(f"{what} is not running")


@contextlib.contextmanager
def run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    """Run every block of ``page`` in order; yield while its servers still run."""
    folder = (tmp_path / "page").resolve()
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    run = Page(page, folder, monkeypatch)
    try:
        for block in run.blocks:
            try:
                run.run(block)
            except (pytest.skip.Exception, pytest.fail.Exception):
                raise
            except BaseException as exc:
                message = f"{block.where}: the {block.lang} block fails: {exc!r}"
                raise AssertionError(message) from exc
        yield run
    finally:
        run.close()
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
                del sys.modules[name]


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "README.md"], ids=_page_id)
def test_page_snippets_work(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with run_page(page, tmp_path, monkeypatch):
        pass


def test_readme_quick_start_serves_the_poll_and_takes_a_vote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: requests.Session
) -> None:
    """The README's blocks as a newcomer pastes them: its two files and config written, its
    secrets made, the service and the proxy started as it says; then the page it names works."""
    with run_page(ROOT / "README.md", tmp_path, monkeypatch) as readme:
        assert len(readme.servers) == 2, "the quick start starts a service and a proxy"
        page = http.get(f"http://127.0.0.1:{readme.port(8000)}/polls/", timeout=30)
        assert page.status_code == 200, page.text
        assert "Lunch?" in page.text
        assert "Yes (0)" in page.text
        form = re.search(r'<form method="post" action="([^"]+)">', page.text)
        token = re.search(r'name="(csrf\w*)" value="([^"]+)"', page.text)
        assert form and token, page.text
        voted = http.post(
            f"http://127.0.0.1:{readme.port(8000)}{form.group(1)}",
            data={token.group(1): token.group(2), "answer": "yes"},
            timeout=30,
        )
        assert voted.status_code == 200, voted.text
        assert voted.url.endswith("/polls/")
        assert "Yes (1)" in voted.text
        # Without the mount's CSRF token the vote is refused.
        forged = http.post(
            f"http://127.0.0.1:{readme.port(8000)}{form.group(1)}", data={"answer": "no"}
        )
        assert forged.status_code == 403
        assert "No (0)" in http.get(f"http://127.0.0.1:{readme.port(8000)}/polls/").text


def test_every_block_is_tested_or_marked() -> None:
    untested = [
        f"{block.where}: {why}"
        for page in PAGES
        for block in blocks_of(page)
        if (why := block.why_not_tested())
    ]
    assert not untested, "blocks neither run nor marked <!-- test: illustration -->:\n" + "\n".join(
        untested
    )
