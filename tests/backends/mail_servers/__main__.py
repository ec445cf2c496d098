"""``python -m mail_servers`` (from tests/backends): an SMTP server and a Dovecot to play with."""

from __future__ import annotations

import contextlib
import signal

from . import Dovecot, SMTPServer, find_dovecot


def main() -> None:
    with contextlib.ExitStack() as stack:
        smtp = stack.enter_context(SMTPServer())
        print(f"SMTP (aiosmtpd, prints nothing, records in memory): 127.0.0.1:{smtp.port}")
        if find_dovecot() is None:
            print("dovecot is not installed: run scripts/install-dovecot.sh")
        else:
            dovecot = stack.enter_context(Dovecot())
            dovecot.add_user("replies")
            print(
                f"Dovecot: IMAP {dovecot.imap_port}, IMAPS {dovecot.imaps_port}, "
                f"POP3 {dovecot.pop3_port}, POP3S {dovecot.pop3s_port}; "
                f"user replies / {dovecot.password}; CA {dovecot.ca_file}; Maildir "
                f"{dovecot.root / 'mail' / 'replies'}"
            )
        print("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
