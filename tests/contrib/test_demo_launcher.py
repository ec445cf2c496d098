"""``plugit demo`` checks what it needs before starting, and says when its service stops."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from typing import Any

import pytest

from plugit_contrib import demo
from plugit_core.cli import CommandError, ServeOptions, main
from plugit_core.testing import free_port


def test_a_service_that_stops_at_start_up_is_one_line_at_once() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"stopped at start-up \(exit status 3\)"):
        demo._wait_for_service(process, free_port())
    assert time.monotonic() - started < 30  # not the whole minute it waits for a slow start


def test_a_service_that_dies_later_is_reported(capsys: Any) -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    demo._watch(process)
    assert "the voting service stopped (exit status 5)" in capsys.readouterr().err


def test_a_missing_server_is_named_before_anything_starts(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec

    def without_granian(name: str, *args: Any) -> Any:  # granian uninstalled, as far as we know
        return None if name == "granian" else real(name, *args)

    ServeOptions(server="granian").check()  # installed here: no complaint
    monkeypatch.setattr(importlib.util, "find_spec", without_granian)
    assert main(["demo", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "--server: granian is not installed: pip install 'plugit-wsgi[server]'" in err
    assert err.count("\n") == 1
