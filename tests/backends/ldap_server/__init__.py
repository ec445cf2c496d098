"""A throw-away OpenLDAP ``slapd`` for the tests, with its own configuration and data.

:class:`Slapd` writes a fresh ``cn=config`` (``slapadd -n0`` from ``config.ldif.in``) and a fresh
mdb database (``slapadd -n1`` from ``directory.ldif.in``) into a directory of its own, then runs
``slapd -d 0`` in the foreground on free loopback ports, as the current user.  It never touches
the system's slapd (``/etc/ldap/slapd.d``, port 389)::

    with Slapd(tmp_path) as server:
        print(server.url)        # ldap://127.0.0.1:PORT
        print(server.ldaps_url)  # ldaps://127.0.0.1:PORT, certificate signed by server.ca_file

The directory, suffix ``dc=example,dc=org``: users ``alice`` (group staff), ``bob`` (staff,
admins), ``carol`` (no group), ``dave`` (locked by ppolicy), ``erin`` (``ops``, a
groupOfUniqueNames), ``o(*)\\brien`` (staff), ``twin1``/``twin2`` (same mail); passwords in
:data:`PASSWORDS`.  ``cn=reader,ou=system,dc=example,dc=org`` (password :data:`READER_PASSWORD`)
reads everything but passwords; anonymous clients may only bind.

Run ``python -m ldap_server`` from ``tests/backends`` to get one for manual testing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any

from plugit_core.testing import free_port

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE",
    "PASSWORDS",
    "READER_DN",
    "READER_PASSWORD",
    "Slapd",
    "find_tool",
    "ssha",
]

HERE = Path(__file__).resolve().parent
BASE = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE}"
ADMIN_PASSWORD = "admin-secret-for-tests"
READER_DN = f"cn=reader,ou=system,{BASE}"
READER_PASSWORD = "reader-secret-for-tests"
PASSWORDS = {
    "alice": "alice-pw-1",
    "bob": "bob-pw-2",
    "carol": "carol-pw-3",
    "dave": "dave-pw-4",
    "erin": "erin-pw-5",
    "odd": "odd-pw-6",
    "twin": "twin-pw-7",
}
SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap", "/usr/libexec/openldap")
TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/libexec", "/usr/libexec")


def find_tool(name: str) -> str | None:
    """The path of an OpenLDAP program (``slapd`` lives in ``/usr/sbin``, often not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in TOOL_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ssha(password: str) -> str:
    """An OpenLDAP ``{SSHA}`` hash (salted SHA-1: what ``slappasswd`` makes by default)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: SIGTERM slapd when the test process dies without stopping it (killed, crashed)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _first_dir(candidates: tuple[str, ...], marker: str) -> Path | None:
    for directory in candidates:
        if (Path(directory) / marker).exists():
            return Path(directory)
    return None


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (IP only: ``localhost`` must not match)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PlugIt test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class Slapd:
    """One slapd instance in ``directory`` (created; must not hold an earlier instance).

    ``ppolicy``: run the password-policy overlay (locked accounts cannot bind, and binds say so in
    the response control); without it, ``dave``'s lock is only an attribute.  ``tls``: also listen
    on ``ldaps://`` and accept StartTLS, with a certificate for ``127.0.0.1`` signed by
    ``ca_file``.
    """

    def __init__(self, directory: Path, *, ppolicy: bool = True, tls: bool = True) -> None:
        self.directory = Path(directory)
        self.ppolicy = ppolicy
        self.tls = tls
        self.port = 0
        self.ldaps_port = 0
        self.ca_file: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if not self.tls:
            raise RuntimeError("this instance has no TLS")
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "slapd.log"

    # -- set-up -----------------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        path = find_tool(name)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed (scripts/install-slapd.sh)")
        return path

    def _run(self, *args: str, stdin: str | None = None) -> None:
        result = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _config_ldif(self, run_dir: Path, data_dir: Path) -> str:
        schema_dir = _first_dir(SCHEMA_DIRS, "core.ldif")
        if schema_dir is None:
            raise FileNotFoundError(f"no OpenLDAP schema directory among {SCHEMA_DIRS}")
        module_dir = _first_dir(MODULE_DIRS, "memberof.la") or _first_dir(
            MODULE_DIRS, "memberof.so"
        )
        modules = ["memberof", "ppolicy"]
        if module_dir is not None and any(module_dir.glob("back_mdb.*")):
            modules.insert(0, "back_mdb")
        module_config = "\n".join(
            ([f"olcModulePath: {module_dir}"] if module_dir else [])
            + [f"olcModuleLoad: {name}" for name in modules]
        )
        tls_config = ""
        if self.tls:
            self.ca_file, cert_file, key_file = _make_certificates(self.directory)
            tls_config = (
                f"olcTLSCACertificateFile: {self.ca_file}\n"
                f"olcTLSCertificateFile: {cert_file}\n"
                f"olcTLSCertificateKeyFile: {key_file}"
            )
        ppolicy_overlay = ""
        if self.ppolicy:
            ppolicy_overlay = (
                f"\ndn: olcOverlay={{1}}ppolicy,olcDatabase={{1}}mdb,cn=config\n"
                f"objectClass: olcOverlayConfig\n"
                f"objectClass: olcPPolicyConfig\n"
                f"olcOverlay: {{1}}ppolicy\n"
                f"olcPPolicyDefault: cn=default,ou=policies,{BASE}\n"
                f"olcPPolicyUseLockout: TRUE\n"
            )
        template = Template((HERE / "config.ldif.in").read_text(encoding="utf-8"))
        return template.substitute(
            run_dir=run_dir,
            data_dir=data_dir,
            schema_dir=schema_dir,
            module_config=module_config,
            tls_config=tls_config,
            ppolicy_overlay=ppolicy_overlay,
            root_password_hash=ssha(ADMIN_PASSWORD),
        )

    def _directory_ldif(self) -> str:
        template = Template((HERE / "directory.ldif.in").read_text(encoding="utf-8"))
        hashes = {f"{name}_password": ssha(pw) for name, pw in PASSWORDS.items()}
        return template.substitute(reader_password=ssha(READER_PASSWORD), **hashes)

    def prepare(self) -> None:
        """Write the configuration and load the directory (slapd not running)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config_dir = self.directory / "slapd.d"
        data_dir = self.directory / "data"
        run_dir = self.directory / "run"
        for path in (config_dir, data_dir, run_dir):
            path.mkdir()
        slapadd = self._tool("slapadd")
        config = self.directory / "config.ldif"
        config.write_text(self._config_ldif(run_dir, data_dir), encoding="utf-8")
        self._run(slapadd, "-n0", "-F", str(config_dir), "-l", str(config))
        data = self.directory / "directory.ldif"
        data.write_text(self._directory_ldif(), encoding="utf-8")
        self._run(slapadd, "-q", "-n1", "-F", str(config_dir), "-l", str(data))

    # -- running ----------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Prepare (first time) and start slapd; return once it accepts connections."""
        if not (self.directory / "slapd.d").exists():
            self.prepare()
        slapd = self._tool("slapd")
        for _attempt in range(3):  # a free port may be taken between the probe and slapd's bind
            self.port = free_port()
            self.ldaps_port = free_port() if self.tls else 0
            urls = [f"ldap://127.0.0.1:{self.port}/"]
            if self.tls:
                urls.append(f"ldaps://127.0.0.1:{self.ldaps_port}/")
            self._log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [slapd, "-d", "0", "-h", " ".join(urls), "-F", str(self.directory / "slapd.d")],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            if self._wait_ready(timeout):
                return
            self._reap()
        raise RuntimeError(f"slapd did not start; its log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.ldaps_port) if p]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if all(self._accepts(port) for port in ports):
                return True
            time.sleep(0.02)
        return False

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # slapd shuts down cleanly on TERM
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop slapd (the data stays; ``start`` again serves it on new ports)."""
        self._reap()

    def __enter__(self) -> Slapd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- changing the directory while it runs -----------------------------------------------------

    @contextlib.contextmanager
    def admin(self) -> Any:
        """An ldap3 connection bound as the root DN (``cn=admin``)."""
        from ldap3 import Connection, Server

        import plugit_backends.auth_ldap  # noqa: F401 (imports ldap3 without its import warning)

        connection = Connection(
            Server("127.0.0.1", port=self.port, connect_timeout=5),
            user=ADMIN_DN,
            password=ADMIN_PASSWORD,
            receive_timeout=5,
            raise_exceptions=True,
        )
        connection.bind()
        try:
            yield connection
        finally:
            connection.unbind()
