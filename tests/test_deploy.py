"""deploy/: what can be checked without a Docker engine or systemd as PID 1.

The files parse, name commands and options the ``memprog`` CLI accepts, settings
``service.config`` accepts and files that exist; and the parts run for real where they can: the
image's command and environment serve with authentication on and pass the image's health check,
the online backup copies a live database mid-job, the Dockerfile's COPY set builds a wheel that
carries the dashboard and the model, the compose topology (service + emulators, visa backend)
programs cells, ``systemd-analyze verify`` accepts the unit.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import yaml

from drivers.visa.bench import load_bench
from service.auth import exposure_problem
from service.cli import build_parser
from service.config import load_settings
from service.launch import ServerProcess, free_port, memprog_command

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
API = "/api/v1"


def cli_args(command: list[str]) -> object:
    """``command`` (starting with ``memprog`` or a path to it) parsed by the real CLI parser."""
    assert Path(command[0]).name == "memprog", command
    return build_parser().parse_args(command[1:])


# ----------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_slim_non_root_auth_on_with_healthcheck():
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    bases = [a.split()[0] for w, a in instructions if w == "FROM"]
    assert len(bases) == 2  # build stage + runtime stage
    assert all(
        base.replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) == "python:3.11-slim"
        for base in bases
    )

    stage = final_stage(instructions)
    words = [w for w, _ in stage]
    user = [a for w, a in stage if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("CMD")

    cmd = json.loads(dict(stage)["CMD"])
    args_ns = cli_args(cmd)
    assert args_ns.command == "serve" and args_ns.host == "0.0.0.0"
    env = dockerfile_env(stage)
    # serving on 0.0.0.0 needs authentication: the image turns it on
    assert exposure_problem(False, args_ns.host) is not None
    assert env["MEMPROG_AUTH__ENABLED"] == "true"
    assert env["MEMPROG_DATABASE"].startswith("/var/lib/memprog/")
    volumes = [a for w, a in stage if w == "VOLUME"]
    assert volumes and "/var/lib/memprog" in volumes[0]

    health = dict(stage)["HEALTHCHECK"]
    assert "/api/v1/health" in health and "--interval" in health
    health_cmd = json.loads(health.split("CMD", 1)[1])
    copies = {a.split()[-1]: a.split()[-2] for w, a in stage if w == "COPY" and "--from" not in a}
    assert health_cmd[1] in copies  # the health check script is in the image
    config = copies[args_ns.config]  # the config file the command names is in the image
    # the scripts put on the PATH can be run as documented (docker exec memprog memprog-backup)
    for word, arguments in stage:
        if word == "COPY" and "/usr/local/bin/" in arguments:
            assert "--chmod=0755" in arguments, arguments
    # every COPY source exists (paths relative to the build context, the repository root)
    for word, arguments in instructions:
        if word == "COPY" and "--from" not in arguments:
            for source in arguments.split()[:-1]:
                if source.startswith("--"):  # a flag such as --chmod=0755
                    continue
                assert (ROOT / source).exists(), source

    # the image's settings: the copied file under the image's environment
    settings = with_env(env, lambda: load_settings(ROOT / config))
    assert settings.auth.enabled and str(settings.database) == env["MEMPROG_DATABASE"]
    assert exposure_problem(settings.auth.enabled, args_ns.host) is None


def with_env(env: dict[str, str], make):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return make()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_dockerfile_copy_set_builds_a_wheel_with_dashboard_and_model(tmp_path):
    """The build stage copies only some paths of the repository: they must be enough for a
    (non-editable) install that carries the dashboard files and the predictor model."""
    context = tmp_path / "context"
    stage = dockerfile_instructions()
    first = stage[: [i for i, (w, _) in enumerate(stage) if w == "FROM"][1]]
    for word, arguments in first:
        if word != "COPY":
            continue
        *sources, target = arguments.split()
        for source in sources:
            src = ROOT / source
            dest = context / (source if target.endswith("/") or target == "./" else target)
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
    wheels = tmp_path / "wheels"
    # The environment's own setuptools when it is recent enough (fast, offline), else pip's
    # isolated build environment (fetches setuptools from the registry).
    try:
        recent = int(version("setuptools").split(".")[0]) >= 71
    except PackageNotFoundError:
        recent = False
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--disable-pip-version-check",
         *(["--no-build-isolation"] if recent else []), "-w", str(wheels), str(context)],
        check=True, timeout=300, capture_output=True,
    )
    (wheel,) = wheels.glob("memprog-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("service/static/index.html", "service/static/dashboard.js",
                 "service/static/dashboard.css", "predictor/models/default.onnx",
                 "service/export_hdf5.py", "drivers/visa/emulators/runner.py"):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "memprog = service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_image_command_serves_with_auth_and_passes_its_healthcheck(tmp_path):
    """The image's command and environment (bound to loopback here, on a free port): auth is on,
    the documented key command grants access, the health check script says ok, then not ok."""
    stage = final_stage(dockerfile_instructions())
    env = dockerfile_env(stage)
    env.pop("PATH", None)
    env.update(
        MEMPROG_DATABASE=str(tmp_path / "memprog.db"),
        MEMPROG_SIM__STATE_FILE=str(tmp_path / "array.npz"),
        MEMPROG_SIM__ROWS="8",
        MEMPROG_SIM__COLS="8",
    )
    healthcheck = [sys.executable, str(DEPLOY / "healthcheck.py")]
    with ServerProcess(env, config=DEPLOY / "sim.toml", log_path=tmp_path / "log") as server:
        url = f"{server.url}{API}/health"
        ok = subprocess.run([*healthcheck, url], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "memprog ok: simulated" in ok.stdout, ok.stderr
        assert httpx.get(f"{server.url}{API}/array").status_code == 401
        assert httpx.get(server.url + "/").status_code == 200  # the page itself is open
        key = subprocess.run(
            [*memprog_command(), "keys", "create", "--scope", "program", "--name", "alice",
             "--config", str(DEPLOY / "sim.toml")],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()
        answer = httpx.get(f"{server.url}{API}/array", headers={"Authorization": f"ApiKey {key}"})
        assert answer.status_code == 200 and answer.json()["rows"] == 8
    down = subprocess.run([*healthcheck, url], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "unhealthy" in down.stderr
    assert (tmp_path / "array.npz").is_file()  # the state file of the image's config


def test_online_backup_of_a_live_database_mid_job(tmp_path):
    env = {
        "MEMPROG_DATABASE": str(tmp_path / "memprog.db"),
        "MEMPROG_SIM__ROWS": "16",
        "MEMPROG_SIM__COLS": "16",
    }
    with ServerProcess(env, log_path=tmp_path / "log") as server, \
            httpx.Client(base_url=server.url, timeout=60) as api:
        targets = [{"row": r, "col": c, "conductance": 150e-6 + 1e-6 * (r + c)}
                   for r in range(16) for c in range(16)]
        job = api.post(f"{API}/jobs", json={"targets": targets, "tolerance": 0.005,
                                             "max_pulses": 300, "strategy": "fixed"}).json()
        deadline = time.monotonic() + 60
        while api.get(f"{API}/jobs/{job['id']}").json()["pulses"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        backup = tmp_path / "backups" / "memprog-backup.db"
        done = subprocess.run(
            [sys.executable, str(DEPLOY / "backup.py"), env["MEMPROG_DATABASE"], str(backup)],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        status = api.get(f"{API}/jobs/{job['id']}").json()["status"]
        assert status == "running"  # the backup was taken while the job was writing
        while api.get(f"{API}/jobs/{job['id']}").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with contextlib.closing(sqlite3.connect(env["MEMPROG_DATABASE"])) as live:
            live_ops = live.execute("SELECT COUNT(*) FROM operations").fetchone()[0]
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # self-contained
        copied = copy.execute("SELECT COUNT(*) FROM operations").fetchone()[0]
        ids = [r[0] for r in copy.execute("SELECT id FROM operations ORDER BY id")]
        copied_job = copy.execute("SELECT status FROM jobs").fetchone()[0]
    finally:
        copy.close()
    assert 0 < copied < live_ops  # a snapshot from the middle of the job ...
    assert ids == list(range(1, copied + 1))  # ... and a consistent one (no torn prefix)
    assert copied_job == "running"
    assert f"{copied} operations" in done.stdout
    assert not list(backup.parent.glob(".*partial"))


# -------------------------------------------------------------------------------- systemd unit


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / "memprog.service").read_text())
    return unit


def test_systemd_unit():
    unit = read_unit()
    service = unit["Service"]
    assert service["User"] == service["Group"] == "memprog"
    assert service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "memprog"
    assert service["WorkingDirectory"] == "/var/lib/memprog"
    assert "MEMPROG_DATABASE=/var/lib/memprog/" in service["Environment"]
    command = shlex.split(service["ExecStart"])
    args = cli_args(command)
    assert args.command == "serve"
    assert args.config.startswith(f"/etc/{service['ConfigurationDirectory']}/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    sysusers = (DEPLOY / "memprog.sysusers.conf").read_text()
    assert re.search(r"^u memprog - .* /var/lib/memprog ", sysusers, re.MULTILINE)

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the parse above is all a machine without systemd can check
    memprog = Path(sys.executable).with_name("memprog")
    checked = Path(os.environ.get("TMPDIR", "/tmp")) / f"memprog-unit-{os.getpid()}"
    checked.mkdir(exist_ok=True)
    path = checked / "memprog.service"
    # the same unit, its binary where this machine has it: nothing else may be criticised
    path.write_text((DEPLOY / "memprog.service").read_text().replace(command[0], str(memprog)))
    try:
        result = subprocess.run([analyze, "verify", str(path)], capture_output=True,
                                text=True, timeout=60)
    finally:
        shutil.rmtree(checked)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


# ---------------------------------------------------------------------------- example configs


def test_example_settings_files():
    sim = load_settings(DEPLOY / "sim.toml")
    assert sim.backend == "sim" and not sim.auth.enabled and sim.server.host == "127.0.0.1"
    assert str(sim.database).startswith("/var/lib/memprog/")
    hardware = load_settings(DEPLOY / "hardware.toml")
    assert hardware.backend == "visa" and hardware.auth.enabled
    assert hardware.bench_config.name == "bench-lab.toml"

    lab = load_bench(DEPLOY / hardware.bench_config.name)
    assert lab.matrix is not None  # 2450 + 33500B + 707B
    for instrument in (lab.smu, lab.pulser, lab.matrix):
        host, _ = instrument.socket_address()
        assert host.startswith("192.0.2.")  # documentation placeholders, never the emulators
    assert lab.emulator.faults == ()
    emulated = load_bench(DEPLOY / "bench.toml")
    assert all(i.socket_address()[0] == "127.0.0.1"
               for i in (emulated.smu, emulated.pulser, emulated.matrix))


# --------------------------------------------------------------------------------- compose


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_names_what_exists():
    services = compose()["services"]
    emulators, memprog = services["emulators"], services["memprog"]
    for service in (emulators, memprog):
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), volume
    emulate = cli_args(emulators["command"])
    assert emulate.command == "emulate"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in emulators["volumes"]}
    bench = load_bench(DEPLOY / mounted[emulate.config])
    smu_port = bench.smu.socket_address()[1]
    assert str(smu_port) in " ".join(emulators["healthcheck"]["test"])

    serve = cli_args(memprog["command"])
    assert serve.command == "serve"
    # the emulators listen on loopback only: the service shares their network namespace, and
    # its port is published there
    assert memprog["network_mode"] == f"container:{emulators['container_name']}"
    assert any(p.endswith(f":{serve.port}") for p in emulators["ports"])
    env = {k: str(v) for k, v in memprog["environment"].items()}
    assert env["MEMPROG_BENCH_CONFIG"] in {v.split(":")[1] for v in memprog["volumes"]}
    settings = with_env(
        {**env, "MEMPROG_BENCH_CONFIG": str(DEPLOY / "bench.toml")},
        lambda: load_settings(DEPLOY / "sim.toml"),
    )
    assert settings.backend == "visa" and settings.auth.enabled
    assert exposure_problem(settings.auth.enabled, serve.host) is None


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def emulated_bench(tmp_path: Path) -> Iterator[Path]:
    """``memprog emulate`` on deploy/bench.toml (as the compose file runs it), moved to free
    ports; yields the bench file the service should use."""
    text = (DEPLOY / "bench.toml").read_text()
    ports = {}
    for old in sorted(set(re.findall(r"127\.0\.0\.1::(\d+)::SOCKET", text))):
        ports[old] = free_port()
        text = text.replace(f"127.0.0.1::{old}::SOCKET", f"127.0.0.1::{ports[old]}::SOCKET")
    bench = tmp_path / "bench.toml"
    bench.write_text(text)
    log = open(tmp_path / "emulators.log", "wb")
    process = subprocess.Popen([*memprog_command(), "emulate", "--config", str(bench)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports.values():
            wait_for_port(port)
        yield bench
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def test_compose_topology_programs_cells_on_the_emulated_bench(tmp_path):
    """The compose file's two processes, without Docker: the emulators from deploy/bench.toml
    and the service with the compose environment (visa backend) — on loopback, free ports."""
    memprog = compose()["services"]["memprog"]
    with emulated_bench(tmp_path) as bench:
        env = {k: str(v) for k, v in memprog["environment"].items()}
        env.update(MEMPROG_BENCH_CONFIG=str(bench), MEMPROG_DATABASE=str(tmp_path / "m.db"),
                   MEMPROG_AUTH__ENABLED="false")
        with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
                httpx.Client(base_url=server.url, timeout=120) as api:
            health = api.get(f"{API}/health").json()
            assert health["status"] == "ok" and health["backend"] == "hardware"
            assert all("EMULATED" in identity for identity in health["instruments"].values())
            run = api.post(f"{API}/program", json={
                "targets": [{"row": 0, "col": c, "conductance": 200e-6} for c in range(4)],
                "tolerance": 0.05, "max_pulses": 60, "strategy": "ispp",
            })
            assert run.status_code == 200, run.text
            assert run.json()["converged"] >= 3
            assert api.get(f"{API}/array/map").json()["cells_read"] == 4


# ------------------------------------------------------------------------ operations guide


def guide_commands(text: str) -> list[list[str]]:
    """Every ``memprog <subcommand> ...`` line inside the guide's code blocks."""
    commands = []
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        line = line.split(" #", 1)[0].strip()
        match = re.search(r"(?:^|\s|/)(memprog\s+(?:serve|keys|emulate|train|bench|db)\b.*)", line)
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def test_operations_guide_commands_and_endpoints_exist(sim_settings):
    from service.app import create_app

    text = (DEPLOY / "OPERATIONS.md").read_text()
    commands = guide_commands(text)
    assert {c[1] for c in commands} >= {"keys", "train", "db"}
    for command in commands:
        cli_args(command)  # SystemExit (a wrong option) fails the test
    assert {c[2] for c in commands if c[1] == "keys"} == {"list", "create", "revoke"}

    routes = set(create_app(sim_settings).openapi()["paths"])
    for path in set(re.findall(r"(/api/v1/[a-z/-]+)", text)):
        assert path.rstrip("/") in routes, path
    assert "/api/v1/predictor/reload" in text and "backup.py" in text
    for name in re.findall(r"`((?:deploy/)?[\w.-]+\.(?:toml|py|yaml|service|conf))`", text):
        assert (ROOT / name).is_file() or (DEPLOY / name).is_file(), name
