"""The reply mailbox over IMAP (``imaplib``) or POP3 (``poplib``), behind one small interface.

A :class:`Mailbox` lists the messages (a reference and a size each), fetches one without
changing its state, marks one for deletion, and commits the deletions when closed: IMAP expunges,
POP3 quits.  Each message also has a :meth:`~Mailbox.key` that the server keeps stable across
sessions (IMAP ``UIDVALIDITY`` and ``UID``, POP3 ``UIDL``), to count failures on a message that
cannot even be read.

TLS: implicit (``ssl``, ports 993/995) or ``STARTTLS``/``STLS`` (``starttls``), verified
against the system's CAs or ``ca_file``.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import ssl
from types import TracebackType
from typing import Any

__all__ = ["IMAPMailbox", "MailboxError", "POP3Mailbox", "open_mailbox"]

_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_UID = re.compile(rb"UID (\d+)")


class MailboxError(Exception):
    """The mailbox refused a command (login, select, fetch, delete)."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (the system's CAs, or only ``ca_file`` when given)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Mailbox:
    """What :meth:`MailBackend.check_mail` needs from a mailbox."""

    def messages(self) -> list[tuple[Any, int]]:
        """(reference, size in bytes) of every message not yet deleted, oldest first."""
        raise NotImplementedError

    def key(self, ref: Any) -> str | None:
        """A server-side identity of the message, stable across sessions (or None)."""
        raise NotImplementedError

    def fetch(self, ref: Any) -> bytes:
        """The whole message, unchanged on the server (not even marked as read)."""
        raise NotImplementedError

    def delete(self, ref: Any) -> None:
        """Mark the message for deletion (done when the mailbox is closed)."""
        raise NotImplementedError

    def close(self) -> None:
        """Commit the deletions and log out; never raises."""
        raise NotImplementedError

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check(result: tuple[str, Any], what: str) -> Any:
    status, data = result[0], result[1]
    if status != "OK":
        detail = data[0].decode("utf-8", "replace") if data and isinstance(data[0], bytes) else ""
        raise MailboxError(f"{what} failed: {status} {detail}".strip())
    return data


