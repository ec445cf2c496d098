"""The interface of the mail backend's durable state, the *mail queue*: :class:`MailQueue`,
what one claimed mail is (:class:`Outgoing`) and the quota's error (:class:`RateLimitedError`).

The implementations are backends: ``plugit_backends.mail_smtp.store.MailStore`` (SQLite) and
``plugit_backends.mail_postgres.PostgresMailQueue``; both pass
:class:`plugit_core.kinds.mailqueue.testing.MailQueueConformance`, the contract below as
pytest tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["LEASE_LOST", "MailQueue", "Outgoing", "RateLimitedError"]

# last_error of a mail whose sender stopped while holding it (see MailQueue.claim)
LEASE_LOST = "its sender stopped before recording the result (the lease ended)"


class RateLimitedError(Exception):
    """The service reached its hourly quota; ``retry_after`` is in seconds."""

    def __init__(self, used: int, limit: int, retry_after: float) -> None:
        super().__init__(f"{used} of {limit} recipients used in the last hour")
        self.used = used
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class Outgoing:
    """One claimed mail of the outbox."""

    id: int
    service: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    html: bool
    reply_to: str | None
    message_id: str
    attempts: int
    created: float


@runtime_checkable
class MailQueue(Protocol):
    """What ``plugit_backends.mail_smtp.MailBackend`` needs from its queue.

    Several queue objects (one per proxy process, or per ``plugit mail`` command) share one
    storage.  Times are clock values (seconds since the epoch, floats) read from :attr:`clock`
    when a method runs, never from the storage's own clock.  Every write is one transaction.

    Outbox states: ``queued`` (waiting for ``next_try``), ``sending`` (claimed by ``owner``
    until ``lease_until``, renewed by :meth:`renew` while the owner lives; ``stale_since``: when
    another object noticed the lease had ended), ``sent`` and ``failed`` (final, with
    ``done``).  Incoming states are the mail backend's (``pending``, ``delivered``, ``dropped``,
    ``rejected``, ``undeliverable``, ``failing``, ``unreadable``): the queue stores them, only
    :meth:`purge_incoming` reads them.
    """

    clock: Callable[[], float]
    """The current time; tests replace it (both the attribute and its result are read anew by
    every call)."""

    owner: str
    """This queue object's name in leases and locks: unique per object (a random hex)."""

    # -- outbox -----------------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        service: str,
        sender: str,
        recipients: list[str],
        subject: str,
        body: str,
        html: bool,
        reply_to: str | None,
        message_id: str,
        max_per_hour: int,
    ) -> int:
        """Queue one mail, due at once; return its id (ids grow).

        In the same transaction: when ``max_per_hour`` > 0 and the service's mails created in
        the last hour (every state) plus this one have more than ``max_per_hour`` recipients,
        raise :class:`RateLimitedError` (``retry_after``: when the oldest of them leaves the
        hour, at least 1 s) and write nothing.  Two processes cannot both pass the check with
        the last free recipients.
        """
        ...

    def claim(
        self,
        limit: int,
        lease: float,
        *,
        started: float,
        retry_now: bool = False,
        max_attempts: int = 0,
        grace: float = 0.0,
    ) -> list[Outgoing]:
        """Take up to ``limit`` due mails, ordered by ``next_try`` then id: they become
        ``sending``, owned by :attr:`owner` until now + ``lease``, with ``last_try`` = now and
        no ``stale_since``.

        Due: ``queued`` with ``next_try`` reached (any ``queued`` mail with ``retry_now``), or
        ``sending`` with an expired lease (its sender died).  Mails whose ``last_try`` is at or
        after ``started`` are skipped (one pass tries each mail once).  Two queue objects never
        get the same mail while its lease runs.

        With ``grace`` > 0 an expired lease is taken over in two steps: a mail whose
        ``stale_since`` is None is only *noticed* (``stale_since`` = now, ``lease_until`` = now +
        ``grace``, owner unchanged, not returned, no attempt counted), and taken over by a later
        claim once that extension ended too (the holder renewed nothing in between).  The holder
        may still record its result during the grace.  With 0 it is taken at once.

        With ``max_attempts`` > 0, an expired lease counts as a failed attempt (a mail that
        kills its sender is not tried for ever): attempts + 1 and ``last_error`` =
        :data:`LEASE_LOST`; once attempts reach ``max_attempts`` the mail becomes ``failed``
        (with ``done``, no owner) instead of being taken.  With 0, attempts are left as they are.
        """
        ...

    def renew(self, lease: float) -> list[int]:
        """Extend every lease this object holds to now + ``lease`` (``stale_since`` back to
        None) in one transaction; return the ids of the mails it still holds, in order."""
        ...

    def mark_sent(self, mail_id: int, note: str | None = None) -> bool:
        """``sending`` owned by this object → ``sent``: attempts + 1, ``done`` = now,
        ``last_error`` = ``note``, no owner.  False (nothing changed) when this object does not
        hold the mail (its lease expired and another took it)."""
        ...

    def mark_retry(self, mail_id: int, error: str, delay: float, max_attempts: int) -> str:
        """A temporary failure of a mail this object holds: attempts + 1, ``last_error`` =
        ``error`` (first 1000 characters), ``next_try`` = now + ``delay``, no owner; the state
        becomes ``failed`` (with ``done``) once attempts reach ``max_attempts`` (0: never), else
        ``queued``.  Returns the new state, or ``"lost"`` (nothing changed) when not held."""
        ...

    def mark_failed(self, mail_id: int, error: str) -> None:
        """A permanent failure of a mail this object holds: ``failed``, attempts + 1,
        ``last_error`` (first 1000 characters), ``done`` = now.  Nothing when not held."""
        ...

    def release(self, mail_id: int) -> None:
        """Give a held mail back untouched: ``queued`` again (same attempts, ``next_try`` and
        ``last_try``), no owner.  Nothing when not held."""
        ...

    def next_due(self) -> float | None:
        """The earliest ``next_try`` of the queued mails and ``lease_until`` of the sending ones,
        or None when there are neither."""
        ...

    def purge(self, older_than: float) -> int:
        """Delete the ``sent`` mails whose ``done`` is more than ``older_than`` seconds ago;
        return how many.  Failed mails stay."""
        ...

    def outbox(self, state: str | None = None) -> list[dict[str, Any]]:
        """The outbox rows (every state, or one), by id: dicts with ``id``, ``service``,
        ``sender``, ``recipients`` (a list), ``n_recipients``, ``subject``, ``body``, ``html``
        (0 or 1), ``reply_to``, ``message_id``, ``state``, ``attempts``, ``next_try``, ``owner``,
        ``lease_until``, ``last_try``, ``last_error``, ``created``, ``done``,
        ``stale_since``."""
        ...

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"outbox": {state: n}, "incoming": {state: n}}``, states with no row left out."""
        ...

    # -- incoming ---------------------------------------------------------------------------------

    def incoming_state(self, key: str) -> tuple[str, int, float | None] | None:
        """``(state, attempts, next_try)`` of the incoming message ``key``, or None if unknown."""
        ...

    def defer_incoming(self, key: str, delay: float) -> None:
        """Set the record's ``next_try`` to now + ``delay`` (nothing when ``key`` is unknown)."""
        ...

    def record_incoming(
        self,
        key: str,
        state: str,
        *,
        message_id: str | None = None,
        service: str | None = None,
        response_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
        raw: bytes | None = None,
    ) -> int:
        """Create or update the record ``key`` in one transaction and return its attempts.

        New: ``first_seen`` = ``updated`` = now, attempts 1 with ``count_attempt`` else 0.
        Known: the state replaced, attempts + 1 with ``count_attempt``, ``updated`` = now;
        ``message_id`` stays the first one; ``service``, ``response_id``, ``last_error`` (first
        1000 characters of ``error``) and ``raw`` are replaced unless given as None;
        ``next_try`` is left as it is.
        """
        ...

    def incoming(self, state: str | None = None) -> list[dict[str, Any]]:
        """The incoming records (every state, or one), by ``first_seen``: dicts with ``key``,
        ``message_id``, ``service``, ``response_id``, ``state``, ``attempts``, ``next_try``,
        ``last_error``, ``first_seen``, ``updated``, ``raw`` (bytes or None)."""
        ...

    def purge_incoming(self, older_than: float) -> int:
        """Delete the ``delivered``, ``dropped`` and ``rejected`` records last updated more than
        ``older_than`` seconds ago; return how many.  Other states stay."""
        ...

    # -- locks ------------------------------------------------------------------------------------

    def acquire_lock(self, name: str, lease: float) -> bool:
        """Take (or renew) the lock ``name`` until now + ``lease``; False (nothing changed) while
        another owner holds it unexpired."""
        ...

    def release_lock(self, name: str) -> None:
        """Give the lock ``name`` up, if this object holds it."""
        ...

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release connections; a closed queue reconnects when it is used again."""
        ...
