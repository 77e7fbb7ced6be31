"""Start ``memprog serve`` as a subprocess on a free loopback port (benchmark and tests)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memprog_command() -> list[str]:
    """The installed ``memprog`` script next to this Python, else ``python -m service.cli``."""
    script = Path(sys.executable).with_name("memprog")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "service.cli"]


class ServerProcess:
    """``memprog serve`` on 127.0.0.1:<free port> with extra ``MEMPROG_*`` environment.

    ``nofile``: the child's RLIMIT_NOFILE, soft and hard (so the service cannot raise it), to
    run it under a given file-descriptor limit; default: inherited."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        config: str | Path | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 60.0,
        nofile: int | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **(env or {})}
        self._config = config
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout = startup_timeout
        self._nofile = nofile
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | int | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        command = [*memprog_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "warning"]
        if self._config is not None:
            command += ["--config", str(self._config)]
        self._log = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self._nofile is not None else None,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"memprog serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"memprog serve did not answer within {self._startup_timeout} s")

    def _limit_files(self) -> None:
        """In the child, before exec."""
        assert self._nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self._nofile, self._nofile))

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(self.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully: safe state, database closed), then wait."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if not isinstance(self._log, int | None):  # a file of ours, not DEVNULL
            self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a local process, bytes; None if unavailable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None
