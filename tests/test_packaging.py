"""The distribution: built from a copy of the sources, without a warning, with its metadata, its
license, its data files and every third-party package the code imports declared."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("plugit_core", "plugit_backends", "plugit_contrib")
NAME = "plugit-wsgi"

pytestmark = pytest.mark.slow  # a real build: about ten seconds


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built by pip from a copy of the sources (the working tree stays clean), and
    what the build printed."""
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v", "-w", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel, result.stdout + result.stderr


@pytest.fixture(scope="module")
def metadata(build: tuple[Path, str]) -> email.message.Message:
    wheel, _ = build
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_build_prints_no_warning(build: tuple[Path, str]) -> None:
    _, output = build
    # pip's own notes about the package indexes it was configured with are not the build's.
    warnings = [
        line.strip()
        for line in output.splitlines()
        if re.search(r"warning", line, re.IGNORECASE) and "Location '" not in line
    ]
    assert warnings == []


def test_name_version_license(build: tuple[Path, str], metadata: email.message.Message) -> None:
    wheel, _ = build
    assert metadata["Name"] == NAME
    assert wheel.name.startswith("plugit_wsgi-")
    assert metadata["Version"] == importlib.metadata.version(NAME)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata["License-File"] == "LICENSE"
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Author"] == "the PlugIt developers"
    with zipfile.ZipFile(wheel) as archive:
        (license_name,) = [n for n in archive.namelist() if n.endswith("/licenses/LICENSE")]
        text = archive.read(license_name).decode()
    assert text.startswith("BSD 3-Clause License") and "the PlugIt developers" in text


def test_classifiers(metadata: email.message.Message) -> None:
    classifiers = set(metadata.get_all("Classifier"))
    for expected in (
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Framework :: Django",
        "Framework :: Flask",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Typing :: Typed",
    ):
        assert expected in classifiers
    # PEP 639: the license is the expression, never a classifier beside it.
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_the_console_script_and_the_data_files(build: tuple[Path, str]) -> None:
    wheel, _ = build
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "plugit = plugit_core.cli:main" in archive.read(entry_points).decode()
    for path in (
        "plugit_core/py.typed",
        "plugit_backends/theme_bootstrap/templates/plugit/layout.html",
        "plugit_backends/theme_bootstrap/service_templates/plugit/base.html",
        "plugit_backends/theme_bootstrap/static/bootstrap/bootstrap.min.css",
        "plugit_contrib/examples/voting/templates/home.html",
        "plugit_contrib/examples/voting/media/voting.css",
    ):
        assert path in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the packages' code that are not the standard library's nor
    the project's own -> the files importing them."""
    found: dict[str, set[str]] = {}
    own = set(PACKAGES)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in own or top == "__future__":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared(metadata: email.message.Message) -> None:
    declared = {
        _normalise(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])
        for requirement in metadata.get_all("Requires-Dist")
    }
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in sorted(_third_party_imports().items()):
        providers = {_normalise(d) for d in distributions.get(module, [module])}
        if not providers & declared:
            missing[module] = sorted(files)
    assert missing == {}, f"imported but not declared in setup.py: {missing}"
    for core in ("urllib3", "markupsafe", "itsdangerous", "werkzeug", "jinja2", "idna"):
        assert core in declared


def test_tomli_is_declared_for_older_pythons(metadata: email.message.Message) -> None:
    requirements = metadata.get_all("Requires-Dist")
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in requirements)
