"""Fixtures shared by every test directory: an HTTP client and real loopback servers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

# Before anything imports them: failed checks of the shared suites show their values.
pytest.register_assert_rewrite("plugit_core.conformance", "plugit_core.testing")


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session, closed after the test (no unclosed-socket warnings)."""
    with requests.Session() as session:
        yield session


@pytest.fixture
def served() -> Iterator[Callable[..., str]]:
    """``served(app, host="127.0.0.1")`` serves a WSGI app over HTTP until the test ends."""
    from plugit_core.testing import serve

    with contextlib.ExitStack() as stack:

        def start(app: Callable[..., Any], host: str = "127.0.0.1") -> str:
            return stack.enter_context(serve(app, host=host))

        yield start
