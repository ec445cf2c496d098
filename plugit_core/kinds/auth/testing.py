"""The shared conformance suite of the ``auth`` kind: what every auth backend does, whether it
checks passwords itself (:class:`~plugit_core.kinds.auth.PasswordBackend`: local accounts,
LDAP) or sends the browser to a provider (:class:`~plugit_core.kinds.auth.RedirectBackend`:
OpenID Connect).

Subclass :class:`AuthBackendConformance` in a test module, set :attr:`~AuthBackendConformance.name`
and :attr:`~AuthBackendConformance.source`, and give it its fixtures, against the backend's real
server::

    class TestMyAuth(AuthBackendConformance):
        name = "mine"  # what it registers under
        source = "mine"  # extra["source"] of the users it logs in (before any ":")

        @pytest.fixture
        def auth_backend(self, server):
            return build_it(server)

        @pytest.fixture
        def directory(self, tmp_path):  # the UserStore logins go to
            ...

        @pytest.fixture
        def account(self):  # an active account the server knows
            return "alice", "alice-password"

        @pytest.fixture
        def log_in(self, auth_backend, directory):
            # log_in(username, password) -> PlugItUser: one whole login through the backend,
            # raising AuthError when it is refused.  A password backend: authenticate(); a
            # redirect backend: the browser's round trip through the provider, then the user
            # the session holds.
            request = make_login_request(directory)
            return lambda username, password: auth_backend.authenticate(
                username, password, request
            )

The password checks run for password backends only (a provider checks its own passwords);
``log_in_while_down`` (a login with the server out of reach) is optional.  This module needs
pytest (the ``test`` extra).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import pytest

from ...users import PlugItUser
from . import AuthError

__all__ = ["CODES", "AuthBackendConformance", "LogIn"]

#: The codes of :class:`~plugit_core.kinds.auth.AuthError`.
CODES = frozenset({"bad_credentials", "disabled", "throttled", "unavailable", "refused", "invalid"})

#: ``log_in(username, password)``: the user a whole login gives, or :class:`AuthError`.
LogIn = Callable[[str, str], PlugItUser]

# User names no account has, each a classic way to break a lookup (filter and SQL
# metacharacters, an empty or very long name): refused like a wrong password, never an error.
ODD_NAMES = ("*", "", " ", "a" * 300, "x)(uid=*", "x' OR '1'='1", "\\", "%", "_")


def _refusal(log_in: LogIn, username: str, password: str) -> AuthError:
    with pytest.raises(AuthError) as refused:
        log_in(username, password)
    assert refused.value.code in CODES, refused.value.code
    assert refused.value.message, "an AuthError says why, in words the login page shows"
    return refused.value


class AuthBackendConformance:
    """The contract of every auth backend as pytest tests (see the module's docstring)."""

    #: The name the backend registers under (``auth = ["<name>"]``).
    name: str = ""
    #: ``extra["source"]`` of the users it logs in (``"local"`` for the directory's own), or
    #: what comes before its ``:`` (an external directory adds which one: ``"ldap:host"``).
    source: str = ""
    #: Logins at once in :meth:`test_logins_from_many_threads`.
    threads: int = 4

    @pytest.fixture
    def log_in_while_down(self) -> LogIn | None:
        """A login with the backend's server out of reach; None (the default): not checked."""
        return None

    @staticmethod
    def _is_password_backend(auth_backend: Any) -> bool:
        return callable(getattr(auth_backend, "authenticate", None))

    # -- what it is -------------------------------------------------------------------------------

    def test_it_names_itself(self, auth_backend: Any) -> None:
        assert auth_backend.name == self.name
        assert isinstance(auth_backend.label, str) and auth_backend.label.strip()

    def test_it_is_a_password_or_a_redirect_backend(self, auth_backend: Any) -> None:
        if self._is_password_backend(auth_backend):
            return
        for method in ("start_url", "routes", "logout_redirect"):
            assert callable(getattr(auth_backend, method, None)), method
        start = auth_backend.start_url()
        assert isinstance(start, str) and start.startswith("/"), start

    # -- a login ----------------------------------------------------------------------------------

    def test_a_login_gives_an_authenticated_user_of_the_directory(
        self, log_in: LogIn, account: tuple[str, str], directory: Any
    ) -> None:
        username, password = account
        user = log_in(username, password)
        assert isinstance(user, PlugItUser)
        assert user.is_authenticated and user.pk is not None
        assert user.username.lower() == username.lower()
        stored = directory.get_user(user.pk)
        assert stored is not None and stored.username == user.username

    def test_the_user_says_who_vouches_for_it(
        self, log_in: LogIn, account: tuple[str, str], directory: Any
    ) -> None:
        user = log_in(*account)
        source = user.extra.get("source")
        assert isinstance(source, str) and source.split(":", 1)[0] == self.source, source
        uuid = user.extra.get("uuid")
        assert isinstance(uuid, str) and uuid
        by_uuid = directory.get_user(uuid)
        assert by_uuid is not None and by_uuid.pk == user.pk

    def test_every_login_is_the_same_user(self, log_in: LogIn, account: tuple[str, str]) -> None:
        first = log_in(*account)
        second = log_in(*account)
        assert second.pk == first.pk and second.username == first.username

    def test_logins_from_many_threads(self, log_in: LogIn, account: tuple[str, str]) -> None:
        """One backend serves many request threads at once."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.threads) as pool:
            users = list(pool.map(lambda _: log_in(*account), range(self.threads)))
        assert len({user.pk for user in users}) == 1

    def test_a_server_out_of_reach_is_unavailable(
        self, log_in_while_down: LogIn | None, account: tuple[str, str]
    ) -> None:
        if log_in_while_down is None:
            pytest.skip("no login with the server out of reach given")
        assert _refusal(log_in_while_down, *account).code == "unavailable"

    # -- passwords (password backends) ------------------------------------------------------------

    def _needs_passwords(self, auth_backend: Any) -> None:
        if not self._is_password_backend(auth_backend):
            pytest.skip("a redirect backend: the provider checks the passwords")

    def test_a_wrong_password_is_bad_credentials(
        self, auth_backend: Any, log_in: LogIn, account: tuple[str, str]
    ) -> None:
        self._needs_passwords(auth_backend)
        username, password = account
        assert _refusal(log_in, username, password + "-wrong").code == "bad_credentials"

    def test_an_unknown_user_reads_exactly_like_a_wrong_password(
        self, auth_backend: Any, log_in: LogIn, account: tuple[str, str]
    ) -> None:
        """Nothing tells a visitor which user names exist."""
        self._needs_passwords(auth_backend)
        username, password = account
        wrong = _refusal(log_in, username, password + "-wrong")
        unknown = _refusal(log_in, "no-such-user-at-all", password)
        assert (unknown.code, unknown.message) == (wrong.code, wrong.message)

    def test_an_empty_password_is_refused(
        self, auth_backend: Any, log_in: LogIn, account: tuple[str, str]
    ) -> None:
        self._needs_passwords(auth_backend)
        assert _refusal(log_in, account[0], "").code == "bad_credentials"

    @pytest.mark.parametrize("username", ODD_NAMES)
    def test_odd_user_names_are_refused_never_an_error(
        self, auth_backend: Any, log_in: LogIn, account: tuple[str, str], username: str
    ) -> None:
        """With the account's own password: a lookup that matched by accident would log in."""
        self._needs_passwords(auth_backend)
        assert _refusal(log_in, username, account[1]).code == "bad_credentials"
