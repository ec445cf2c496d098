"""The backend kinds' layout: one package per kind, holding its interface, the type of the
factory a plugin registers and (but for data-only kinds) its shared conformance suite."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import plugit_core.kinds
from plugit_core.backends import KINDS

PACKAGES = sorted(m.name for m in pkgutil.iter_modules(plugit_core.kinds.__path__) if m.ispkg)
WITHOUT_SUITE = {"theme": "a theme is data", "mail": "its queue (mailqueue) has the suite"}
WITHOUT_INTERFACE = {"login"}  # the login pages' settings: no interface of its own yet


def test_every_registered_kind_has_its_package() -> None:
    assert set(KINDS) - WITHOUT_INTERFACE <= set(PACKAGES)


@pytest.mark.parametrize("kind", PACKAGES)
def test_a_kind_exports_what_it_declares(kind: str) -> None:
    module = importlib.import_module(f"plugit_core.kinds.{kind}")
    assert module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing
    if kind in KINDS:  # registered: a factory type for register()
        assert any(name.endswith("Factory") for name in module.__all__)


@pytest.mark.parametrize("kind", [kind for kind in PACKAGES if kind not in WITHOUT_SUITE])
def test_a_kind_has_its_conformance_suite(kind: str) -> None:
    suite = importlib.import_module(f"plugit_core.kinds.{kind}.testing")
    classes = [
        name
        for name in suite.__all__
        if name.endswith("Conformance") and inspect.isclass(getattr(suite, name))
    ]
    assert len(classes) == 1
    tests = [name for name in dir(getattr(suite, classes[0])) if name.startswith("test_")]
    assert tests
