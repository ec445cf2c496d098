"""The shared conformance suite of the ``users`` kind (the directory): every
:class:`~plugit_core.kinds.users.UserStore` passes :class:`UserStoreConformance`.
"""

from __future__ import annotations

import time
from typing import Any

from ...testing.helpers import FakeClock

__all__ = ["UserStoreConformance"]


class UserStoreConformance:
    """The contract of :class:`plugit_core.kinds.users.UserStore` as pytest tests.

    Subclass it in a test module and provide a fresh, empty store per test::

        class TestMyStore(UserStoreConformance):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyStore(...)
                yield store
                store.close()

    A store whose failed-login records read an attribute ``clock`` (a callable giving the time)
    gets a :class:`FakeClock` there, and the window tests step it forward; for any other store
    they wait about a second of real time.  pytest is only imported when the tests run.
    """

    threads: int = 8

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _raises(exc: type[BaseException]) -> Any:
        import pytest

        return pytest.raises(exc)

    @staticmethod
    def _fake_clock(store: Any) -> FakeClock | None:
        if not callable(getattr(store, "clock", None)):
            return None
        clock = FakeClock()
        store.clock = clock
        return clock

    @staticmethod
    def _roles(user: Any) -> dict[str, str]:
        return {
            service: "admin" if service in user.admin_of else "member"
            for service in user.member_of | user.admin_of
        }

    @staticmethod
    def _orgas(user: Any) -> dict[str, bool]:
        return {orga.name: orga.is_admin for orga in user.orgas}

    # -- users ------------------------------------------------------------------------------------

    def test_is_a_user_store(self, store: Any) -> None:
        from . import UserStore

        assert isinstance(store, UserStore)

    def test_create_and_get_user(self, store: Any) -> None:
        user = store.create_user(
            "alice",
            email="alice@example.org",
            first_name="Alice",
            last_name="Liddell",
            password_hash="pbkdf2:sha256:1000$salt$hash",  # noqa: S106
        )
        assert user.pk is not None and user.is_authenticated and not user.is_superuser
        assert (user.username, user.email) == ("alice", "alice@example.org")
        assert (user.first_name, user.last_name) == ("Alice", "Liddell")
        assert user.extra["source"] == "local" and isinstance(user.extra["uuid"], str)
        assert not user.member_of and not user.admin_of and user.orgas == ()
        for key in (user.pk, str(user.pk), user.extra["uuid"]):
            found = store.get_user(key)
            assert found is not None and found.username == "alice" and found.pk == user.pk
        for missing in (None, 987654, "987654", "no-such-uuid", ""):
            assert store.get_user(missing) is None
        boss = store.create_user("boss", is_superuser=True)
        assert boss.is_superuser and boss.is_member("any") and boss.is_admin("any")
        assert store.get_user(boss.pk).is_superuser

    def test_user_names_are_unique_and_case_insensitive(self, store: Any) -> None:
        alice = store.create_user("Alice")
        for taken in ("Alice", "alice", "ALICE"):
            with self._raises(ValueError):
                store.create_user(taken)
        with self._raises(ValueError):
            store.create_user("   ")
        assert store.get_by_username("aLiCe").pk == alice.pk
        assert store.get_by_username("alice").username == "Alice"
        assert store.get_by_username("bob") is None
        assert [u.username for u in store.list_users()] == ["Alice"]

    def test_list_users(self, store: Any) -> None:
        assert store.list_users() == []
        for name in ("carol", "alice", "bob"):
            store.create_user(name)
        store.set_active(store.get_by_username("bob").pk, False)
        assert [u.username for u in store.list_users()] == ["alice", "bob", "carol"]

    def test_password_hash(self, store: Any) -> None:
        alice = store.create_user("alice", password_hash="hash-one")  # noqa: S106
        bob = store.create_user("bob")
        assert store.password_hash(alice.pk) == "hash-one"
        assert store.password_hash(bob.pk) is None
        store.set_password_hash(alice.pk, "hash-two")
        store.set_password_hash(bob.pk, "hash-three")
        assert store.password_hash(alice.pk) == "hash-two"
        assert store.password_hash(bob.pk) == "hash-three"
        assert store.password_hash(987654) is None
        with self._raises(KeyError):
            store.set_password_hash(987654, "hash")

    def test_active(self, store: Any) -> None:
        alice = store.create_user("alice")
        assert store.is_active(alice.pk) is True
        store.set_active(alice.pk, False)
        assert store.is_active(alice.pk) is False
        assert store.get_user(alice.pk) is not None  # disabled, not deleted
        store.set_active(alice.pk, True)
        assert store.is_active(alice.pk) is True
        assert store.is_active(987654) is False
        with self._raises(KeyError):
            store.set_active(987654, False)

    def test_session_generation(self, store: Any) -> None:
        alice = store.create_user("alice")
        bob = store.create_user("bob")
        assert store.session_generation(alice.pk) == 0
        store.end_sessions(alice.pk)
        store.end_sessions(alice.extra["uuid"])  # by UUID too
        assert store.session_generation(alice.pk) == 2
        assert store.session_generation(str(alice.pk)) == 2
        assert store.session_generation(alice.extra["uuid"]) == 2
        assert store.session_generation(bob.pk) == 0  # one user's logout only
        for unknown in (987654, "no-such-uuid", None, "", "1\x00", 10**30, True):
            assert store.session_generation(unknown) == 0
        with self._raises(KeyError):
            store.end_sessions(987654)
        store.set_active(alice.pk, False)  # other changes keep it
        store.set_password_hash(alice.pk, "hash")
        assert store.session_generation(alice.pk) == 2

    def test_threads_ending_sessions(self, store: Any) -> None:
        """Concurrent logouts are all counted (the generation only grows)."""
        alice = store.create_user("alice")
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda _: store.end_sessions(alice.pk), range(4 * self.threads)))
        assert store.session_generation(alice.pk) == 4 * self.threads

    # -- services ---------------------------------------------------------------------------------

    def test_grant_and_revoke(self, store: Any) -> None:
        alice = store.create_user("alice")
        store.grant(alice.pk, "polls", "member")
        store.grant(alice.pk, "wiki", "admin")
        user = store.get_user(alice.pk)
        assert self._roles(user) == {"polls": "member", "wiki": "admin"}
        assert user.is_member("polls") and not user.is_admin("polls")
        assert user.is_member("wiki") and user.is_admin("wiki")
        assert not user.is_member("other")
        store.grant(alice.pk, "wiki", "member")  # a new grant replaces the old role
        store.grant(alice.pk, "polls", "admin")
        assert self._roles(store.get_user(alice.pk)) == {"polls": "admin", "wiki": "member"}
        store.revoke(alice.pk, "polls")
        store.revoke(alice.pk, "never-granted")
        store.revoke(987654, "polls")  # no error
        assert self._roles(store.get_user(alice.pk)) == {"wiki": "member"}
        with self._raises(ValueError):
            store.grant(alice.pk, "wiki", "owner")
        with self._raises(KeyError):
            store.grant(987654, "wiki", "member")

    def test_grant_every_service(self, store: Any) -> None:
        alice = store.create_user("alice")
        store.grant(alice.pk, "*", "admin")
        user = store.get_user(alice.pk)
        assert user.is_member("anything") and user.is_admin("anything")

    def test_members(self, store: Any) -> None:
        names = ("dora", "bob", "carl", "alice", "erin")
        users = {name: store.create_user(name) for name in names}
        store.grant(users["bob"].pk, "polls", "member")
        store.grant(users["alice"].pk, "polls", "admin")
        store.grant(users["dora"].pk, "*", "member")
        store.grant(users["carl"].pk, "wiki", "admin")
        store.grant(users["erin"].pk, "polls", "member")
        store.set_active(users["erin"].pk, False)  # disabled users are nobody's members
        assert [u.username for u in store.members("polls")] == ["alice", "bob", "dora"]
        assert [u.username for u in store.members("wiki")] == ["carl", "dora"]
        assert [u.username for u in store.members("none")] == ["dora"]
        assert store.members("polls")[0].is_admin("polls")

    # -- organisations ----------------------------------------------------------------------------

    def test_organisations(self, store: Any) -> None:
        assert store.list_orgas() == []
        rts = store.create_orga("RTS", "chrts")
        ebu = store.create_orga("EBU", "zzebu")
        bare = store.create_orga("Bare")
        assert (rts.name, rts.codops, bare.codops) == ("RTS", "chrts", "")
        with self._raises(ValueError):
            store.create_orga("RTS")
        assert store.get_orga(ebu.pk).name == "EBU"
        assert store.get_orga(str(ebu.pk)).codops == "zzebu"
        for missing in (987654, "987654", "garbage", None):
            assert store.get_orga(missing) is None
        assert [o.name for o in store.list_orgas()] == ["Bare", "EBU", "RTS"]

    def test_orga_membership(self, store: Any) -> None:
        alice = store.create_user("alice")
        rts = store.create_orga("RTS", "chrts")
        ebu = store.create_orga("EBU", "zzebu")
        store.add_to_orga(alice.pk, rts.pk)
        store.add_to_orga(alice.pk, ebu.pk, admin=True)
        user = store.get_user(alice.pk)
        assert self._orgas(user) == {"RTS": False, "EBU": True}
        assert [o.name for o in user.orgas] == ["EBU", "RTS"]  # by name
        assert user.orga(rts.pk).codops == "chrts" and user.orga(str(rts.pk)) is not None
        service_user = user.for_service("polls", user.orga(ebu.pk))
        assert service_user.ebuio_orga_member and service_user.ebuio_orga_admin
        store.add_to_orga(alice.pk, rts.pk, admin=True)  # joining again changes the role
        store.add_to_orga(alice.pk, ebu.pk, admin=False)
        assert self._orgas(store.get_user(alice.pk)) == {"RTS": True, "EBU": False}
        store.remove_from_orga(alice.pk, rts.pk)
        store.remove_from_orga(alice.pk, 987654)  # no error
        store.remove_from_orga(987654, ebu.pk)
        assert self._orgas(store.get_user(alice.pk)) == {"EBU": False}
        with self._raises(KeyError):
            store.add_to_orga(alice.pk, 987654)
        with self._raises(KeyError):
            store.add_to_orga(987654, rts.pk)

    # -- external directories ---------------------------------------------------------------------

    def test_sync_creates_then_updates(self, store: Any) -> None:
        fields = {"username": "dana", "email": "dana@corp.example", "first_name": "Dana"}
        dana = store.sync_external_user("ldap", "uid=dana", fields)
        assert dana.username == "dana" and dana.email == "dana@corp.example"
        assert dana.extra["source"] == "ldap" and store.password_hash(dana.pk) is None
        again = store.sync_external_user(
            "ldap", "uid=dana", {"username": "dana", "email": "d@corp.example"}
        )
        assert again.pk == dana.pk and again.email == "d@corp.example"
        assert again.first_name == "Dana"  # fields not given are kept
        assert [u.username for u in store.list_users()] == ["dana"]
        assert store.get_user(dana.extra["uuid"]).pk == dana.pk

    def test_sync_never_takes_over_an_account(self, store: Any) -> None:
        local = store.create_user("erin", email="erin@local.example", password_hash="h")  # noqa: S106
        external = store.sync_external_user("oidc", "sub-1", {"username": "erin", "email": "x@y"})
        assert external.pk != local.pk and external.username.lower() != "erin"
        assert store.get_by_username("erin").pk == local.pk
        assert store.get_user(local.pk).email == "erin@local.example"
        assert store.password_hash(local.pk) == "h"
        other = store.sync_external_user("ldap", "uid=erin", {"username": "erin"})
        assert len({local.pk, external.pk, other.pk}) == 3
        assert len({u.username.lower() for u in store.list_users()}) == 3
        nameless = store.sync_external_user("oidc", "sub-2", {})
        assert nameless.username  # some name, from the external id

    def test_sync_replaces_its_own_grants_only(self, store: Any) -> None:
        pk = store.sync_external_user(
            "oidc",
            "sub-1",
            {"username": "fay", "services": {"polls": "admin", "wiki": "member"}},
        ).pk
        store.grant(pk, "forum", "member")  # local grants survive every sync
        store.grant(pk, "wiki", "member")
        store.sync_external_user("ldap", "uid=fay", {"username": "fay2"})  # another user
        user = store.sync_external_user("oidc", "sub-1", {"services": {"news": "member"}})
        assert self._roles(user) == {"news": "member", "forum": "member", "wiki": "member"}
        user = store.sync_external_user("oidc", "sub-1", {"services": {"wiki": "admin"}})
        assert self._roles(user) == {"forum": "member", "wiki": "admin"}
        user = store.sync_external_user("oidc", "sub-1", {"services": {}})
        assert self._roles(user) == {"forum": "member", "wiki": "member"}  # local wiki kept
        store.sync_external_user("oidc", "sub-1", {"services": {"polls": "member"}})
        user = store.sync_external_user("oidc", "sub-1", {"email": "fay@x.example"})
        assert "polls" in user.member_of  # no "services" key: grants unchanged
        with self._raises(ValueError):
            store.sync_external_user("oidc", "sub-1", {"services": {"polls": "owner"}})
        assert self._roles(store.get_user(pk)) == {
            "forum": "member",
            "polls": "member",
            "wiki": "member",
        }

    def test_sync_replaces_its_own_orgas_only(self, store: Any) -> None:
        local_orga = store.create_orga("Local", "zzloc")
        pk = store.sync_external_user(
            "ldap", "uid=gus", {"username": "gus", "orgas": {"RTS": "admin", "BBC": "member"}}
        ).pk
        store.add_to_orga(pk, local_orga.pk)
        assert {o.name for o in store.list_orgas()} == {"Local", "RTS", "BBC"}  # created by name
        user = store.sync_external_user("ldap", "uid=gus", {"orgas": {"BBC": "admin"}})
        assert self._orgas(user) == {"BBC": True, "Local": False}
        user = store.sync_external_user("ldap", "uid=gus", {"orgas": {}})
        assert self._orgas(user) == {"Local": False}
        assert {o.name for o in store.list_orgas()} == {"Local", "RTS", "BBC"}

    def test_sync_keeps_the_account_state(self, store: Any) -> None:
        pk = store.sync_external_user("oidc", "sub-9", {"username": "hal"}).pk
        store.set_active(pk, False)
        store.sync_external_user("oidc", "sub-9", {"username": "hal", "email": "h@x"})
        assert store.is_active(pk) is False  # a login elsewhere never re-enables an account

    # -- failed logins ----------------------------------------------------------------------------

    def test_failures(self, store: Any) -> None:
        for _ in range(3):
            store.record_failure("login:user:alice")
        store.record_failure("login:addr:10.0.0.1")
        assert store.count_failures("login:user:alice", 60) == 3
        assert store.count_failures("login:addr:10.0.0.1", 60) == 1
        assert store.count_failures("login:user:bob", 60) == 0
        store.clear_failures("login:user:alice")
        store.clear_failures("login:user:nobody")
        assert store.count_failures("login:user:alice", 60) == 0
        assert store.count_failures("login:addr:10.0.0.1", 60) == 1

    def test_failures_leave_the_window(self, store: Any) -> None:
        clock = self._fake_clock(store)
        store.record_failure("k")
        if clock is not None:
            clock.advance(30)
        else:
            time.sleep(1.2)
        store.record_failure("k")
        if clock is not None:
            assert store.count_failures("k", 60) == 2
            assert store.count_failures("k", 10) == 1
            clock.advance(61)
        else:
            assert store.count_failures("k", 0.6) == 1
            time.sleep(0.7)
        assert store.count_failures("k", 60 if clock is not None else 0.6) == 0

    # -- many threads -----------------------------------------------------------------------------

    def test_threads_creating_users(self, store: Any) -> None:
        import concurrent.futures

        def work(n: int) -> list[Any]:
            made = []
            for i in range(5):
                user = store.create_user(f"user-{n}-{i}")
                store.grant(user.pk, "polls", "member")
                store.record_failure("shared-key")
                made.append(user.pk)
                assert store.get_user(user.pk).is_member("polls")
            return made

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            pks = [pk for made in pool.map(work, range(self.threads)) for pk in made]
        assert len(set(pks)) == self.threads * 5
        assert len(store.list_users()) == self.threads * 5
        assert len(store.members("polls")) == self.threads * 5
        assert store.count_failures("shared-key", 3600) == self.threads * 5

    def test_threads_racing_for_one_name(self, store: Any) -> None:
        import concurrent.futures

        def attempt(_: int) -> bool:
            try:
                store.create_user("contested")
            except ValueError:
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            results = list(pool.map(attempt, range(self.threads * 2)))
        assert results.count(True) == 1
        assert [u.username for u in store.list_users()] == ["contested"]

    def test_threads_syncing_one_external_user(self, store: Any) -> None:
        import concurrent.futures

        def sync(n: int) -> Any:
            fields = {"username": "ivy", "services": {f"svc{n % 3}": "member"}}
            return store.sync_external_user("oidc", "sub-ivy", fields).pk

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            pks = set(pool.map(sync, range(self.threads * 2)))
        assert len(pks) == 1 and len(store.list_users()) == 1
        assert len(store.get_user(pks.pop()).member_of) == 1  # the last sync's grants only
