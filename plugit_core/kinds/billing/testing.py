"""The shared conformance suite of the ``billing`` kind: every
:class:`~plugit_core.kinds.billing.BillingStore` passes :class:`BillingStoreConformance`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BillingStoreConformance"]


def _billing_clock() -> Any:
    """``(now, timedelta)``: the current aware UTC time, for the billing checks."""
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc), timedelta


class BillingStoreConformance:
    """The contract of a billing backend (``plugit_backends.billing.BillingStore``) as pytest
    tests.

    Subclass it in a test module and provide a fresh, empty store::

        class TestMyBillingStore(BillingStoreConformance):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyBillingStore(tmp_path / "billing.db")
                yield store
                store.close()

    The checks use the real clock, with margins of days around it.  Unknown plans and
    subscriptions must raise ``KeyError`` (or a subclass), bad input ``ValueError`` (or a
    subclass), and a refused call must change nothing.
    """

    # -- plans ------------------------------------------------------------------------------------

    def test_plans_belong_to_their_service(self, store: Any) -> None:
        plan = store.create_plan("polls", "pro", "Pro", "More polls")
        assert (plan.service, plan.code, plan.label, plan.description) == (
            "polls",
            "pro",
            "Pro",
            "More polls",
        )
        store.create_plan("polls", "basic", "Basic")
        store.create_plan("wiki", "pro", "Wiki Pro")
        assert [p.code for p in store.list_plans("polls")] == ["basic", "pro"]
        assert [p.label for p in store.list_plans("wiki")] == ["Wiki Pro"]
        assert store.list_plans("nothing") == []

    def test_a_plan_code_is_unique_in_its_service(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.create_plan("polls", "pro", "Another Pro")
        assert [p.label for p in store.list_plans("polls")] == ["Pro"]

    def test_bad_plans_are_refused(self, store: Any) -> None:
        import pytest

        for code, label in (("", "Empty"), ("a b", "Space"), ("x" * 65, "Long"), ("ok", "")):
            with pytest.raises(ValueError):
                store.create_plan("polls", code, label)
        assert store.list_plans("polls") == []

    # -- grants -----------------------------------------------------------------------------------

    def test_grant_to_a_user(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=7)
        assert (sub.service, sub.plan, sub.label, sub.user_pk, sub.orga_pk) == (
            "polls",
            "pro",
            "Pro",
            7,
            None,
        )
        assert sub.state == "active" and sub.active is True and sub.end is None
        assert sub.start.tzinfo is not None and abs(sub.start - now) < delta(minutes=1)
        assert sub.created.tzinfo is not None
        assert store.get(sub.id) == sub
        assert store.subscriptions("polls", user_pk=7) == [sub]
        assert store.labels("polls", 7, []) == ["Pro"]
        assert store.labels("polls", 8, []) == []

    def test_grant_needs_exactly_one_holder(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, orga_pk=2)
        assert store.subscriptions("polls", include_inactive=True) == []

    def test_grant_of_an_unknown_plan(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(KeyError):
            store.grant("polls", "gold", user_pk=1)
        with pytest.raises(KeyError):
            store.grant("wiki", "pro", user_pk=1)  # another service's plan
        assert store.subscriptions("polls", include_inactive=True) == []
        assert store.subscriptions("wiki", include_inactive=True) == []

    def test_the_end_comes_after_the_start(self, store: Any) -> None:
        import pytest

        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, start=now, end=now - delta(days=1))
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, start=now, end=now)
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, end=now - delta(days=1))  # start: now
        assert store.subscriptions("polls", include_inactive=True) == []

    def test_naive_times_are_utc(self, store: Any) -> None:
        from datetime import datetime, timezone

        store.create_plan("polls", "pro", "Pro")
        sub = store.grant(
            "polls", "pro", user_pk=1, start=datetime(2001, 2, 3, 4, 5), end=datetime(2101, 1, 1)
        )
        assert sub.start == datetime(2001, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert sub.end == datetime(2101, 1, 1, tzinfo=timezone.utc)

    # -- activeness -------------------------------------------------------------------------------

    def test_only_current_subscriptions_give_labels(self, store: Any) -> None:
        now, delta = _billing_clock()
        day = delta(days=1)
        for code in ("past", "current", "future", "open"):
            store.create_plan("polls", code, code.title())
        past = store.grant("polls", "past", user_pk=1, start=now - 3 * day, end=now - day)
        current = store.grant("polls", "current", user_pk=1, start=now - day, end=now + day)
        future = store.grant("polls", "future", user_pk=1, start=now + day, end=now + 3 * day)
        store.grant("polls", "open", user_pk=1, start=now - day)
        assert store.labels("polls", 1, []) == ["Current", "Open"]
        assert (past.state, past.active) == ("expired", False)
        assert (current.state, current.active) == ("active", True)
        assert (future.state, future.active) == ("active", False)
        assert [s.plan for s in store.subscriptions("polls", user_pk=1)] == ["current", "open"]
        everything = store.subscriptions("polls", user_pk=1, include_inactive=True)
        assert [s.plan for s in everything] == ["past", "current", "future", "open"]

    def test_labels_are_sorted_and_unique(self, store: Any) -> None:
        store.create_plan("polls", "b", "Beta")
        store.create_plan("polls", "a", "Alpha")
        store.grant("polls", "b", user_pk=1)
        store.grant("polls", "b", user_pk=1)
        store.grant("polls", "a", orga_pk=5)
        assert store.labels("polls", 1, [5]) == ["Alpha", "Beta"]

    def test_labels_are_per_service(self, store: Any) -> None:
        store.create_plan("polls", "pro", "Pro")
        store.create_plan("wiki", "pro", "Wiki Pro")
        store.grant("polls", "pro", user_pk=1)
        assert store.labels("wiki", 1, []) == []
        assert store.subscriptions("wiki", user_pk=1, include_inactive=True) == []
        labels_by_service = getattr(store, "labels_by_service", None)
        if labels_by_service is not None:
            store.grant("wiki", "pro", orga_pk=3)
            assert labels_by_service(1, [3]) == {"polls": ["Pro"], "wiki": ["Wiki Pro"]}
            assert labels_by_service(2, []) == {}

    def test_organisations_give_labels_to_their_members(self, store: Any) -> None:
        store.create_plan("polls", "team", "Team")
        sub = store.grant("polls", "team", orga_pk=10)
        assert (sub.user_pk, sub.orga_pk) == (None, 10)
        assert store.labels("polls", 1, [10]) == ["Team"]
        assert store.labels("polls", 1, [11, 10]) == ["Team"]
        assert store.labels("polls", 1, [11]) == []
        assert store.labels("polls", 10, []) == []  # an orga pk is no user pk
        assert store.subscriptions("polls", orga_pk=10) == [sub]
        assert store.subscriptions("polls", user_pk=10) == []

    # -- cancellation -----------------------------------------------------------------------------

    def test_cancel_ends_the_subscription_now(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1, start=now - delta(days=1))
        cancelled = store.cancel(sub.id)
        assert cancelled.id == sub.id and cancelled.state == "cancelled"
        assert cancelled.active is False and cancelled.cancelled is not None
        assert cancelled.end is not None and abs(cancelled.end - now) < delta(minutes=1)
        assert store.labels("polls", 1, []) == []
        assert store.subscriptions("polls", user_pk=1) == []
        assert store.get(sub.id).state == "cancelled"
        assert store.cancel(sub.id) == store.get(sub.id)  # again: nothing changes

    def test_cancel_later(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1)
        scheduled = store.cancel(sub.id, at=now + delta(days=2))
        assert scheduled.state == "active" and scheduled.active is True
        assert scheduled.end == now + delta(days=2)
        assert store.labels("polls", 1, []) == ["Pro"]

    def test_cancel_keeps_an_earlier_end(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1, end=now + delta(days=1))
        assert store.cancel(sub.id, at=now + delta(days=5)).end == now + delta(days=1)

    def test_cancel_refusals(self, store: Any) -> None:
        import pytest

        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(KeyError):
            store.cancel(424242)
        assert store.get(424242) is None
        old = store.grant(
            "polls", "pro", user_pk=1, start=now - delta(days=3), end=now - delta(days=1)
        )
        with pytest.raises(ValueError):
            store.cancel(old.id)
        assert store.get(old.id) == old

    # -- threads ----------------------------------------------------------------------------------

    def test_grants_from_many_threads(self, store: Any) -> None:
        import concurrent.futures

        store.create_plan("polls", "pro", "Pro")

        def work(n: int) -> list[int]:
            return [store.grant("polls", "pro", user_pk=n).id for _ in range(10)]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            ids = [i for batch in pool.map(work, range(8)) for i in batch]
        assert len(set(ids)) == 80
        assert len(store.subscriptions("polls")) == 80
        assert all(store.labels("polls", n, []) == ["Pro"] for n in range(8))
