"""Packaging for PlugIt."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent

EXTRAS = {
    # The production HTTP server of `plugit service`, `plugit proxy` and `plugit demo` (granian:
    # HTTP/1.1 and HTTP/2, connections held in Rust); gunicorn for `--server gunicorn`.
    "server": ["granian>=2.8,<3"],
    "gunicorn": ["gunicorn>=22"],
    # A C HTTP parser for the proxy's calls to services (http_client = "auto" takes it).
    "speedups": ["httptools>=0.6"],
    "redis": ["redis>=5"],
    "postgres": ["psycopg[binary]>=3.1", "psycopg_pool>=3.2"],
    "ldap": ["ldap3>=2.9"],
    "oidc": ["joserfc>=1.6"],  # ID token checks (authlib is a core dependency)
    "flask": ["flask>=2.3"],
    "django": ["django>=4.2"],
    # The legacy theme (theme = "legacy"): Bootstrap 3 and jQuery for original PlugIt services,
    # served from these packages.  XStatic-Bootstrap 3.3.7.1 is a source package that needs
    # setuptools < 81 to build: install with `--build-constraint build-constraints.txt` (kept
    # out of "all" for that reason).
    "legacy": [
        "XStatic-Bootstrap==3.3.7.1",
        "XStatic-jQuery>=3.5,<4",
        "XStatic-JQuery-Migrate>=3.3,<4",
    ],
    "test": [
        "pytest>=8",
        "selenium>=4.20",
        "ruff>=0.6",
        "flask>=2.3",
        "django>=4.2",
        "gunicorn>=22",
        "granian>=2.8,<3",
        "aiosmtpd>=1.4",
        # the documentation site, built in strict mode by tests/docs/test_site.py
        "mkdocs>=1.6,<2",
        "mkdocs-material>=9.5,<10",
        "mkdocstrings-python>=1.10",
        # make lint: the layers and the absence of import cycles (pyproject.toml), the types
        "import-linter>=2.1",
        "mypy>=1.10",
        "types-Authlib",
        "types-gunicorn",
        "types-ldap3",
    ],
    "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings-python>=1.10"],
}
EXTRAS["all"] = sorted(
    {req for name, reqs in EXTRAS.items() if name not in {"test", "legacy", "docs"} for req in reqs}
)

setup(
    # The name `plugit` on the package index is the original PlugIt (2018): this project is
    # `plugit-wsgi`; its import packages are plugit_core, plugit_backends and plugit_contrib.
    name="plugit-wsgi",
    version="0.1.0",
    description="Put many independent web services behind one site: the PlugIt protocol on WSGI.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="the PlugIt developers",
    license_expression="BSD-3-Clause",
    license_files=["LICENSE"],
    keywords=["plugit", "wsgi", "proxy", "portal", "microservices", "sso"],
    # No project URLs: the project has no public home yet.
    python_requires=">=3.10",
    # Namespace discovery lists the data folders (templates, static files) too, so setuptools
    # knows they are meant to be shipped (it warns about each one otherwise).
    packages=find_namespace_packages(
        include=["plugit_core*", "plugit_backends*", "plugit_contrib*"],
        exclude=["*.__pycache__"],
    ),
    include_package_data=True,
    package_data={
        "plugit_core": ["py.typed"],
        "plugit_backends": ["*/templates/**/*", "*/service_templates/**/*", "*/static/**/*"],
        "plugit_contrib": ["examples/*/templates/**/*", "examples/*/media/**/*"],
    },
    install_requires=[
        "pluggy>=1.5",
        "werkzeug>=3.0",
        "jinja2>=3.1.6",  # every published sandbox advisory fixed
        "markupsafe>=2.1",
        "urllib3>=2.0",  # the proxy's pooled calls to services (imported directly)
        "idna>=3.4",  # redirect targets' host names, read as browsers read them
        "nh3>=0.2.14",  # the HTML sanitiser of sandboxed services (ammonia)
        "requests>=2.31",
        "cachetools>=5.3",
        "authlib>=1.3",
        "itsdangerous>=2.1",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["plugit = plugit_core.cli:main"],
        # plugit_contrib is a plugin of the core like any installed one: `plugit demo`
        "plugit": ["plugit_contrib = plugit_contrib.commands"],
    },
    # The license is the license_expression above (PEP 639): a "License ::" classifier beside it
    # is refused by setuptools.
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Web Environment",
        "Framework :: Django",
        "Framework :: Flask",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP :: Dynamic Content",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Application",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Typing :: Typed",
    ],
)
