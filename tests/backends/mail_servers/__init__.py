"""Real mail servers on loopback for the mail tests: aiosmtpd (SMTP) and Dovecot (IMAP, POP3).

:class:`SMTPServer` runs an aiosmtpd controller that records every message; it can offer
STARTTLS or implicit TLS, require a login, refuse some recipients for good, and be stopped and
started again on the same port (to play an SMTP outage)::

    with SMTPServer() as smtp:
        ...                       # smtp.port, smtp.messages

:class:`Dovecot` runs Debian's ``dovecot`` with a configuration of its own in a fresh temporary
directory (state, sockets, logs, Maildirs), on free loopback ports: IMAP (with STARTTLS), IMAPS,
POP3 (with STLS) and POP3S, the certificate signed by :attr:`Dovecot.ca_file`.  Accounts are
added with :meth:`Dovecot.add_user` (they share the password :attr:`Dovecot.password`); messages
are put straight into their Maildir (``new/``) and read back from it, without going through IMAP
or POP3::

    with Dovecot() as server:
        server.add_user("replies")
        server.deliver("replies", raw_bytes)
        server.messages("replies")   # the raw messages still in the mailbox

As root, the mail files belong to ``nobody`` (Dovecot refuses to access mail as root); as
another user everything runs as that user.  The system's Dovecot (``/etc/dovecot``, ports
110/143/993/995) is never touched.

Run ``python -m mail_servers`` from ``tests/backends`` to get both for manual testing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from plugit_core.testing import free_port

__all__ = [
    "Dovecot",
    "Received",
    "SMTPServer",
    "find_dovecot",
    "free_port",
    "make_certificates",
    "wait_for_port",
]

TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


def wait_for_port(port: int, timeout: float = 20.0, *, alive: Any = None) -> None:
    """Poll until something accepts connections on 127.0.0.1:``port``.

    ``alive()`` (optional) is asked between attempts; when it answers False the wait stops.
    Raises TimeoutError.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if alive is not None and not alive():
                raise TimeoutError(f"the server died before listening on port {port}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout}s"
                ) from None
            time.sleep(0.02)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PlugIt mail test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
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
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
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


# -- SMTP ------------------------------------------------------------------------------------------


@dataclass
class Received:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    login: str | None = None
    tls: bool = False
    message: EmailMessage = field(init=False)

    def __post_init__(self) -> None:
        self.message = BytesParser(policy=policy.default).parsebytes(self.content)  # type: ignore[assignment]


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.server.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.lower() in self.server.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            content=bytes(envelope.content),
            login=session.auth_data if session.authenticated else None,
            tls=session.ssl is not None or self.server.tls == "ssl",
        )
        with self.server.lock:
            self.server.messages.append(received)
        return "250 Message accepted for delivery"