class IMAPMailbox(Mailbox):
    """One folder (``INBOX`` by default) of an IMAP account, opened read-write."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        mailbox: str = "INBOX",
        use_ssl: bool = False,
        starttls: bool = False,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if use_ssl:
            self.conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                host, port, ssl_context=tls_context(ca_file), timeout=timeout
            )
        else:
            self.conn = imaplib.IMAP4(host, port, timeout=timeout)
        try:
            if starttls:
                self.conn.starttls(ssl_context=tls_context(ca_file))
            try:
                self.conn.login(username, password)
            except imaplib.IMAP4.error as exc:
                raise MailboxError(f"IMAP login as {username} refused: {exc}") from None
            _check(self.conn.select(_quote(mailbox)), f"IMAP SELECT {mailbox}")
            validity = self.conn.response("UIDVALIDITY")[1]
            self.validity = validity[0].decode() if validity and validity[0] else "0"
        except BaseException:
            self._abandon()
            raise
        self.prefix = f"imap:{username}@{host}/{mailbox}/{self.validity}/"

    def messages(self) -> list[tuple[Any, int]]:
        data = _check(self.conn.uid("SEARCH", "UNDELETED"), "IMAP SEARCH")
        uids = (data[0] or b"").split()
        if not uids:
            return []
        reply = _check(
            self.conn.uid("FETCH", b",".join(uids).decode("ascii"), "(RFC822.SIZE)"), "IMAP FETCH"
        )
        sizes: dict[bytes, int] = {}
        for item in reply:
            line = item[0] if isinstance(item, tuple) else item
            uid = _UID.search(line or b"")
            size = _SIZE.search(line or b"")
            if uid and size:
                sizes[uid.group(1)] = int(size.group(1))
        return sorted(((uid, sizes.get(uid, 0)) for uid in uids), key=lambda item: int(item[0]))

    def key(self, ref: Any) -> str | None:
        return self.prefix + ref.decode()

    def fetch(self, ref: Any) -> bytes:
        reply = _check(self.conn.uid("FETCH", ref, "(BODY.PEEK[])"), "IMAP FETCH")
        for item in reply:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        raise MailboxError(f"IMAP FETCH of UID {ref.decode()}: no message in the answer")

    def delete(self, ref: Any) -> None:
        _check(self.conn.uid("STORE", ref, "+FLAGS.SILENT", r"(\Deleted)"), "IMAP STORE")

    def close(self) -> None:
        try:
            self.conn.close()  # CLOSE expunges the messages marked \Deleted
        except (imaplib.IMAP4.error, OSError):
            pass
        self._abandon()

    def _abandon(self) -> None:
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):  # logout() leaves the socket open when it fails
            with contextlib.suppress(OSError):
                self.conn.shutdown()


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


POP3_MAX_LINE = 1024 * 1024


class _LongLines:
    """poplib refuses lines over 2048 bytes, which real mail has (HTML on one line): accept
    lines up to :data:`POP3_MAX_LINE`.  Returns what poplib's own reader returns: the line
    without its end of line, and the number of bytes read."""

    file: Any

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(POP3_MAX_LINE + 1)
        if len(line) > POP3_MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        if line.endswith(b"\r\n"):
            return line[:-2], len(line)
        if line.endswith(b"\n"):
            return line[:-1], len(line)
        return line, len(line)


class _POP3(_LongLines, poplib.POP3):
    pass


class _POP3_SSL(_LongLines, poplib.POP3_SSL):  # noqa: N801 (poplib's spelling)
    pass


class POP3Mailbox(Mailbox):
    """A POP3 maildrop.  Deletions are committed by QUIT, when the mailbox is closed."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        use_ssl: bool = False,
        starttls: bool = False,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._uidls: dict[int, str] = {}
        if use_ssl:
            self.conn: poplib.POP3 = _POP3_SSL(
                host, port, context=tls_context(ca_file), timeout=timeout
            )
        else:
            self.conn = _POP3(host, port, timeout=timeout)
        try:
            if starttls:
                self.conn.stls(context=tls_context(ca_file))
            try:
                self.conn.user(username)
                self.conn.pass_(password)
            except poplib.error_proto as exc:
                raise MailboxError(f"POP3 login as {username} refused: {exc}") from None
        except BaseException:
            self._abandon()
            raise
        self.prefix = f"pop3:{username}@{host}/"

    def messages(self) -> list[tuple[Any, int]]:
        _response, listing, _octets = self.conn.list()
        found = []
        for line in listing:
            number, _, size = line.partition(b" ")
            found.append((int(number), int(size or 0)))
        self._uidls = {}
        try:
            _response, uidls, _octets = self.conn.uidl()
        except poplib.error_proto:  # a server without UIDL: no keys
            uidls = []
        for line in uidls:
            number, _, uidl = line.partition(b" ")
            self._uidls[int(number)] = uidl.decode("ascii", "replace")
        return found

    def key(self, ref: Any) -> str | None:
        uidl = self._uidls.get(ref)
        return None if uidl is None else self.prefix + uidl

    def fetch(self, ref: Any) -> bytes:
        _response, lines, _octets = self.conn.retr(ref)
        return b"\r\n".join(lines) + b"\r\n"

    def delete(self, ref: Any) -> None:
        self.conn.dele(ref)

    def close(self) -> None:
        try:
            self.conn.quit()  # commits the deletions
        except (poplib.error_proto, OSError):
            self._abandon()

    def _abandon(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


def open_mailbox(
    protocol: str,
    host: str,
    port: int,
    username: str,
    password: str,
    *,
    mailbox: str = "INBOX",
    use_ssl: bool = False,
    starttls: bool = False,
    ca_file: str | None = None,
    timeout: float = 30.0,
) -> Mailbox:
    """Connect and log in: ``protocol`` is ``imap`` or ``pop3``."""
    if protocol == "imap":
        return IMAPMailbox(
            host,
            port,
            username,
            password,
            mailbox=mailbox,
            use_ssl=use_ssl,
            starttls=starttls,
            ca_file=ca_file,
            timeout=timeout,
        )
    if protocol == "pop3":
        return POP3Mailbox(
            host,
            port,
            username,
            password,
            use_ssl=use_ssl,
            starttls=starttls,
            ca_file=ca_file,
            timeout=timeout,
        )
    raise ValueError(f"unknown incoming mail protocol {protocol!r} (imap or pop3)")
