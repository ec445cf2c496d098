"""The proxy's metrics, one answer for all the worker processes of a server.

A :class:`MetricsBoard` holds the series of one proxy (``/_plugit/metrics``): the service and
store counters and histograms, and a few gauges.  Without a directory it keeps them in memory:
a scrape sees this process alone.  With a directory (``PLUGIT_METRICS_DIR``, which
``plugit proxy`` makes before its workers start), every process writes its series to a file of
its own in that directory, as they change, and a scrape, whichever process answers it, reads and
merges every file there:

* **counters and histograms** (calls, errors, latency buckets and sums) are written through on
  every change (a few microseconds: an ``mmap`` write) and summed over every file, those of
  processes that ended included: a worker that is restarted or killed does not take its counts
  with it, and two scrapes after the last request give the same numbers;
* **gauges** (calls in flight, a circuit's state, a store's state) are per process: each process
  writes them when it answers a scrape and once a second, and the scrape merges those of live
  processes only (in flight: the sum; a circuit: the worst state; a store: down if any process
  finds it down).

A process is alive while it holds the lock (``flock``) it took on its file when it made it; the
lock goes with the process, so a killed worker's file reads as ended at once, and a process id
used again by another program is never mistaken for it.  The directory must be local (``flock``
on a network file system is not reliable) and belong to one server: files left by an earlier
run are removed by ``plugit proxy`` when it starts (:func:`clear_ended`).

A file is an 8-byte header (the bytes in use) followed by entries: a 4-byte key length, the key
(JSON: ``[kind, name, labels...]``), padding to 8 bytes, the value (an 8-byte float).  Entries
are only ever appended, values overwritten in place; the header is written after the entry, so
a reader never sees half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import mmap
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "MetricsBoard",
    "SeriesKey",
    "clear_ended",
    "merge",
    "read_file",
    "shared_directory",
]

ENV_VAR = "PLUGIT_METRICS_DIR"
PREFIX = "proxy-"
SUFFIX = ".metrics"
PUBLISH_INTERVAL = 1.0
_HEADER = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
_VALUE = struct.Struct("<d")
_INITIAL_SIZE = 64 * 1024
_SEQUENCE = itertools.count()

# A series: (kind, name, *labels).  The kind says how the files are merged.
SeriesKey = tuple[str, ...]
COUNTER = "c"  # summed over every file, ended processes included
GAUGE_SUM = "g+"  # summed over live processes
GAUGE_MAX = "gmax"  # the largest value of a live process
GAUGE_MIN = "gmin"  # the smallest value of a live process
KINDS = (COUNTER, GAUGE_SUM, GAUGE_MAX, GAUGE_MIN)

log = logging.getLogger("plugit.metrics")


def _padded(length: int) -> int:
    return (length + 7) & ~7


class _File:
    """This process's file of series: created, locked, then appended to or written in place."""

    def __init__(self, directory: Path) -> None:
        name = f"{PREFIX}{os.getpid()}-{next(_SEQUENCE)}-{os.urandom(4).hex()}"
        temporary = directory / f".{name}.tmp"
        self.path = directory / f"{name}{SUFFIX}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Locked before it has its name: no reader ever sees it unlocked while we live.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, _INITIAL_SIZE)
            self._mm = mmap.mmap(fd, _INITIAL_SIZE)
            _HEADER.pack_into(self._mm, 0, _HEADER.size)
            os.rename(temporary, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fd = fd
        self._used = _HEADER.size
        self._offsets: dict[SeriesKey, int] = {}

    def set(self, key: SeriesKey, value: float) -> None:
        """Caller holds the board's lock."""
        offset = self._offsets.get(key)
        if offset is None:
            offset = self._append(key)
        _VALUE.pack_into(self._mm, offset, value)

    def _append(self, key: SeriesKey) -> int:
        encoded = json.dumps(key, separators=(",", ":")).encode()
        start = self._used
        offset = _padded(start + _LENGTH.size + len(encoded))
        end = offset + _VALUE.size
        if end > len(self._mm):
            size = len(self._mm)
            while size < end:
                size *= 2
            self._mm.resize(size)
        _LENGTH.pack_into(self._mm, start, len(encoded))
        self._mm[start + _LENGTH.size : start + _LENGTH.size + len(encoded)] = encoded
        _VALUE.pack_into(self._mm, offset, 0.0)
        self._used = end
        _HEADER.pack_into(self._mm, 0, end)  # last: the entry is complete before it is counted
        self._offsets[key] = offset
        return offset

    def close(self) -> None:
        """Unlock (this process's counts stay in the directory as those of an ended one)."""
        with contextlib.suppress(ValueError, OSError):
            self._mm.flush()
            self._mm.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def read_file(path: str | os.PathLike[str]) -> tuple[dict[SeriesKey, float], bool]:
    """The series of one process's file and whether that process is alive."""
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            alive = True
        else:
            alive = False
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        data = handle.read()
    return _parse(data), alive


def _parse(data: bytes) -> dict[SeriesKey, float]:
    series: dict[SeriesKey, float] = {}
    if len(data) < _HEADER.size:
        return series
    used = min(_HEADER.unpack_from(data, 0)[0], len(data))
    position = _HEADER.size
    while position + _LENGTH.size <= used:
        (length,) = _LENGTH.unpack_from(data, position)
        key_end = position + _LENGTH.size + length
        offset = _padded(key_end)
        if offset + _VALUE.size > used:
            break
        try:
            key = json.loads(data[position + _LENGTH.size : key_end])
        except ValueError:  # not one of ours: stop at what can be trusted
            break
        (value,) = _VALUE.unpack_from(data, offset)
        position = offset + _VALUE.size
        if (
            isinstance(key, list)
            and len(key) >= 3
            and key[0] in KINDS
            and all(isinstance(part, str) for part in key)
            and math.isfinite(value)
        ):
            series[tuple(key)] = value
    return series


def merge(files: Iterable[tuple[dict[SeriesKey, float], bool]]) -> dict[SeriesKey, float]:
    """One view of several processes' series (see the module's documentation)."""
    merged: dict[SeriesKey, float] = {}
    for series, alive in files:
        for key, value in series.items():
            kind = key[0]
            if kind == COUNTER:
                merged[key] = merged.get(key, 0.0) + value
            elif not alive:
                continue
            elif key not in merged:
                merged[key] = value
            elif kind == GAUGE_SUM:
                merged[key] += value
            elif kind == GAUGE_MAX:
                merged[key] = max(merged[key], value)
            elif kind == GAUGE_MIN:
                merged[key] = min(merged[key], value)
    return merged


def _files(directory: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(PREFIX) and entry.name.endswith(SUFFIX):
            yield Path(entry.path)


def clear_ended(directory: str | os.PathLike[str]) -> int:
    """Remove the files of processes that ended (an earlier run's): the counters of a server
    start at zero, as Prometheus expects of a restarted target.  Returns how many were removed."""
    removed = 0
    for path in _files(Path(directory)):
        with contextlib.suppress(OSError):
            _, alive = read_file(path)
            if not alive:
                path.unlink()
                removed += 1
    return removed


class MetricsBoard:
    """The series of one proxy: in memory, or shared through ``directory`` with the other
    worker processes of the same server.  Thread-safe.

    Metric objects write their series with :meth:`set`; ``publish`` (given to :meth:`start`)
    writes the gauges, once a second in the background when the board is shared and before each
    :meth:`collect`.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[SeriesKey, float] = {}
        self.directory = Path(directory) if directory else None
        self._file: _File | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = _File(self.directory)
        self._publish: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls) -> MetricsBoard:
        """Shared through ``PLUGIT_METRICS_DIR`` when it is set, in memory otherwise."""
        return cls(os.environ.get(ENV_VAR) or None)

    @property
    def shared(self) -> bool:
        return self._file is not None

    def set(self, key: SeriesKey, value: float) -> None:
        """Write one series' current value (counters: their total in this process)."""
        with self._lock:
            self._values[key] = value
            if self._file is not None:
                self._file.set(key, value)

    def start(self, publish: Callable[[], None]) -> None:
        """Write the gauges with ``publish`` now, before each collect, and once a second
        while shared (so another process's scrape sees them at most a second old)."""
        self._publish = publish
        publish()
        if self._file is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plugit-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL):
            try:
                if self._publish is not None:
                    self._publish()
            except Exception:  # a gauge that cannot be read this time: the next second
                log.debug("publishing the gauges failed", exc_info=True)

    def collect(self) -> dict[SeriesKey, float]:
        """Every series, merged over the processes sharing the directory."""
        if self._publish is not None:
            self._publish()
        with self._lock:
            own = dict(self._values)
        if self.directory is None or self._file is None:
            return merge([(own, True)])
        files: list[tuple[dict[SeriesKey, float], bool]] = [(own, True)]
        for path in _files(self.directory):
            if path == self._file.path:
                continue
            try:
                files.append(read_file(path))
            except OSError:  # removed meanwhile
                continue
        return merge(files)

    def close(self) -> None:
        """Stop publishing; the counts stay in the directory (as those of an ended process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PUBLISH_INTERVAL * 2)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """The metrics directory of a server whose workers are about to start: ``PLUGIT_METRICS_DIR``
    when it is set (the files earlier runs left there are removed first), else a new private
    temporary directory, named in ``PLUGIT_METRICS_DIR`` for the workers and removed when the
    server stops."""
    given = os.environ.get(ENV_VAR)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        clear_ended(given)
        yield Path(given)
        return
    made = tempfile.mkdtemp(prefix="plugit-metrics-")
    os.environ[ENV_VAR] = made
    try:
        yield Path(made)
    finally:
        os.environ.pop(ENV_VAR, None)
        shutil.rmtree(made, ignore_errors=True)
