"""Hostile connections against ``memprog serve`` under uvicorn (issue 9): a flood of idle TCP
connections must not take the file descriptors the emergency stop needs, and a connection that
never completes its request headers is closed.

The service runs with RLIMIT_NOFILE 1024, soft and hard (the systemd default), so it cannot
raise it; the flood is 1,100 connections that never send a byte, held while the e-stop is sent.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import connections
from service.launch import ServerProcess, free_port, memprog_command
from tests.servers import sim_server_env

API = "/api/v1"
SERVER_NOFILE = 1024
FLOOD = 1100
ESTOP_BUDGET_S = 1.0
HELD = 500
"""descriptors the service holds under the flood (its connection cap is lower than 1024)."""
ROWS = COLS = 8


def server_env(tmp_path) -> dict[str, str]:
    return sim_server_env(tmp_path / "flood.db", rows=ROWS, cols=COLS, seed=3)


def raise_own_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def accept_queue(port: int) -> int | None:
    """Connections the kernel holds for the listening socket on 127.0.0.1:``port`` until the
    service accepts them (None if it is not listening)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # LISTEN
            return int(fields[4].split(":")[1], 16)
    return None


def open_idle(port: int, n: int, timeout: float, chunk: int = 50) -> list[socket.socket]:
    """``n`` TCP connections that send nothing, ``chunk`` at a time, each chunk at once; the
    next when the service has accepted it (or 2 s passed: the old code stops accepting), so
    the kernel's queue never overflows (a connection it then dropped would never reach the
    service: SYN cookies). All connected within ``timeout`` s, or AssertionError."""
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        while len(sockets) < n:
            pending: dict[int, socket.socket] = {}
            poller = select.poll()  # select() stops at descriptor 1023
            for _ in range(min(chunk, n - len(sockets))):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", port))
                if code == errno.EINPROGRESS:
                    pending[sock.fileno()] = sock
                    poller.register(sock, select.POLLOUT)
                else:
                    assert code == 0, os.strerror(code)
            while pending:
                assert time.monotonic() < deadline, \
                    f"{len(pending) + n - len(sockets)} of {n} not connected after {timeout} s"
                for fd, _ in poller.poll(100):
                    sock = pending.pop(fd)
                    poller.unregister(fd)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert code == 0, os.strerror(code)
            accepted_by = min(deadline, time.monotonic() + 2)
            while accept_queue(port) and time.monotonic() < accepted_by:
                time.sleep(0.005)
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def descriptors(pid: int) -> int:
    """File descriptors a local process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def sse_statuses(server_url: str, job_id: int, seen: list[str]) -> None:
    """Follow a job's progress stream, appending each event's status, until it ends."""
    try:
        with httpx.Client(base_url=server_url, timeout=60) as client, \
                client.stream("GET", f"{API}/jobs/{job_id}/events") as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line.split(":", 1)[1])["status"])
    except httpx.HTTPError as exc:
        seen.append(f"stream broken: {exc!r}")


def test_idle_flood_leaves_the_emergency_stop_and_health_served(tmp_path):
    raise_own_nofile(FLOOD + 512)
    server = ServerProcess(server_env(tmp_path), log_path=tmp_path / "server.log",
                           nofile=SERVER_NOFILE)
    flood: list[socket.socket] = []
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        # A legitimate long-lived connection with a request in flight: a job's progress stream.
        cells = [{"row": r, "col": c, "conductance": 250e-6}
                 for r in range(ROWS) for c in range(COLS)]
        job = http.post(f"{API}/jobs", json={"targets": cells, "tolerance": 1e-4,
                                              "max_pulses": 1000, "strategy": "fixed"}).json()
        statuses: list[str] = []
        watcher = threading.Thread(target=sse_statuses, args=(server.url, job["id"], statuses),
                                   daemon=True)
        watcher.start()
        deadline = time.monotonic() + 60
        while "running" not in statuses:
            assert time.monotonic() < deadline, f"the stream showed no running job: {statuses}"
            time.sleep(0.05)
        try:
            started = time.monotonic()
            flood = open_idle(server.port, FLOOD, timeout=30)
            flood_s = time.monotonic() - started
            # the service holds the flood (the kernel may still queue some of it)
            deadline = time.monotonic() + 10
            while descriptors(server.pid) < HELD:
                assert time.monotonic() < deadline, \
                    f"the service holds only {descriptors(server.pid)} descriptors"
                time.sleep(0.01)

            started = time.monotonic()
            try:
                stop = httpx.post(f"{server.url}{API}/emergency-stop", timeout=10)
            except httpx.TimeoutException as exc:
                pytest.fail(f"the emergency stop timed out under {FLOOD} idle connections "
                            f"({type(exc).__name__} after {time.monotonic() - started:.1f} s)")
            estop_s = time.monotonic() - started
            health = httpx.get(f"{server.url}{API}/health", timeout=10)
            held = descriptors(server.pid)
            print(f"flood of {FLOOD} opened in {flood_s:.2f} s; e-stop answered in "
                  f"{estop_s * 1000:.0f} ms; the service holds {held} descriptors")

            assert stop.status_code == 200, stop.text
            assert estop_s < ESTOP_BUDGET_S
            assert health.status_code == 200, health.text
            # served while the flood held its connections, not after a timeout closed them:
            # the reserve did it
            assert held >= HELD
        finally:
            close_all(flood)

        # the stream was in flight through the flood: it was not evicted and saw the e-stop
        watcher.join(30)
        assert not watcher.is_alive()
        assert statuses[-1] == "aborted"
        # and the service goes on serving legitimate requests
        assert http.get(f"{API}/jobs/{job['id']}").json()["status"] == "aborted"
        read = http.post(f"{API}/read", json={"cells": [[0, 0]]})
        assert read.status_code == 200, read.text
    # accept() never ran out of descriptors (asyncio would log it and pause accepting)
    assert "out of system resource" not in (tmp_path / "server.log").read_text()


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_connection_without_complete_headers_is_closed(tmp_path):
    """Silent; headers begun and never finished; and a keep-alive connection that begins a
    second request and never finishes its headers: all closed by the header timeout
    (server.header_timeout_s, default 5 s). Before, none of them ever was."""
    with ServerProcess(server_env(tmp_path)) as server:
        address = ("127.0.0.1", server.port)
        silent, partial, second = (socket.create_connection(address, timeout=10)
                                   for _ in range(3))
        try:
            second.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(second).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            partial.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # no blank line
            second.sendall(b"GET /api/v1/health HTTP/1.1\r\n")  # cancels the keep-alive timer
            for name, sock in (("silent", silent), ("partial", partial), ("second", second)):
                sock.settimeout(max(0.1, started + 10 - time.monotonic()))
                try:
                    assert sock.recv(1024) == b""  # closed, nothing answered
                except TimeoutError:
                    pytest.fail(f"the {name} connection without complete request headers was "
                                f"still open after {time.monotonic() - started:.1f} s")
                except ConnectionResetError:
                    pass
            assert time.monotonic() - started < 10
        finally:
            for sock in (silent, partial, second):
                sock.close()
        assert httpx.get(f"{server.url}{API}/health", timeout=10).status_code == 200


def test_the_systemd_unit_gives_room_for_the_connections_and_their_reserve():
    from service.config import ServerSettings

    unit = (Path(__file__).parents[1] / "deploy" / "memprog.service").read_text()
    limit = re.search(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    assert limit is not None, "the unit leaves the file descriptor limit at 1024"
    server = ServerSettings()
    assert connections.connection_cap(None, server.backlog, int(limit[1])) \
        == connections.DEFAULT_MAX_CONNECTIONS


def test_the_service_raises_its_soft_descriptor_limit_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 256:
        pytest.skip("needs a hard limit of 256 descriptors or more")
    code = (
        "import resource\n"
        "from service.connections import raise_descriptor_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))\n"
        "print(raise_descriptor_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(__file__).parents[1]).stdout.split()
    assert out == [str(hard)] * 3


@pytest.mark.parametrize("descriptors, max_connections, cap", [
    (65536, None, 1000), (1024, None, 1024 - 3 * 128 - 64), (65536, 5000, 5000),
])
def test_the_connection_cap_keeps_the_reserve(descriptors, max_connections, cap):
    assert connections.connection_cap(max_connections, 128, descriptors) == cap


def test_a_connection_cap_beyond_the_descriptor_limit_refuses_to_start(tmp_path):
    env = {**os.environ, **server_env(tmp_path), "MEMPROG_SERVER__MAX_CONNECTIONS": "1000"}
    command = [*memprog_command(), "serve", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                (1024, 1024)))
    assert done.returncode == 2
    assert "server.max_connections 1000 does not fit the file descriptor limit 1024: " \
        "at most 576" in done.stderr
    assert not (tmp_path / "flood.db").exists()  # nothing opened


class ConnectionDouble:
    """Stands in for a guarded protocol: records that the guard closed it."""

    guard_counted = False
    closed = False

    def guard_close(self) -> None:
        self.closed = True


def test_the_guard_evicts_the_connection_idle_longest_never_one_with_a_request():
    guard = connections.ConnectionGuard(cap=3, header_timeout=5.0)
    stream, keep_alive, silent = ConnectionDouble(), ConnectionDouble(), ConnectionDouble()
    for conn in (stream, keep_alive, silent):
        assert guard.admit(conn)
    guard.busy(stream)  # oldest, but its request is in flight
    guard.busy(keep_alive)
    guard.idle(keep_alive)  # answered: idle since now, after the silent one
    newcomer = ConnectionDouble()
    assert guard.admit(newcomer) and silent.closed and not stream.closed
    later, last = ConnectionDouble(), ConnectionDouble()
    assert guard.admit(later) and keep_alive.closed
    guard.busy(newcomer)
    assert guard.admit(last) and later.closed  # the only idle one left
    guard.busy(last)
    # every connection has a request in flight: the new one is refused (the caller closes it)
    assert not guard.admit(refused := ConnectionDouble())
    assert not any(c.closed for c in (stream, newcomer, last, refused))
    assert (guard.open, guard.evicted, guard.refused) == (3, 3, 1)
