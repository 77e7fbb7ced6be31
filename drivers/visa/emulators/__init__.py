"""SCPI/TSP emulators of the real bench, backed by one simulated crossbar.

Keithley 2450 (SMU), Keysight 33500B (pulse generator) and Keithley 707B (switch matrix) as
asyncio TCP servers on the loopback interface, speaking the instruments' own dialects, with a real
error queue, the physics of the wiring (output relays, 50 Ohm load setting, matrix routing,
compliance), integrity checks of every transaction and configurable fault injection.

    from drivers.visa.emulators import EmulatorRunner
    with EmulatorRunner(load_bench("deploy/bench.toml")) as emu:   # free ports
        backend = VisaBackend(emu.config)
        ...
        emu.state()["outputs_on"] == []

``memprog emulate --config bench.toml`` serves them on the configured ports.
"""

from drivers.visa.emulators.bench import EmulatedBench
from drivers.visa.emulators.instrument import Violation
from drivers.visa.emulators.runner import EmulatorRunner, FaultInjector, run_emulators

__all__ = ["EmulatedBench", "EmulatorRunner", "FaultInjector", "Violation", "run_emulators"]
