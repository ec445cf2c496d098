"""``python -m ldap_server [DIR]`` (from ``tests/backends``): a test slapd until Ctrl-C."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import ADMIN_DN, ADMIN_PASSWORD, PASSWORDS, READER_DN, READER_PASSWORD, Slapd


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="plugit-slapd-") as tmp:
        directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp) / "slapd"
        with Slapd(directory) as server:
            print(f"{server.url}  {server.ldaps_url}  (CA: {server.ca_file})")
            print(f"root: {ADMIN_DN} / {ADMIN_PASSWORD}")
            print(f"service account: {READER_DN} / {READER_PASSWORD}")
            print(f"users: {PASSWORDS}")
            print("Ctrl-C to stop")
            try:
                server.process.wait()  # type: ignore[union-attr]
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
