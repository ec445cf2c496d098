"""Packaging for PlugIt."""

from pathlib import Path

from setuptools import find_packages, setup

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
    ],
}
EXTRAS["all"] = sorted(
    {req for name, reqs in EXTRAS.items() if name not in {"test", "legacy"} for req in reqs}
)

setup(
    name="plugit",
    version="0.1.0",
    description="Put many independent web services behind one site: the PlugIt protocol on WSGI.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["plugit_core*", "plugit_backends*", "plugit_contrib*"]),
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
        "nh3>=0.2.14",  # the HTML sanitiser of sandboxed services (ammonia)
        "requests>=2.31",
        "cachetools>=5.3",
        "authlib>=1.3",
        "itsdangerous>=2.1",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["plugit = plugit_core.cli:main"]},
    classifiers=[
        "Framework :: Flask",
        "Framework :: Django",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Typing :: Typed",
    ],
)
