"""The attacked site's proxy as it runs in production: ``plugit proxy`` (its default server) in
a process of its own, for the attacks that need a real server (request smuggling) or that may take a
process down with them (bombs: the process is limited to 4 GB of memory, and started again after
a bomb that did not end).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from plugit_core.testing import free_port, wait_for_port

PLUGIT = Path(sys.executable).with_name("plugit")


def toml(data: dict[str, Any]) -> str:
    """The configuration as TOML (strings, numbers, booleans, tables and arrays of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, table in tables:
        lines.append(f"[{key}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    for key, items in arrays:
        for item in items:
            lines.append(f"[[{key}]]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


class ServedProxy:
    """``plugit proxy --config <file>`` on a free loopback port."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        self.path = directory / "plugit.toml"
        self.path.write_text(toml(config))
        self.log_path = directory / "proxy.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.logs: list[str] = []  # the logs of the processes stopped so far

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                "prlimit",
                "--as=4000000000",
                "--",
                str(PLUGIT),
                "proxy",
                "--config",
                str(self.path),
                "--port",
                str(self.port),
                "--threads",
                "8",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise AssertionError("the proxy did not start:\n" + "\n".join(self.logs[-1:])) from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        self._log.close()
        self.logs.append(self.log_path.read_text("utf-8", "replace"))

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything the proxy logged, in this run and the ones before."""
        current = self.log_path.read_text("utf-8", "replace") if self.process else ""
        return "\n".join([*self.logs, current])
