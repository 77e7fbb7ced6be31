"""Requests a hostile or careless client sends: bodies from strangers, bodies too large, a stream
kept open after its key was revoked. The service under uvicorn, with authentication on."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.key_cache import KEY_REFRESH_S
from service.launch import ServerProcess
from service.store import Storage
from service.store.keys import KeyStore
from tests.servers import sim_server_env
from tests.test_jobs import long_job, wait_for

API = "/api/v1"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def keyed(database: Path, scope: str, name: str) -> dict[str, str]:
    return {"Authorization": "ApiKey " + KeyStore(database).create(name, scope)[1]}


@pytest.fixture
def secured_server(tmp_path):
    database = tmp_path / "guards.db"
    Storage(database).close()
    env = sim_server_env(database, rows=64, cols=64, seed=2, MEMPROG_AUTH__ENABLED="true")
    with ServerProcess(env, log_path=tmp_path / "server.log") as server:
        yield server, database


def big_program_body(cells: int) -> bytes:
    """A /program body naming ``cells`` targets, pretty-printed (the way a script might)."""
    targets = [{"row": k // 64, "col": k % 64, "conductance": 2.5e-4 + 1e-12 * k}
               for k in range(cells)]
    return json.dumps({"targets": targets, "verify": False, "strategy": "ispp"},
                      indent=2).encode()


@pytest.mark.slow
def test_an_anonymous_body_is_refused_before_it_is_read(secured_server):
    server, _ = secured_server
    body = b'{"targets": [' + b",".join(
        b'{"row": 1, "col": 2, "conductance": 0.0001}' for _ in range(140_000)) + b"]}"
    assert len(body) > 6_000_000
    with httpx.Client(base_url=server.url, timeout=60) as http:
        http.get(f"{API}/health")
        before = rss_bytes(server.pid)
        for _ in range(3):
            answer = http.post(f"{API}/program", content=body,
                               headers={"content-type": "application/json"})
            assert answer.status_code == 401
        grown = rss_bytes(server.pid) - before
    # parsing 6 MB of JSON into Python objects costs ~150 MiB; refusing it from the headers
    # costs nothing
    assert grown < 20 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"


@pytest.mark.slow
def test_bodies_beyond_the_cap_are_413_and_a_whole_array_request_fits(secured_server):
    server, database = secured_server
    program = keyed(database, "program", "script")
    whole = big_program_body(64 * 64)  # every cell of the configured 64×64 array
    with httpx.Client(base_url=server.url, timeout=120) as http:
        answer = http.post(f"{API}/program", content=whole,
                           headers={**program, "content-type": "application/json"})
        assert answer.status_code == 200, answer.text[:300]
        assert len(answer.json()["results"]) == 64 * 64

        cap = 2**20 + 128 * 64 * 64  # the default for this array
        too_big = whole + b" " * (cap + 1 - len(whole))
        answer = http.post(f"{API}/program", content=too_big,
                           headers={**program, "content-type": "application/json"})
        assert answer.status_code == 413
        problem = answer.json()["detail"][0]
        assert "max_body_bytes" in problem["msg"] and problem["ctx"] == {"limit": cap}

        # a chunked body (no Content-Length) is counted as it arrives
        def chunks():
            for start in range(0, len(too_big), 65536):
                yield too_big[start:start + 65536]

        answer = http.post(f"{API}/program", content=chunks(),
                           headers={**program, "content-type": "application/json"})
        assert answer.status_code == 413


@pytest.mark.slow
def test_a_progress_stream_ends_when_its_key_is_revoked(secured_server):
    server, database = secured_server
    program = keyed(database, "program", "bench")
    store = KeyStore(database)
    reader_id, reader_key = store.create("watcher", "read")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job = http.post(f"{API}/jobs", json=long_job(16, 16), headers=program).json()
        events: list[str] = []
        ended = threading.Event()

        def follow() -> None:
            with http.stream("GET", f"{API}/jobs/{job['id']}/events",
                             headers={"Authorization": f"ApiKey {reader_key}"}) as stream:
                for line in stream.iter_lines():
                    events.append(line)
            ended.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_for(lambda: len(events) > 4, 30, "progress events")
        assert not ended.is_set()
        store.revoke(reader_id)
        revoked = time.monotonic()
        assert ended.wait(KEY_REFRESH_S * 2 + 5), "the stream outlived its revoked key"
        took = time.monotonic() - revoked
        assert "event: error" in events and any("revoked" in e for e in events)
        http.post(f"{API}/emergency-stop", headers=program)
    assert took < KEY_REFRESH_S * 2 + 5


def test_a_silent_client_does_not_hold_a_body_slot(secured_server):
    """A client that announces a body and never sends it is answered 401 from its headers."""
    server, _ = secured_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/pulse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1000000\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 401")


@pytest.mark.slow
def test_a_trickled_body_is_refused_after_the_body_timeout(tmp_path):
    database = tmp_path / "slow.db"
    Storage(database).close()
    key = keyed(database, "program", "slow")["Authorization"]
    env = sim_server_env(database, rows=8, cols=8, seed=2, MEMPROG_AUTH__ENABLED="true",
                         MEMPROG_SERVER__BODY_TIMEOUT_S="1.0")
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"POST /api/v1/pulse HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        started = time.monotonic()
        reply = sock.recv(4096)
        waited = time.monotonic() - started
        while chunk := sock.recv(4096):  # the body may come in a packet of its own
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"BODY_TIMEOUT_S" in reply
    assert 0.5 < waited < 10
