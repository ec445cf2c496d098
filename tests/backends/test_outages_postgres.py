"""The user directory on a PostgreSQL of the test's own, killed, frozen and made to refuse
writes while a real proxy serves logged-in users.

Each test starts a private PostgreSQL cluster (Debian's ``initdb`` and ``pg_ctl``, run as the
``postgres`` user when the tests run as root) on a free port, its socket directory in the test's
temporary folder, then:

* kills its postmaster (SIGKILL, a crash) and starts it again: logged-in pages answer the themed
  503 naming the directory meanwhile, and the first request once the server is back succeeds;
* freezes it (SIGSTOP on the postmaster and its backends: connections stay open, nothing
  answers): logged-in pages answer the 503 within the configured wait, the rest is served;
* makes it refuse writes (``default_transaction_read_only``, what a full disk or a read-only
  replica looks like to a client): pages of logged-in users still work (reads), a login, which
  must write, gets the 503 naming the directory, never a 500 nor a false success.

Skipped when the binaries are missing (``apt-get install postgresql``), unless
``PLUGIT_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.security import generate_password_hash

from plugit_backends.sql import postgres as pg
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import free_port, serve

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"
STRONG_KEY = "k3y-for-postgres-outage-tests-9f8e7d6c5b4a39281706f5e4d3"
WAIT = 1.0  # the directory's pool_timeout in these tests
SLACK = 1.5  # what a loaded machine may add to a wait (scheduling, not the store)
BOUND = 30.0  # every loop below ends within this, or the test fails
PASSWORD = "correct horse battery"
UNAVAILABLE = "The user directory is unavailable right now"


def _binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found and (found[-1].parent / "pg_ctl").exists() else None


def _problem() -> str | None:
    if pg.PG_MISSING is not None:
        return f"psycopg is not installed ({pg.PG_MISSING})"
    if _binaries() is None:
        return "PostgreSQL's binaries are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run PostgreSQL as"
    return None


class Postgres:
    """A private PostgreSQL cluster in ``directory`` on a free port of 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.bin = _binaries()
        assert self.bin is not None
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            account = pwd.getpwnam("postgres")
            os.chown(directory, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None
        return subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections; a server killed a moment
        ago may leave backends behind for a little while: tried again until they are gone."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        deadline = time.monotonic() + BOUND
        while True:
            done = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-D",
                str(self.data),
                "-l",
                str(self.directory / "server.log"),
                "-o",
                options,
                check=False,
            )
            if done.returncode == 0:
                return
            assert time.monotonic() < deadline, (done.stdout, done.stderr, self.log())
            time.sleep(0.1)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        self.resume()
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", check=False)

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def _processes(self) -> list[int]:
        """The postmaster and its children (the backends, the background workers)."""
        pid = self.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster (its backends notice and exit)."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + BOUND
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, "the postmaster outlived SIGKILL"
            time.sleep(0.02)

    def pause(self) -> None:
        self._paused = self._processes()
        for pid in self._paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in getattr(self, "_paused", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def sql(self, *statements: str) -> None:
        """Run statements as the superuser, each on its own (autocommit)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET default_transaction_read_only = off")
            for statement in statements:
                conn.execute(statement)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    problem = _problem()
    if problem is not None:
        if REQUIRED:
            pytest.fail(problem)
        pytest.skip(problem)
    directory = Path(tempfile.mkdtemp(prefix="plugit-pg-"))
    server = None
    try:
        server = Postgres(directory)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def site(postgres: Postgres) -> Iterator[tuple[str, ProxyApp]]:
    config = {
        "secret_key": STRONG_KEY,
        "auth": ["session"],
        "users": "postgres",
        "users_postgres": {"dsn": postgres.dsn, "pool_timeout": WAIT, "max_waiters": 4},
        "session_cookie": {"secure": False},
        "services": [],
    }
    proxy = ProxyApp(config, load_entry_points=False)
    proxy.users.create_user("alice", password_hash=generate_password_hash(PASSWORD))
    try:
        with serve(proxy) as base:
            yield base, proxy
    finally:
        postgres.resume()
        proxy.close()


def _login(base: str, password: str = PASSWORD) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    page = browser.get(base + "/_plugit/login", timeout=10)
    token = re.search(r'name="plugit-csrf-token" content="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    answer = browser.post(
        base + "/_plugit/login",
        data={"username": "alice", "password": password, "plugit_site_csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    return browser, answer


def _logged_in(browser: requests.Session, base: str) -> bool:
    page = browser.get(base + "/", timeout=10)
    return page.status_code == 200 and "alice" in page.text


def _eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + BOUND
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _unavailable(answer: requests.Response) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:300])
    assert UNAVAILABLE in answer.text and "Traceback" not in answer.text


def _retry_due(proxy: ProxyApp) -> bool:
    """The directory's guard would let a trial call through now (read without calling it)."""
    (guard,) = proxy.users.store_guards
    return float(guard.status().get("retry_in", 0.0)) == 0.0


def test_killed_and_restarted_the_first_request_after_it_is_back_succeeds(
    postgres: Postgres, site: tuple[str, ProxyApp]
) -> None:
    base, proxy = site
    browser, answer = _login(base)
    assert answer.status_code == 303 and _logged_in(browser, base)

    postgres.kill()
    _unavailable(browser.get(base + "/", timeout=WAIT + SLACK))
    for _ in range(3):  # at once from now on; the rest of the site is served
        _unavailable(browser.get(base + "/", timeout=WAIT + SLACK))
        assert requests.get(base + "/", timeout=WAIT + SLACK).status_code == 200
        assert requests.get(base + "/_plugit/health", timeout=WAIT + SLACK).status_code == 200
    ready = requests.get(base + "/_plugit/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["unavailable"] == ["users_postgres"]

    postgres.start()  # back (pg_ctl -w: accepting connections)
    _eventually(lambda: _retry_due(proxy), "the guard never allowed a trial call")
    # The pooled connections died with the server: the first request reconnects and succeeds.
    assert _logged_in(browser, base), "the first request after the restart failed"
    assert requests.get(base + "/_plugit/ready", timeout=10).status_code == 200


def test_frozen_logged_in_pages_answer_within_the_wait_and_recover(
    postgres: Postgres, site: tuple[str, ProxyApp]
) -> None:
    base, proxy = site
    browser, answer = _login(base)
    assert answer.status_code == 303 and _logged_in(browser, base)

    postgres.pause()
    try:
        # Within the wait (the request's own timeout fails the test otherwise), then at once.
        _unavailable(browser.get(base + "/", timeout=WAIT + SLACK))
        for _ in range(3):
            _unavailable(browser.get(base + "/", timeout=WAIT + SLACK))
            assert requests.get(base + "/", timeout=WAIT + SLACK).status_code == 200
            assert requests.get(base + "/_plugit/health", timeout=WAIT + SLACK).status_code == 200
        _, refused = _login(base)
        assert refused.status_code == 503 and "set-cookie" not in {
            name.lower() for name in refused.headers
        }
    finally:
        postgres.resume()
    _eventually(lambda: _retry_due(proxy), "the guard never allowed a trial call")
    assert _logged_in(browser, base), "the first request after the resume failed"


def test_refusing_writes_a_login_gets_the_503_while_reads_work(
    postgres: Postgres, site: tuple[str, ProxyApp]
) -> None:
    base, _proxy = site
    browser, answer = _login(base)
    assert answer.status_code == 303 and _logged_in(browser, base)

    postgres.sql("ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()")
    # Every pooled connection reads the new default at its next statement: poll the directory
    # until a write is refused (bounded).
    _, refused = _eventually(
        lambda: (attempt := _login(base))[1].status_code != 303 and attempt,
        "the directory never refused a write",
    )
    _unavailable(refused)
    assert "set-cookie" not in {name.lower() for name in refused.headers}  # no false success
    _, wrong = _login(base, "wrong password")  # its failure must be recorded: a write too
    _unavailable(wrong)
    for _ in range(3):  # reads work: the logged-in user is served, not logged out
        assert _logged_in(browser, base)
    ready = requests.get(base + "/_plugit/ready", timeout=10)
    assert ready.json()["stores"]["users_postgres"]["ready"] is True  # it answers reads

    postgres.sql("ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")
    _eventually(lambda: _login(base)[1].status_code == 303, "logins never worked again")
