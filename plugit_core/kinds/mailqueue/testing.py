"""The shared conformance suite of the mail queue: every
:class:`~plugit_core.kinds.mailqueue.MailQueue` passes :class:`MailQueueConformance`.
"""

from __future__ import annotations

from typing import Any

from ...testing.helpers import FakeClock

__all__ = ["MailQueueConformance"]


class MailQueueConformance:
    """The contract of :class:`plugit_core.kinds.mailqueue.MailQueue` as pytest tests.

    Subclass it in a test module and provide two fixtures: ``queue``, a fresh, empty queue, and
    ``other_queue``, a second queue object on the same storage (what another proxy process
    opens)::

        class TestMyMailQueue(MailQueueConformance):
            @pytest.fixture
            def queue(self, tmp_path):
                queue = MyMailQueue(tmp_path / "mail")
                yield queue
                queue.close()

            @pytest.fixture
            def other_queue(self, queue, tmp_path):
                other = MyMailQueue(tmp_path / "mail")
                yield other
                other.close()

    The clock moves through the protocol's ``clock`` attribute: the checks put one
    :class:`FakeClock` on both objects and step it.  pytest is only imported when the tests run.
    """

    threads: int = 4

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _clock(*queues: Any) -> FakeClock:
        clock = FakeClock(1_700_000_000.0)
        for queue in queues:
            queue.clock = clock
        return clock

    @staticmethod
    def _enqueue(queue: Any, n: int = 1, *, service: str = "polls", **fields: Any) -> list[int]:
        options: dict[str, Any] = {
            "service": service,
            "sender": "PlugIt <no-reply@example.org>",
            "recipients": ["dana@example.org"],
            "subject": "Your vote",
            "body": "Please vote.",
            "html": False,
            "reply_to": None,
            "message_id": "<m@example.org>",
            "max_per_hour": 0,
        }
        options.update(fields)
        return [queue.enqueue(**options) for _ in range(n)]

    @staticmethod
    def _row(queue: Any, mail_id: int) -> dict[str, Any]:
        rows: list[dict[str, Any]] = [row for row in queue.outbox() if row["id"] == mail_id]
        (row,) = rows
        return row

    # -- the protocol -----------------------------------------------------------------------------

    def test_is_a_mail_queue(self, queue: Any, other_queue: Any) -> None:
        from plugit_core.kinds.mailqueue import MailQueue

        assert isinstance(queue, MailQueue)
        assert isinstance(queue.owner, str) and queue.owner
        assert queue.owner != other_queue.owner
        assert isinstance(queue.clock(), float)

    def test_empty(self, queue: Any) -> None:
        assert queue.outbox() == [] and queue.incoming() == []
        assert queue.counts() == {"outbox": {}, "incoming": {}}
        assert queue.next_due() is None
        assert queue.claim(10, 60, started=queue.clock()) == []
        assert queue.purge(0) == 0 and queue.purge_incoming(0) == 0
        assert queue.incoming_state("nothing") is None

    # -- outbox -----------------------------------------------------------------------------------

    def test_enqueue_keeps_every_field(self, queue: Any) -> None:
        clock = self._clock(queue)
        mail_id = queue.enqueue(
            service="polls",
            sender="Poll <polls@example.org>",
            recipients=["a@example.org", "Zoë <b@example.org>"],
            subject="Héllo ✓",
            body="<p>Vote</p>\n",
            html=True,
            reply_to="replies+tok@example.org",
            message_id="<1@example.org>",
            max_per_hour=0,
        )
        assert isinstance(mail_id, int)
        (row,) = queue.outbox()
        assert row == {
            "id": mail_id,
            "service": "polls",
            "sender": "Poll <polls@example.org>",
            "recipients": ["a@example.org", "Zoë <b@example.org>"],
            "n_recipients": 2,
            "subject": "Héllo ✓",
            "body": "<p>Vote</p>\n",
            "html": 1,
            "reply_to": "replies+tok@example.org",
            "message_id": "<1@example.org>",
            "state": "queued",
            "attempts": 0,
            "next_try": clock.now,
            "owner": None,
            "lease_until": None,
            "last_try": None,
            "last_error": None,
            "created": clock.now,
            "done": None,
            "stale_since": None,
        }
        (plain,) = self._enqueue(queue)
        assert plain > mail_id and self._row(queue, plain)["html"] == 0
        assert queue.counts() == {"outbox": {"queued": 2}, "incoming": {}}
        assert [row["id"] for row in queue.outbox("queued")] == [mail_id, plain]
        assert queue.outbox("sent") == []

    def test_quota_counts_recipients_per_rolling_hour(self, queue: Any) -> None:
        from plugit_core.kinds.mailqueue import RateLimitedError

        clock = self._clock(queue)
        two = ["a@example.org", "b@example.org"]
        self._enqueue(queue, recipients=two, max_per_hour=3)
        clock.advance(600)
        self._enqueue(queue, recipients=["c@example.org"], max_per_hour=3)
        clock.advance(600)
        try:
            self._enqueue(queue, max_per_hour=3)
        except RateLimitedError as exc:
            assert (exc.used, exc.limit) == (3, 3)
            assert exc.retry_after == 3600 - 1200
        else:
            raise AssertionError("the quota was not applied")
        assert len(queue.outbox()) == 2  # the refused mail left nothing behind
        self._enqueue(queue, service="other", recipients=two, max_per_hour=3)  # per service
        self._enqueue(queue, recipients=two, max_per_hour=0)  # 0: no quota
        clock.advance(2401)  # the first mail left the hour (the unlimited one still counts)
        try:
            self._enqueue(queue, recipients=two, max_per_hour=3)
        except RateLimitedError as exc:
            assert exc.used == 3 and exc.retry_after == 600 - 1
        else:
            raise AssertionError("the quota was not applied")
        self._enqueue(queue, max_per_hour=4)
        assert len(queue.outbox()) == 5

    def test_quota_holds_across_queues_and_threads(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        from plugit_core.kinds.mailqueue import RateLimitedError

        def work(q: Any) -> int:
            accepted = 0
            for _ in range(5):
                try:
                    self._enqueue(q, max_per_hour=7)
                    accepted += 1
                except RateLimitedError:
                    pass
            return accepted

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            accepted = sum(pool.map(work, targets))
        assert accepted == 7
        assert len(queue.outbox()) == 7

    def test_claim_takes_due_mails_under_a_lease(self, queue: Any) -> None:
        clock = self._clock(queue)
        first, second, third = self._enqueue(queue, 3, reply_to="r@example.org")
        started = clock.now
        clock.advance(1)
        batch = queue.claim(2, 60, started=started)
        assert [mail.id for mail in batch] == [first, second]
        mail = batch[0]
        assert (mail.service, mail.sender, mail.recipients) == (
            "polls",
            "PlugIt <no-reply@example.org>",
            ("dana@example.org",),
        )
        assert (mail.subject, mail.body, mail.html, mail.reply_to, mail.message_id) == (
            "Your vote",
            "Please vote.",
            False,
            "r@example.org",
            "<m@example.org>",
        )
        assert (mail.attempts, mail.created) == (0, started)
        row = self._row(queue, first)
        assert (row["state"], row["owner"], row["lease_until"], row["last_try"]) == (
            "sending",
            queue.owner,
            clock.now + 60,
            clock.now,
        )
        assert [mail.id for mail in queue.claim(10, 60, started=started)] == [third]
        assert queue.claim(10, 60, started=started) == []
        assert queue.counts()["outbox"] == {"sending": 3}
        assert queue.next_due() == clock.now + 60  # the first lease to end

    def test_mails_not_due_yet_wait(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        queue.claim(1, 60, started=clock.now)
        assert queue.mark_retry(mail_id, "busy", 300, 0) == "queued"
        clock.advance(299)
        assert queue.claim(1, 60, started=clock.now) == []
        assert queue.next_due() == clock.now + 1
        clock.advance(1)
        assert [mail.attempts for mail in queue.claim(1, 60, started=clock.now)] == [1]

    def test_retry_now_takes_waiting_mails_once_per_pass(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        started = clock.now
        queue.claim(1, 60, started=started)
        queue.mark_retry(mail_id, "busy", 300, 0)
        # The same pass: tried already since ``started``, even with retry_now.
        assert queue.claim(1, 60, started=started, retry_now=True) == []
        clock.advance(1)
        assert queue.claim(1, 60, started=clock.now) == []  # not due
        assert [m.id for m in queue.claim(1, 60, started=clock.now, retry_now=True)] == [mail_id]

    def test_claims_are_ordered_by_next_try(self, queue: Any) -> None:
        clock = self._clock(queue)
        early, late = self._enqueue(queue, 2)
        queue.claim(2, 60, started=clock.now)
        queue.mark_retry(early, "busy", 20, 0)
        queue.mark_retry(late, "busy", 10, 0)
        clock.advance(30)
        assert [mail.id for mail in queue.claim(5, 60, started=clock.now)] == [late, early]

    def test_mark_sent(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        quiet, noted = self._enqueue(queue, 2)
        queue.claim(2, 60, started=clock.now)
        clock.advance(5)
        assert other_queue.mark_sent(quiet) is False  # not its mail
        assert queue.mark_sent(quiet) is True
        assert queue.mark_sent(noted, "refused recipients: x@example.org (550)") is True
        assert queue.mark_sent(quiet) is False  # no longer sending
        row = self._row(queue, quiet)
        assert (row["state"], row["attempts"], row["done"], row["owner"]) == (
            "sent",
            1,
            clock.now,
            None,
        )
        assert row["lease_until"] is None and row["last_error"] is None
        assert self._row(queue, noted)["last_error"] == "refused recipients: x@example.org (550)"
        assert queue.next_due() is None
        assert queue.claim(5, 60, started=clock.now + 1, retry_now=True) == []

    def test_mark_retry_backs_off_then_gives_up(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        for attempt in (1, 2):
            queue.claim(1, 60, started=clock.now)
            assert other_queue.mark_retry(mail_id, "not mine", 1, 3) == "lost"
            assert queue.mark_retry(mail_id, f"421 try later {attempt}", 10.0 * attempt, 3) == (
                "queued"
            )
            row = self._row(queue, mail_id)
            assert (row["state"], row["attempts"], row["owner"], row["lease_until"]) == (
                "queued",
                attempt,
                None,
                None,
            )
            assert row["next_try"] == clock.now + 10.0 * attempt
            assert row["last_error"] == f"421 try later {attempt}" and row["done"] is None
            clock.advance(10.0 * attempt)
        queue.claim(1, 60, started=clock.now)
        assert queue.mark_retry(mail_id, "x" * 5000, 10, 3) == "failed"
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["done"]) == ("failed", 3, clock.now)
        assert row["last_error"] == "x" * 1000
        assert queue.mark_retry(mail_id, "again", 10, 3) == "lost"
        clock.advance(3600)
        assert queue.claim(1, 60, started=clock.now, retry_now=True) == []
        assert queue.next_due() is None

    def test_max_attempts_zero_never_gives_up(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        for _ in range(5):
            assert len(queue.claim(1, 60, started=clock.now)) == 1
            assert queue.mark_retry(mail_id, "busy", 1, 0) == "queued"
            clock.advance(1)
        assert self._row(queue, mail_id)["attempts"] == 5

    def test_mark_failed(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        queue.claim(1, 60, started=clock.now)
        other_queue.mark_failed(mail_id, "not mine")
        assert self._row(queue, mail_id)["state"] == "sending"
        clock.advance(2)
        queue.mark_failed(mail_id, "550 " + "y" * 2000)
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["done"], row["owner"]) == (
            "failed",
            1,
            clock.now,
            None,
        )
        assert row["last_error"] == ("550 " + "y" * 2000)[:1000]
        assert queue.claim(1, 60, started=clock.now + 1, retry_now=True) == []
        assert queue.counts()["outbox"] == {"failed": 1}

    def test_release_gives_the_mail_back(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        started = clock.now
        queue.claim(1, 60, started=started)
        other_queue.release(mail_id)  # not its mail: nothing happens
        assert self._row(queue, mail_id)["state"] == "sending"
        queue.release(mail_id)
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["owner"], row["lease_until"]) == (
            "queued",
            0,
            None,
            None,
        )
        assert row["next_try"] == started and row["last_try"] == started
        assert queue.next_due() == started
        assert queue.claim(1, 60, started=started) == []  # tried in this pass already
        clock.advance(1)
        assert [mail.id for mail in other_queue.claim(1, 60, started=clock.now)] == [mail_id]

    def test_an_expired_lease_is_claimed_again(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        assert len(queue.claim(1, 60, started=clock.now)) == 1
        clock.advance(59)
        assert other_queue.claim(1, 60, started=clock.now) == []
        assert other_queue.next_due() == clock.now + 1
        clock.advance(1)  # the first sender died: its lease ended
        (mail,) = other_queue.claim(1, 30, started=clock.now)
        assert mail.id == mail_id
        row = self._row(queue, mail_id)
        assert (row["owner"], row["lease_until"]) == (other_queue.owner, clock.now + 30)
        assert queue.mark_sent(mail_id) is False  # too late: no longer its mail
        assert queue.mark_retry(mail_id, "late", 1, 0) == "lost"
        assert other_queue.mark_sent(mail_id) is True
        assert self._row(queue, mail_id)["attempts"] == 1

    def test_renew_extends_the_leases_it_holds(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        first, second, third = self._enqueue(queue, 3)
        assert queue.renew(60) == []  # holds nothing
        queue.claim(2, 10, started=clock.now)
        other_queue.claim(1, 10, started=clock.now)
        clock.advance(8)
        assert queue.renew(10) == [first, second]
        assert {self._row(queue, i)["lease_until"] for i in (first, second)} == {clock.now + 10}
        assert self._row(queue, third)["lease_until"] == clock.now + 2  # not its mail
        clock.advance(5)  # past the first lease, within the renewed one
        (taken,) = queue.claim(5, 10, started=clock.now)  # the other's lease ended
        assert taken.id == third
        assert other_queue.claim(5, 10, started=clock.now) == []
        assert other_queue.renew(10) == []  # it lost its mail
        assert queue.mark_sent(first) is True
        assert queue.renew(10) == [second, third]

    def test_grace_notices_an_expired_lease_before_taking_it(
        self, queue: Any, other_queue: Any
    ) -> None:
        clock = self._clock(queue, other_queue)
        first, second = self._enqueue(queue, 2)
        queue.claim(2, 10, started=clock.now)
        clock.advance(10)  # both leases ended (the holder was cut off from the queue)
        assert other_queue.claim(5, 10, started=clock.now, grace=6, max_attempts=3) == []
        row = self._row(queue, first)
        assert (row["state"], row["owner"], row["attempts"], row["last_error"]) == (
            "sending",
            queue.owner,
            0,
            None,
        )
        assert (row["stale_since"], row["lease_until"]) == (clock.now, clock.now + 6)
        assert other_queue.next_due() == clock.now + 6
        clock.advance(3)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []  # within the grace
        assert queue.mark_sent(first) is True  # the holder records its result in time
        assert queue.renew(10) == [second]  # and shows it lives: the notice is gone
        assert self._row(queue, second)["stale_since"] is None
        clock.advance(10)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []  # noticed anew
        clock.advance(5.9)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []
        clock.advance(0.1)  # the holder stayed silent through the grace: taken over
        (mail,) = other_queue.claim(5, 10, started=clock.now, grace=6, max_attempts=3)
        assert (mail.id, mail.attempts) == (second, 1)
        row = self._row(queue, second)
        assert (row["owner"], row["lease_until"], row["stale_since"]) == (
            other_queue.owner,
            clock.now + 10,
            None,
        )
        assert (
            row["last_error"] == "its sender stopped before recording the result (the lease ended)"
        )
        assert queue.mark_sent(second) is False and queue.renew(10) == []
        assert self._row(queue, first)["state"] == "sent"

    def test_two_queues_never_claim_the_same_mail(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        ids = self._enqueue(queue, 60)
        started = queue.clock()

        def work(q: Any) -> list[int]:
            taken: list[int] = []
            while True:
                batch = q.claim(3, 600, started=started + 3600)
                if not batch:
                    return taken
                for mail in batch:
                    assert q.mark_sent(mail.id)
                taken.extend(mail.id for mail in batch)

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            taken = [mail_id for batch in pool.map(work, targets) for mail_id in batch]
        assert sorted(taken) == sorted(ids)  # each mail once, none twice
        assert queue.counts()["outbox"] == {"sent": 60}
        assert {row["attempts"] for row in other_queue.outbox()} == {1}

    def test_next_due(self, queue: Any) -> None:
        clock = self._clock(queue)
        first, second = self._enqueue(queue, 2)
        assert queue.next_due() == clock.now
        queue.claim(1, 120, started=clock.now)
        queue.mark_retry(first, "busy", 500, 0)
        assert queue.next_due() == clock.now  # the second one is due
        queue.claim(1, 120, started=clock.now)
        assert queue.next_due() == clock.now + 120  # its lease
        queue.mark_sent(second)
        assert queue.next_due() == clock.now + 500

    def test_purge_forgets_old_sent_mails_only(self, queue: Any) -> None:
        clock = self._clock(queue)
        sent, failed, waiting, recent = self._enqueue(queue, 4)
        queue.claim(3, 60, started=clock.now)
        queue.mark_sent(sent)
        queue.mark_failed(failed, "550 no")
        queue.mark_retry(waiting, "busy", 10, 0)
        clock.advance(100)
        queue.claim(1, 60, started=clock.now)
        queue.mark_sent(recent)
        assert queue.purge(100) == 0  # done exactly 100 s ago: kept
        clock.advance(1)
        assert queue.purge(100) == 1
        assert [row["id"] for row in queue.outbox()] == [failed, waiting, recent]
        clock.advance(100)
        assert queue.purge(100) == 1
        assert queue.counts()["outbox"] == {"failed": 1, "queued": 1}

    # -- incoming ---------------------------------------------------------------------------------

    def test_record_incoming_creates_then_updates(self, queue: Any) -> None:
        clock = self._clock(queue)
        seen = clock.now
        assert (
            queue.record_incoming(
                "sha256:aa",
                "pending",
                message_id="<r@x>",
                service="polls",
                response_id="42",
                error="HTTP 500",
                count_attempt=True,
            )
            == 1
        )
        assert queue.incoming_state("sha256:aa") == ("pending", 1, None)
        clock.advance(10)
        assert queue.record_incoming("sha256:aa", "pending", error="z" * 3000) == 1
        clock.advance(10)
        raw = b"From: a\r\n\r\n\x00\xff body"
        attempts = queue.record_incoming(
            "sha256:aa", "undeliverable", message_id="<other@x>", count_attempt=True, raw=raw
        )
        assert attempts == 2
        (record,) = queue.incoming()
        assert record == {
            "key": "sha256:aa",
            "message_id": "<r@x>",  # the first one stays
            "service": "polls",  # kept when not given
            "response_id": "42",
            "state": "undeliverable",
            "attempts": 2,
            "next_try": None,
            "last_error": "z" * 1000,  # kept when not given, cut at 1000 characters
            "first_seen": seen,
            "updated": clock.now,
            "raw": raw,
        }
        assert queue.record_incoming("box:7", "failing", count_attempt=False) == 0
        assert queue.incoming_state("box:7") == ("failing", 0, None)
        assert queue.counts()["incoming"] == {"undeliverable": 1, "failing": 1}

    def test_defer_incoming(self, queue: Any) -> None:
        clock = self._clock(queue)
        queue.record_incoming("k", "pending", count_attempt=True)
        queue.defer_incoming("k", 120)
        assert queue.incoming_state("k") == ("pending", 1, clock.now + 120)
        clock.advance(5)
        queue.record_incoming("k", "pending", count_attempt=True)  # keeps next_try
        assert queue.incoming_state("k") == ("pending", 2, clock.now - 5 + 120)
        queue.defer_incoming("unknown", 10)  # nothing to defer
        assert queue.incoming_state("unknown") is None

    def test_incoming_lists_by_first_seen(self, queue: Any) -> None:
        clock = self._clock(queue)
        for key, state in (("c", "delivered"), ("a", "pending"), ("b", "delivered")):
            queue.record_incoming(key, state)
            clock.advance(1)
        queue.record_incoming("c", "delivered")  # updated, not seen anew
        assert [r["key"] for r in queue.incoming()] == ["c", "a", "b"]
        assert [r["key"] for r in queue.incoming("delivered")] == ["c", "b"]
        assert queue.incoming("rejected") == []

    def test_purge_incoming_keeps_what_still_matters(self, queue: Any) -> None:
        clock = self._clock(queue)
        states = ("delivered", "dropped", "rejected", "undeliverable", "pending", "failing")
        for state in states:
            queue.record_incoming(f"old-{state}", state)
        clock.advance(100)
        queue.record_incoming("new-delivered", "delivered")
        assert queue.purge_incoming(100) == 0
        clock.advance(1)
        assert queue.purge_incoming(100) == 3
        assert sorted(r["key"] for r in queue.incoming()) == [
            "new-delivered",
            "old-failing",
            "old-pending",
            "old-undeliverable",
        ]

    # -- locks ------------------------------------------------------------------------------------

    def test_locks_are_exclusive_leases(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        assert queue.acquire_lock("check_mail", 60)
        assert not other_queue.acquire_lock("check_mail", 60)
        assert other_queue.acquire_lock("another", 60)  # names are independent
        assert queue.acquire_lock("check_mail", 60)  # renewed by its holder
        clock.advance(59)
        assert not other_queue.acquire_lock("check_mail", 60)  # the renewal counts
        other_queue.release_lock("check_mail")  # not its lock: nothing happens
        assert not other_queue.acquire_lock("check_mail", 60)
        queue.release_lock("check_mail")
        assert other_queue.acquire_lock("check_mail", 60)
        assert not queue.acquire_lock("check_mail", 60)
        clock.advance(60)  # its holder died: the lease ran out
        assert queue.acquire_lock("check_mail", 60)
        assert not other_queue.acquire_lock("check_mail", 60)

    def test_one_lock_holder_among_threads(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            results = list(pool.map(lambda q: (q.owner, q.acquire_lock("race", 60)), targets))
        winners = {owner for owner, won in results if won}
        assert len(winners) == 1

    # -- life cycle -------------------------------------------------------------------------------

    def test_close_then_use_again(self, queue: Any, other_queue: Any) -> None:
        (mail_id,) = self._enqueue(queue)
        queue.close()
        queue.close()  # twice is fine
        assert [row["id"] for row in queue.outbox()] == [mail_id]
        assert [row["id"] for row in other_queue.outbox()] == [mail_id]
