"""The documentation site builds in strict mode: no broken link, anchor or API reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    if not os.environ.get("CI"):
        pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reference = (site / "reference" / "proxy" / "index.html").read_text(encoding="utf-8")
    assert "PlugItMiddleware" in reference  # the API reference is built from the docstrings
    assert ":class:`" not in reference  # Sphinx roles are rendered, not shown raw
    assert (site / "protocol" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """Strict mode is on: the build refuses a page linking to a page that does not exist."""
    if not os.environ.get("CI"):
        pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [nowhere](nowhere.md).\n", encoding="utf-8")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:")[0]
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}").replace(
        "docs/_ext/", f"{ROOT}/docs/_ext/"
    )
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "nowhere.md" in done.stderr
