"""Whole-reply deadlines for the exchanges with services.

A socket timeout bounds each read, not a reply: a service sending its reply a byte at a time,
each byte within the timeout, would hold one of the proxy's threads as long as it liked, and
never count as a timeout for its circuit breaker.  So every exchange is also watched by
:data:`DEADLINES`, one thread per process, which shuts down the connection of an exchange still
waiting for its reply past the service's ``timeout``: the read under way ends at once and the
transport reports a ``timeout`` (504).  A streamed body (a file on its way to a browser, paced
by the browser) is no longer watched once its head has come; each of its reads keeps the socket
timeout.

The watcher wakes every ``tick`` seconds while exchanges are watched, and sleeps otherwise, so a
reply is cut at most a tick after its deadline; watching costs an exchange a push on a heap.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time

__all__ = ["DEADLINES", "Deadlines", "Watch"]


class Watch:
    """One exchange's deadline.  ``fired``: its connection was shut down at the deadline."""

    __slots__ = ("_deadlines", "_sock", "deadline", "fired")

    def __init__(self, deadlines: Deadlines, sock: socket.socket, deadline: float) -> None:
        self._deadlines = deadlines
        self._sock: socket.socket | None = sock
        self.deadline = deadline
        self.fired = False

    def cancel(self) -> bool:
        """Stop watching; True when the deadline had not fired (the connection is intact)."""
        with self._deadlines.lock:
            self._sock = None
            return not self.fired

    def _fire(self) -> None:
        """At the deadline (under the lock): shut the connection down, unless cancelled."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.fired = True
        try:
            # socket.socket's own shutdown, also for a TLS socket: the read under way in another
            # thread ends, and the TLS object it uses is left alone
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # already closed: nothing waits on it
            pass


class Deadlines:
    """The watcher: :meth:`watch` a connection for ``seconds``, cancel the :class:`Watch` when
    the reply is in."""

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self._start()
        # a child process has none of its parent's threads, and perhaps its lock held
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.lock = threading.Lock()
        self._pending = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float) -> Watch:
        watch = Watch(self, sock, time.monotonic() + seconds)
        with self.lock:
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None:  # started in the process that serves (after any fork)
                self._thread = threading.Thread(
                    target=self._run, name="plugit-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is watch:  # earlier than the one the watcher waits for
                self._pending.notify()
        return watch

    def _run(self) -> None:
        with self.lock:
            while True:
                while not self._heap:
                    self._pending.wait()
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2]._fire()
                if self._heap:
                    # a cancelled watch stays until its deadline: nothing to do for it then
                    self._pending.wait(max(self.tick, self._heap[0][0] - now))


#: The process's watcher, shared by every transport.
DEADLINES = Deadlines()
