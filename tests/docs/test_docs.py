"""The documentation keeps up with the code."""

from __future__ import annotations

import ast
import inspect
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


def documented_parameters(doc: str, hook: str) -> list[str]:
    """The parameter names of the signature that opens the hook's section: its first python
    block, ``@hookimpl`` then ``def <hook>(...)``."""
    section = re.search(rf"^## `{hook}`$(.*?)(?=^## |\Z)", doc, re.MULTILINE | re.DOTALL)
    assert section, f"docs/hooks.md has no section for {hook}"
    block = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    assert block, f"the section of {hook} shows no signature"
    (function,) = [node for node in ast.parse(block[1]).body if isinstance(node, ast.FunctionDef)][
        :1
    ] or [None]
    assert function is not None and function.name == hook, (
        f"the first block of the section of {hook} is not its signature"
    )
    decorators = [ast.unparse(d) for d in function.decorator_list]
    assert len(decorators) == 1 and re.match(r"hookimpl\b", decorators[0]), hook
    return [a.arg for a in (*function.args.posonlyargs, *function.args.args)]


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_documented_signature_is_the_hookspecs(hook):
    spec = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert documented_parameters(HOOKS_DOC, hook) == spec, (
        f"docs/hooks.md documents {hook} with other parameters than hookspecs.py"
    )


def test_the_signature_check_sees_a_wrong_parameter():
    wrong = HOOKS_DOC.replace(
        "def plugit_response(page: PageRequest, response: Response)",
        "def plugit_response(page: PageRequest, reply: Response)",
    )
    assert wrong != HOOKS_DOC
    assert documented_parameters(wrong, "plugit_response") == ["page", "reply"]
    assert documented_parameters(HOOKS_DOC, "plugit_response") == ["page", "response"]


def test_the_documented_start_up_order_is_the_proxys():
    """docs/hooks.md says in which order the start-up hooks run; a plugin records it."""
    from plugit_core.hookspecs import hookimpl
    from plugit_core.proxy.app import ProxyApp

    calls: list[str] = []

    class Recorder:
        @hookimpl
        def plugit_register_backends(self, register):
            calls.append("plugit_register_backends")

        @hookimpl
        def plugit_session_backend(self, sessions, proxy):
            calls.append("plugit_session_backend")

        @hookimpl
        def plugit_site_links(self, proxy):
            calls.append("plugit_site_links")

        @hookimpl
        def plugit_register_api_endpoints(self, register, proxy):
            calls.append("plugit_register_api_endpoints")

        @hookimpl
        def plugit_extra_routes(self, proxy):
            calls.append("plugit_extra_routes")

        @hookimpl
        def plugit_startup(self, proxy):
            calls.append("plugit_startup")

        @hookimpl
        def plugit_shutdown(self, proxy):
            calls.append("plugit_shutdown")

    proxy = ProxyApp(
        {"dev_mode": True, "services": []}, plugins=[Recorder()], load_entry_points=False
    )
    proxy.close()
    order = re.search(r"^At start-up \(.*?^At the end .*?(?=\n\n)", HOOKS_DOC, re.M | re.S)
    assert order, "docs/hooks.md does not say the start-up order"
    documented = [name for name in re.findall(r"\b(plugit_\w+)", order[0]) if name in calls]
    assert documented == calls


def test_readme_links_point_to_existing_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target
