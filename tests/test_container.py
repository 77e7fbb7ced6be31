"""The container image, built and run by the test suite (podman as root, runc): built by
``deploy/build-image`` from nothing (a base made from Debian packages when no registry answers),
run with a named volume on a loopback port as a non-root user, keys made inside it, a job to its
end, SIGTERM within 10 s, the database surviving into a second container, the HEALTHCHECK; then
``deploy/compose.yaml`` (podman-compose) with the emulated bench in a container of its own. Every
container, volume and image made here is removed.

Skipped — loudly — only where containers cannot run at all (no podman, or one that cannot start
a container); ``make test`` installs podman, runc and mmdebstrap where they are missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.launch import free_port

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
BASE = "localhost/memprog-base:bookworm"

pytestmark = pytest.mark.slow


def run(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} → {result.returncode}\n{result.stdout[-2000:]}"
                             f"\n{result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> dict[str, str]:
    """podman's environment (a containers.conf with limits within the host's), or a skip."""
    if shutil.which("podman") is None:
        pytest.skip("CONTAINERS CANNOT RUN HERE: podman is not installed (make test installs it "
                    "with apt-get; run make test)")
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    return {**os.environ, "MEMPROG_CONTAINERS_CONF": str(conf), "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(engine) -> str:
    tag = f"localhost/memprog:test-{os.getpid()}"
    had_base = run("podman", "image", "exists", BASE, check=False).returncode == 0
    dangling = set(run("podman", "images", "-q", "--filter", "dangling=true").stdout.split())
    started = time.monotonic()
    built = run(str(ROOT / "deploy" / "build-image"), tag, env=engine, timeout=900, check=False)
    if built.returncode != 0 and "no registry" not in built.stderr \
            and run("podman", "info", check=False, env=engine).returncode != 0:
        pytest.skip(f"CONTAINERS CANNOT RUN HERE: podman info fails: {built.stderr[-500:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    seconds = time.monotonic() - started
    size = run("podman", "image", "inspect", tag, "--format", "{{.Size}}", env=engine).stdout
    print(f"\nimage {tag}: built in {seconds:.0f} s, {int(size) / 1e6:.0f} MB", file=sys.stderr)
    try:
        yield tag
    finally:
        run("podman", "rmi", "-f", tag, check=False, env=engine)
        # the build stage's image, left untagged by the multi-stage build
        for made in set(run("podman", "images", "-q", "--filter", "dangling=true",
                            check=False).stdout.split()) - dangling:
            run("podman", "rmi", "-f", made, check=False, env=engine)
        if not had_base:
            run("podman", "rmi", "-f", BASE, check=False, env=engine)


def wait_health(url: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            answer = httpx.get(f"{url}{API}/health", timeout=2)
            if answer.status_code == 200:
                return answer.json()
        assert time.monotonic() < deadline, f"{url} never became healthy"
        time.sleep(0.5)


def make_key(engine: dict, container: str) -> str:
    out = run("podman", "exec", container, "memprog", "keys", "create", "--scope", "program",
              "--name", "test", env=engine).stdout
    return out.strip().splitlines()[-1]


def test_the_image_runs_keeps_its_database_and_stops_on_sigterm(engine, image):
    volume, names = f"memprog-test-{os.getpid()}", []
    run("podman", "volume", "create", volume, env=engine)
    try:
        port = free_port()
        first = f"memprog-test-a-{os.getpid()}"
        names.append(first)
        run("podman", "run", "-d", "--name", first, "-p", f"127.0.0.1:{port}:8000",
            "-v", f"{volume}:/var/lib/memprog", image, env=engine)
        url = f"http://127.0.0.1:{port}"
        assert wait_health(url)["backend"] == "simulated"
        assert run("podman", "exec", first, "id", "-u", env=engine).stdout.strip() == "10001"
        version = run(sys.executable, "-m", "service.cli", "--version").stdout.strip()
        assert run("podman", "exec", first, "memprog", "--version",
                   env=engine).stdout.strip() == version
        run("podman", "exec", first, "/opt/memprog/bin/pip", "check", env=engine)
        labels = run("podman", "image", "inspect", image, "--format",
                     "{{json .Labels}}", env=engine).stdout
        commit = run("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
        assert commit in labels and version.split()[-1] in labels, labels
        # the build's CA bundle and pip configuration were secrets, not layers
        run("podman", "exec", first, "sh", "-c",
            "test ! -e /run/secrets/ca-bundle && test ! -e /run/secrets/pip-conf "
            "&& test ! -e /root/.config/pip", env=engine)
        tools = run("podman", "exec", first, "sh", "-c",
                    "command -v gcc cc c++ make || true", env=engine).stdout.strip()
        assert tools == "", f"compilers in the image: {tools}"
        key = make_key(engine, first)
        assert httpx.get(f"{url}{API}/array").status_code == 401
        auth = {"Authorization": f"ApiKey {key}"}
        job = httpx.post(f"{url}{API}/jobs", headers=auth, json={"targets": [
            {"row": r, "col": c, "conductance": 250e-6} for r in range(4) for c in range(4)],
            "max_pulses": 20}).json()
        deadline = time.monotonic() + 120
        while (record := httpx.get(f"{url}{API}/jobs/{job['id']}", headers=auth).json()
               )["status"] not in ("completed", "failed", "aborted", "interrupted"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert record["status"] == "completed" and record["pulses"] > 0
        run("podman", "healthcheck", "run", first, env=engine)  # the image's HEALTHCHECK passes

        started = time.monotonic()
        run("podman", "stop", "--time", "10", first, env=engine, timeout=60)
        stopped_in = time.monotonic() - started
        assert stopped_in < 10, f"SIGTERM took {stopped_in:.1f} s"
        exit_code = run("podman", "inspect", first, "--format", "{{.State.ExitCode}}",
                        env=engine).stdout.strip()
        assert exit_code == "0", f"exit code {exit_code} after SIGTERM (not a clean stop)"

        second = f"memprog-test-b-{os.getpid()}"
        names.append(second)
        port2 = free_port()
        run("podman", "run", "-d", "--name", second, "-p", f"127.0.0.1:{port2}:8000",
            "-v", f"{volume}:/var/lib/memprog", image, env=engine)
        url2 = f"http://127.0.0.1:{port2}"
        wait_health(url2)
        again = httpx.get(f"{url2}{API}/jobs/{job['id']}", headers=auth)  # the same key works
        assert again.status_code == 200 and again.json()["status"] == "completed"
        run_detail = httpx.get(f"{url2}{API}/runs/{again.json()['run_id']}", headers=auth).json()
        assert sum(r["pulses"] for r in run_detail["results"]) == record["pulses"]
    finally:
        for name in names:
            run("podman", "rm", "-f", "-t", "5", name, check=False, env=engine)
        run("podman", "volume", "rm", "-f", volume, check=False, env=engine)


def test_compose_runs_the_service_against_the_emulated_bench_in_its_own_container(engine, image):
    compose = Path(sys.executable).with_name("podman-compose")
    if not compose.exists():
        compose = Path(shutil.which("podman-compose") or "podman-compose")
    port = free_port()
    project = f"mptest{os.getpid()}"
    env = {**engine, "MEMPROG_IMAGE": image, "MEMPROG_PORT": str(port)}
    args = [str(compose), "-f", str(ROOT / "deploy" / "compose.yaml"), "-p", project]
    volumes_before = set(run("podman", "volume", "ls", "-q", env=engine).stdout.split())
    try:
        run(*args, "up", "-d", env=env, timeout=300)
        url = f"http://127.0.0.1:{port}"
        health = wait_health(url)
        assert health["backend"] == "hardware", health
        assert "EMULATED-2450" in health["instruments"]["smu"]
        assert "EMULATED-33500B" in health["instruments"]["pulser"]
        key = make_key(engine, f"{project}_memprog_1")
        answer = httpx.post(f"{url}{API}/program", timeout=120,
                            headers={"Authorization": f"ApiKey {key}"},
                            json={"targets": [{"row": 0, "col": 0, "conductance": 300e-6},
                                              {"row": 1, "col": 2, "conductance": 150e-6}],
                                  "tolerance": 0.05, "max_pulses": 20})
        assert answer.status_code == 200, answer.text
        assert answer.json()["converged"] == 2
    finally:
        run(*args, "down", "-v", "-t", "5", env=env, check=False, timeout=300)
        # the image declares VOLUME /var/lib/memprog: the emulators' container got an anonymous
        # one, which `down -v` leaves behind
        made = set(run("podman", "volume", "ls", "-q", env=engine).stdout.split()) \
            - volumes_before
        for volume in made:
            run("podman", "volume", "rm", "-f", volume, check=False, env=engine)
    left = run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
               "-q", env=engine).stdout.split()
    assert left == []
    assert set(run("podman", "volume", "ls", "-q", env=engine).stdout.split()) \
        <= volumes_before


def test_the_image_is_a_station_of_a_postgresql_lab(engine, image, postgres_url):
    """The image with MEMPROG_DATABASE=postgresql://… (the postgresql extra is in it): its key
    and its reads go to the shared database under its station's name."""
    import psycopg

    name = f"memprog-test-pg-{os.getpid()}"
    port = free_port()
    try:
        # host network: the throwaway server listens on this machine's loopback
        run("podman", "run", "-d", "--name", name, "--network", "host",
            "-e", f"MEMPROG_DATABASE={postgres_url}", "-e", "MEMPROG_STATION=image-station",
            "-e", "MEMPROG_STATE_DIR=/var/lib/memprog", image,
            "memprog", "serve", "--config", "/etc/memprog/memprog.toml",
            "--host", "127.0.0.1", "--port", str(port), env=engine)
        url = f"http://127.0.0.1:{port}"
        health = wait_health(url)
        assert health["database"] == "postgresql" and health["station"] == "image-station"
        key = make_key(engine, name)  # in the lab's one key table
        auth = {"Authorization": f"ApiKey {key}"}
        assert httpx.post(f"{url}{API}/read", headers=auth,
                          json={"cells": [[0, 0], [1, 1]]}).status_code == 200
        stations = httpx.get(f"{url}{API}/stations", headers=auth).json()["stations"]
        assert [s["name"] for s in stations] == ["image-station"]
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT station, COUNT(*) FROM operations GROUP BY station"
                                ).fetchall() == [("image-station", 2)]
            assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone() == (1,)
    finally:
        run("podman", "rm", "-f", "-t", "5", name, check=False, env=engine)
