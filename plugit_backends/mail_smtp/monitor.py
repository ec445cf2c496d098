"""The SMTP server's state, as ``/_plugit/ready`` and ``/_plugit/metrics`` show it.

Two sources, the latest one wins:

* the sender's own connections: each time it connects to the SMTP server (to send mails), it
  reports whether the server answered (greeting, EHLO, STARTTLS and login as configured);
* a check, run in a background thread when a reader asks for the state and nothing was learnt
  of the server for ``smtp_check_interval`` seconds: the same connection as the sender's (so a
  wrong password shows), then ``QUIT``; it never sends a mail.  Its timeout is the smaller of
  the SMTP ``timeout`` and :data:`CHECK_TIMEOUT`.

Reading the state never waits for a check: a reader gets what is known now (``unknown`` before
anything is), and a check that hangs holds its own thread only (one at a time).
"""

from __future__ import annotations

import datetime
import logging
import smtplib
import threading
import time
from collections.abc import Callable
from typing import Any

from plugit_core.metrics import GAUGE_MIN, SeriesKey

__all__ = ["CHECK_TIMEOUT", "DOWN", "UNKNOWN", "UP", "SmtpMonitor"]

log = logging.getLogger("plugit.mail")

CHECK_TIMEOUT = 2.0  # seconds at most for one check's connection
UP, DOWN, UNKNOWN = "up", "down", "unknown"


class SmtpMonitor:
    """What is known of one SMTP server; thread-safe.

    ``connect(timeout)`` opens a ready connection (raising when the server cannot be used);
    ``interval`` is the age after which a reader's request starts a check (0: never check, the
    state comes from the sender alone); ``required`` says whether the proxy is not ready while
    the server is down (or not known yet).
    """

    def __init__(
        self,
        server: str,
        connect: Callable[[float], smtplib.SMTP],
        *,
        interval: float,
        timeout: float = CHECK_TIMEOUT,
        required: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.interval = interval
        self.timeout = min(timeout, CHECK_TIMEOUT)
        self.required = required
        self._connect = connect
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._state = UNKNOWN
        self._error = ""
        self._since: float | None = None  # wall-clock time the current state began
        self._learnt = -float("inf")  # monotonic time of the last observation
        self._checking = False
        self.checks = 0  # checks started (tests, logs)

    @property
    def state(self) -> str:
        return self._state

    def observe(self, error: str | None) -> None:
        """Record an answer of the server (``error`` None) or its failure, with the reason."""
        state = UP if error is None else DOWN
        with self._lock:
            self._learnt = self._clock()
            changed = state != self._state
            if changed:
                self._since = self._wall()
                previous, self._state = self._state, state
            self._error = error or ""
        if not changed:
            return
        if state == DOWN:
            log.warning("mail: the SMTP server %s is unavailable: %s", self.server, error)
        elif previous == DOWN:
            log.warning("mail: the SMTP server %s answers again", self.server)

    def refresh(self) -> bool:
        """Start a check in the background when the state is older than ``interval`` and none
        is running; True when one was started.  Never waits for it."""
        if self.interval <= 0:
            return False
        with self._lock:
            if self._checking or self._clock() - self._learnt < self.interval:
                return False
            self._checking = True
            self.checks += 1
        thread = threading.Thread(target=self._check, name="plugit-smtp-check", daemon=True)
        thread.start()
        return True

    def _check(self) -> None:
        try:
            try:
                conn = self._connect(self.timeout)
            except Exception as exc:  # refused, timed out, bad TLS, wrong login, nonsense
                self.observe(why(exc))
                return
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                pass  # it answered; how it hung up does not matter
            finally:
                conn.close()
            self.observe(None)
        finally:
            with self._lock:
                self._checking = False

    def status(self) -> dict[str, Any]:
        """What ``/_plugit/ready`` shows (starting a check when the state is stale): ``ready``
        (up; a required server not known yet is not ready), ``required``, ``state`` (``up``,
        ``down`` or ``unknown``), ``server``, ``since`` (UTC, when the state began),
        ``checked_ago`` (seconds since the server was last heard of), ``error`` while down."""
        self.refresh()
        with self._lock:
            state, error, since, learnt = self._state, self._error, self._since, self._learnt
            now = self._clock()
        body: dict[str, Any] = {
            "ready": state == UP or (state == UNKNOWN and not self.required),
            "required": self.required,
            "state": state,
            "server": self.server,
        }
        if since is not None:
            stamp = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
            body["since"] = stamp.isoformat(timespec="seconds")
            body["checked_ago"] = round(max(0.0, now - learnt), 3)
        if state == DOWN:
            body["error"] = error
        return body

    def gauges(self) -> dict[SeriesKey, float]:
        """The metrics series of this process: ``smtp_up`` 1 (up) or 0 (down); none while
        unknown.  The kind is the board's smallest-of-live-processes gauge."""
        if self._state == UNKNOWN:
            return {}
        return {(GAUGE_MIN, "smtp_up", self.server): 1.0 if self._state == UP else 0.0}


def why(exc: BaseException) -> str:
    """A short reason for an SMTP failure (the server's answer when it gave one)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        return f"{exc.smtp_code} {text}"
    return f"{type(exc).__name__}: {exc}"
