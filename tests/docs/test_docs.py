"""The documentation keeps up with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugit_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_section(hook):
    assert re.search(rf"^## `{hook}`$", HOOKS_DOC, re.MULTILINE), (
        f"docs/hooks.md has no section for {hook}"
    )


def test_no_section_for_a_hook_that_does_not_exist():
    documented = set(re.findall(r"^## `(plugit_\w+)`$", HOOKS_DOC, re.MULTILINE))
    assert documented == set(hookspecs.HOOK_NAMES)


def test_readme_links_point_to_existing_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target
