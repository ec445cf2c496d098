"""The error every ``plugit`` command raises for a user's mistake."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""
