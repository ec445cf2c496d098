"""The watcher of whole-reply deadlines (plugit_core/proxy/deadlines.py), alone: connections on
loopback, shut down at their deadline unless their watch was cancelled first."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator

import pytest

from plugit_core.proxy.deadlines import Deadlines
from plugit_core.testing import wait_until

HANG_GUARD = 10.0  # seconds: only there to catch a hang


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """``pairs()``: a connected pair of sockets, (the proxy's side, the service's side), the
    proxy's side reading with a hang guard; every pair closed after the test."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        ours.settimeout(HANG_GUARD)
        made.extend((ours, theirs))
        return ours, theirs

    yield make
    for sock in made:
        sock.close()


def test_a_read_waiting_past_the_deadline_ends_and_the_watch_says_so(pairs) -> None:
    ours, _theirs = pairs()
    deadlines = Deadlines(tick=0.01)
    watch = deadlines.watch(ours, 0.2)
    assert ours.recv(10) == b""  # woken by the shutdown, not by the service
    assert watch.fired
    assert watch.cancel() is False  # too late: the connection is spent


def test_a_cancelled_watch_leaves_its_connection_alone(pairs) -> None:
    ours, theirs = pairs()
    deadlines = Deadlines(tick=0.01)
    watch = deadlines.watch(ours, 0.05)
    assert watch.cancel() is True
    later = deadlines.watch(pairs()[0], 0.1)  # fires after the cancelled one's time has passed
    wait_until(lambda: later.fired, timeout=HANG_GUARD)
    assert not watch.fired
    theirs.sendall(b"still here")
    assert ours.recv(20) == b"still here"


def test_a_connection_kept_after_its_reply_is_not_cut_by_the_old_deadline(pairs) -> None:
    ours, theirs = pairs()
    deadlines = Deadlines(tick=0.01)
    first = deadlines.watch(ours, 0.05)
    assert first.cancel()  # its reply came: the connection goes back to the pool
    second = deadlines.watch(ours, 60)  # the next request on the same connection
    passed = deadlines.watch(pairs()[0], 0.1)  # fired: the watcher is past the first deadline
    wait_until(lambda: passed.fired, timeout=HANG_GUARD)
    theirs.sendall(b"next reply")
    assert ours.recv(20) == b"next reply"
    assert not first.fired and second.cancel()


def test_a_shorter_deadline_watched_later_fires_first(pairs) -> None:
    deadlines = Deadlines(tick=0.01)
    slow = deadlines.watch(pairs()[0], 60)  # the watcher now waits for this one...
    quick = deadlines.watch(pairs()[0], 0.1)  # ...and is woken for this one
    wait_until(lambda: quick.fired, timeout=HANG_GUARD)
    assert not slow.fired
    assert slow.cancel()


def test_a_closed_connection_at_its_deadline_is_no_error(pairs) -> None:
    ours, theirs = pairs()
    deadlines = Deadlines(tick=0.01)
    watch = deadlines.watch(ours, 0.05)
    ours.close()
    theirs.close()
    wait_until(lambda: watch.fired, timeout=HANG_GUARD)
    after = deadlines.watch(pairs()[0], 0.05)  # the watcher still runs
    wait_until(lambda: after.fired, timeout=HANG_GUARD)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_a_watcher_of_its_own(pairs) -> None:
    ours, _theirs = pairs()
    deadlines = Deadlines(tick=0.01)
    deadlines.watch(ours, 60)  # the parent's watcher thread runs; a child has none of it
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of a fork with threads: that is the case
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its own connection, cut at its deadline by its own watcher
        status = 1
        try:
            mine, _peer = socket.socketpair()
            mine.settimeout(HANG_GUARD)
            watch = deadlines.watch(mine, 0.1)
            status = 0 if mine.recv(1) == b"" and watch.fired else 1
        finally:
            os.write(write_end, bytes([status]))
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as result:
            assert result.read(1) == b"\x00"
    finally:
        os.waitpid(pid, 0)
