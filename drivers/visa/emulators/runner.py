"""asyncio TCP servers for the emulated instruments, fault injection, and runners.

One server per instrument on the loopback interface (``127.0.0.1``; port 0 picks a free port),
line-terminated (``\\n``) like a raw SCPI socket (``TCPIP0::<host>::<port>::SOCKET``).

Faults (from the bench file's ``[[emulator.faults]]`` or :meth:`EmulatorRunner.inject`), each
bounded by its ``count``:

* ``slow``: the message is executed, the reply comes ``delay`` seconds late;
* ``drop``: the connection is closed without executing the message;
* ``garbage``: the message is executed, the reply replaced by bytes that are no reply;
* ``error``: an instrument error is queued before the message is executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import threading
from dataclasses import dataclass

from drivers.visa.bench import BenchConfig, FaultConfig, load_bench
from drivers.visa.emulators.bench import EmulatedBench

log = logging.getLogger("memprog.emulators")

GARBAGE = b"\xff\xfe#\x00garbage\xc3(\n"
MAX_LINE = 64 * 1024


@dataclass
class _ActiveFault:
    spec: FaultConfig
    skip: int
    left: int
    fired: int = 0


class FaultInjector:
    """The pending faults; :meth:`take` decides, message by message, which one fires."""

    def __init__(self, faults=()):
        self._faults: list[_ActiveFault] = []
        self._lock = threading.Lock()
        for f in faults:
            self.add(f)

    def add(self, spec: FaultConfig) -> None:
        with self._lock:
            self._faults.append(_ActiveFault(spec, spec.after, spec.count))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, role: str, message: str, expects_reply: bool) -> FaultConfig | None:
        text = message.upper()
        with self._lock:
            for f in self._faults:
                s = f.spec
                if f.left <= 0 or s.instrument != role or (s.match and s.match.upper() not in text):
                    continue
                if s.kind == "garbage" and not expects_reply:
                    continue
                if f.skip > 0:
                    f.skip -= 1
                    continue
                f.left -= 1
                f.fired += 1
                return s
        return None

    def pending(self) -> int:
        with self._lock:
            return sum(f.left for f in self._faults)

    def fired(self) -> int:
        with self._lock:
            return sum(f.fired for f in self._faults)


def _expects_reply(message: str) -> bool:
    return "?" in message or "print(" in message


def _check_loopback(host: str) -> str:
    h = "127.0.0.1" if host.lower() == "localhost" else host
    try:
        if not ipaddress.ip_address(h).is_loopback:
            raise ValueError
    except ValueError:
        raise ValueError(f"the emulators listen on loopback only, not on {host!r}") from None
    return h


class BenchServers:
    """The asyncio servers of one :class:`EmulatedBench` (run inside an event loop)."""

    def __init__(self, bench: EmulatedBench, faults: FaultInjector, *, free_ports: bool = False):
        self.bench = bench
        self.faults = faults
        self.free_ports = free_ports
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        for role, inst in self.bench.instruments().items():
            cfg = self.bench.config.instrument(role)
            address = cfg.socket_address() if cfg is not None else None
            if address is None:
                raise ValueError(f"{role}: {cfg.resource if cfg else '?'} is not a "
                                 "TCPIP::<host>::<port>::SOCKET resource")
            host = _check_loopback(address[0])
            port = 0 if self.free_ports else address[1]
            server = await asyncio.start_server(
                functools.partial(self._serve, inst), host, port, limit=MAX_LINE
            )
            self.servers[role] = server
            self.addresses[role] = server.sockets[0].getsockname()[:2]

    def resources(self) -> dict[str, str]:
        return {role: f"TCPIP0::{h}::{p}::SOCKET" for role, (h, p) in self.addresses.items()}

    async def stop(self) -> None:
        for server in self.servers.values():
            server.close()
        for w in list(self._writers):
            w.close()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, inst, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        conn = next(self._conn_ids)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        with self.bench.lock:
            inst.connection_opened(conn)
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    break
                message = raw.decode("ascii", "replace").rstrip("\r\n")
                fault = self.faults.take(inst.role, message, _expects_reply(message))
                if fault is not None:
                    log.info("%s: injecting %s on %r", inst.role, fault.kind, message)
                if fault is not None and fault.kind == "drop":
                    break
                with self.bench.lock:
                    if fault is not None and fault.kind == "error":
                        code, _, text = fault.error.partition(",")
                        inst.errors.push(int(code), text.strip().strip('"'))
                    reply, delay = inst.process(message, conn)
                if fault is not None and fault.kind == "slow":
                    delay += fault.delay
                if delay > 0:
                    await asyncio.sleep(delay)
                if reply is not None:
                    data = GARBAGE if fault is not None and fault.kind == "garbage" else (
                        reply.encode("ascii", "replace") + b"\n")
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with self.bench.lock:
                inst.connection_closed(conn)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)


class EmulatorRunner:
    """Emulated bench + servers on an event loop in a background thread (for tests, benchmarks).

    ``free_ports=True`` ignores the configured ports and takes free ones; :attr:`config` is then
    the bench configuration pointing at them.
    """

    def __init__(self, config: BenchConfig, *, crossbar=None, free_ports: bool = True):
        self.bench = EmulatedBench(config, crossbar)
        self.faults = FaultInjector(config.emulator.faults)
        self._servers = BenchServers(self.bench, self.faults, free_ports=free_ports)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.config = config

    def start(self) -> EmulatorRunner:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._servers.start())
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._servers.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="memprog-emulators", daemon=True)
        self._thread.start()
        if not ready.wait(10.0):
            raise RuntimeError("the emulators did not start within 10 s")
        if failure:
            raise failure[0]
        self.config = self.config.with_resources(self._servers.resources())
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        self._loop = self._thread = None

    def __enter__(self) -> EmulatorRunner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- for tests --------------------------------------------------------------------------------

    @property
    def resources(self) -> dict[str, str]:
        return self._servers.resources()

    def inject(self, fault: FaultConfig | None = None, **fields) -> FaultConfig:
        """Add a fault: a FaultConfig, or its fields (``instrument=``, ``kind=``, ...)."""
        spec = fault if fault is not None else FaultConfig(**fields)
        self.faults.add(spec)
        return spec

    def state(self) -> dict:
        return self.bench.snapshot()

    def outputs_off(self) -> bool:
        with self.bench.lock:
            return not (self.bench.smu.output or self.bench.pulser.output)


async def serve_forever(config: BenchConfig, *, crossbar=None) -> None:
    """Run the emulated bench until cancelled, on the configured loopback ports."""
    bench = EmulatedBench(config, crossbar)
    servers = BenchServers(bench, FaultInjector(config.emulator.faults))
    await servers.start()
    for role, resource in servers.resources().items():
        print(f"{role:7s} {bench.instruments()[role].idn}\n        {resource}", flush=True)
    print("emulators running; Ctrl-C stops them", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await servers.stop()


def run_emulators(config_path: str) -> int:
    """``memprog emulate --config bench.toml``: serve until interrupted."""
    config = load_bench(config_path)
    try:
        asyncio.run(serve_forever(config))
    except KeyboardInterrupt:
        pass
    return 0


__all__ = ["BenchServers", "EmulatorRunner", "FaultInjector", "run_emulators"]
