"""A throwaway PostgreSQL server, for the tests and ``memprog benchmark api --database
postgresql:throwaway``: Debian's ``postgresql`` package (``make test`` installs it when missing),
a new cluster in a temporary directory, listening on 127.0.0.1 on a free port with trust
authentication for the loopback only; stopped and deleted at the end. Never for a lab's data.
The tests run it with ``fsync`` off (speed; a killed server still leaves its writes in the page
cache); the benchmark with the server's defaults (``fsync`` on, every commit flushed).

The server runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses root).
:meth:`PostgresServer.kill` and :meth:`start` let a test take the database away under a running
service and bring it back on the same port and data.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, *, fsync: bool = False) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: `make test` installs Debian's postgresql package "
                "(apt-get install postgresql) for the PostgreSQL store's tests"
            )
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="memprog-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        os.chmod(self.root, 0o755)
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        (self.data / "postgresql.auto.conf").write_text(
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.root}'\n"
            + ("" if fsync else "fsync = off\nfull_page_writes = off\n")
            + "synchronous_commit = on\n"
            "max_connections = 200\nshared_buffers = 64MB\n"
        )
        if self.as_user:
            shutil.chown(self.data / "postgresql.auto.conf", self.as_user, self.as_user)
        self.start()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cmd(self, name: str, *args: str) -> list[str]:
        cmd = [str(self.bin / name), *args]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def _run(self, name: str, *args: str) -> None:
        subprocess.run(self._cmd(name, *args), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "start")

    def kill(self) -> None:
        """Take the server away at once (immediate shutdown: connections are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def wait_up(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