class SMTPServer:
    """An aiosmtpd server on 127.0.0.1 recording what it accepts.

    ``tls``: None (plain), ``"starttls"`` (offered and required) or ``"ssl"`` (implicit TLS);
    ``users``: logins the server requires (``{name: password}``, only over TLS); ``refuse``:
    recipients refused with a permanent 550.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        tls: str | None = None,
        users: dict[str, str] | None = None,
        refuse: tuple[str, ...] = (),
        cert_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.users = users or {}
        self.refuse = {address.lower() for address in refuse}
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.ca_file: Path | None = None
        self._context: ssl.SSLContext | None = None
        self._controller: Any = None
        if tls is not None:
            directory = cert_dir
            if directory is None:  # removed with the server object, or at exit
                directory = Path(tempfile.mkdtemp(prefix="plugit-smtp-"))
                weakref.finalize(self, shutil.rmtree, directory, True)
            self.ca_file, cert, key = make_certificates(directory)
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(cert, key)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        if self.users.get(name) == password and password:
            return AuthResult(success=True, auth_data=name)
        return AuthResult(success=False, handled=False)

    def start(self) -> SMTPServer:
        from aiosmtpd.controller import Controller

        options: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port}
        if self.tls == "starttls":
            options.update(tls_context=self._context, require_starttls=True)
        elif self.tls == "ssl":
            # aiosmtpd only knows about STARTTLS: tell it this connection is safe for AUTH
            # (the login is then enforced by the handler, see handle_MAIL).
            options.update(ssl_context=self._context, auth_require_tls=False)
        if self.users:
            options.update(authenticator=self._authenticate, auth_required=self.tls != "ssl")
        self._controller = Controller(_Handler(self), loop=asyncio.new_event_loop(), **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            controller, self._controller = self._controller, None
            loop = controller.loop
            controller.stop()
            loop.close()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout}s")
            time.sleep(0.02)

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Dovecot ---------------------------------------------------------------------------------------


def find_dovecot() -> tuple[str, str] | None:
    """The paths of ``dovecot`` and ``doveadm``, or None when Dovecot (with its IMAP and POP3
    servers) is not installed."""
    found = []
    for name in ("dovecot", "doveadm"):
        path = shutil.which(name) or next(
            (
                str(Path(d) / name)
                for d in TOOL_DIRS
                if (Path(d) / name).is_file() and os.access(Path(d) / name, os.X_OK)
            ),
            None,
        )
        if path is None:
            return None
        found.append(path)
    libexec = Path("/usr/lib/dovecot")
    if libexec.is_dir() and not ((libexec / "imap").exists() and (libexec / "pop3").exists()):
        return None
    return found[0], found[1]


CONFIG = """\
# A throw-away Dovecot for the PlugIt mail tests.
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
{users}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
# A test tries a wrong password on purpose: answer at once.  (Dovecot's per-address penalty
# still delays every later login for a few seconds: use an instance of its own for that.)
auth_failure_delay = 0
# Every account has the same password: a passwd-file is only re-read once a second, too slow
# for accounts made on the fly.
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
"""


class Dovecot:
    """A private Dovecot instance (see the module documentation)."""

    def __init__(self) -> None:
        tools = find_dovecot()
        if tools is None:
            raise RuntimeError("dovecot is not installed (scripts/install-dovecot.sh)")
        self.dovecot, self.doveadm = tools
        # A directory of its own under /tmp (not pytest's private one): Dovecot's unprivileged
        # processes must be able to reach the password file and the Maildirs.
        self.root = Path(tempfile.mkdtemp(prefix="plugit-dovecot-"))
        self.root.chmod(0o755)
        self.ca_file, cert, key = make_certificates(self.root)
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = (
            free_port() for _ in range(4)
        )
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
            users = ""
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            me = pwd.getpwuid(self.uid).pw_name
            users = f"default_login_user = {me}\ndefault_internal_user = {me}"
        for name in ("run", "state", "mail"):
            (self.root / name).mkdir()
        os.chown(self.root / "mail", self.uid, self.gid)
        self.password = secrets.token_urlsafe(12)
        self.config = self.root / "dovecot.conf"
        self.config.write_text(
            CONFIG.format(
                instance=f"plugit-test-{os.getpid()}-{self.imap_port}",
                root=self.root,
                users=users,
                password=self.password,
                cert=cert,
                key=key,
                uid=self.uid,
                gid=self.gid,
                imap=self.imap_port,
                imaps=self.imaps_port,
                pop3=self.pop3_port,
                pop3s=self.pop3s_port,
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._counter = itertools.count()

    def start(self) -> Dovecot:
        self._process = subprocess.Popen(
            [self.dovecot, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        process = self._process
        try:
            for port in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port):
                wait_for_port(port, alive=lambda: process.poll() is None)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"dovecot did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        parts = []
        if self._process is not None and self._process.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                if self._process.poll() is not None:
                    parts.append(self._process.stderr.read().decode("utf-8", "replace"))
        with contextlib.suppress(OSError):
            parts.append((self.root / "dovecot.log").read_text("utf-8", "replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if process.stderr is not None:
                process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users and their Maildirs ------------------------------------------------------------------

    def add_user(self, name: str) -> None:
        """A new, empty mail account; its password is :attr:`password` (shared by all)."""
        home = self.root / "mail" / name
        for sub in ("", "new", "cur", "tmp"):
            (home / sub).mkdir(exist_ok=True)
            os.chown(home / sub, self.uid, self.gid)
            (home / sub).chmod(0o700)

    def deliver(self, user: str, raw: bytes) -> Path:
        """Put a message into ``user``'s Maildir, as a delivery agent would (tmp/, then new/)."""
        home = self.root / "mail" / user
        name = f"{time.time_ns()}.M{next(self._counter)}P{os.getpid()}.plugit-test"
        temporary = home / "tmp" / name
        temporary.write_bytes(raw)
        os.chown(temporary, self.uid, self.gid)
        target = home / "new" / name
        temporary.rename(target)
        return target

    def messages(self, user: str) -> list[bytes]:
        """The raw messages in ``user``'s Maildir (new and cur, deleted ones excluded)."""
        home = self.root / "mail" / user
        found = []
        for sub in ("new", "cur"):
            for path in sorted((home / sub).iterdir()):
                flags = path.name.partition(":2,")[2]
                if "T" in flags:  # marked deleted, not yet expunged
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append(path.read_bytes())
        return found
