"""Build the configured backend: the one place that knows every backend kind."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from drivers.base import Backend, Limits


class SimConfig(Protocol):
    """The simulated array to build (the service's ``sim`` settings)."""

    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def variability(self) -> str: ...
    @property
    def population(self) -> Path | None: ...
    @property
    def read_noise(self) -> float: ...
    @property
    def stuck_fraction(self) -> float: ...
    @property
    def state_file(self) -> Path | None: ...


class LimitsSource(Protocol):
    """Safety limits that give the backend its :class:`Limits`."""

    def to_limits(self) -> Limits: ...


class BackendConfig(Protocol):
    """What the factory needs to know (the service's settings have it; drivers never import
    the service): which backend, the simulated array, the bench file, the safety limits."""

    @property
    def backend(self) -> str: ...
    @property
    def sim(self) -> SimConfig: ...
    @property
    def bench_config(self) -> Path | None: ...
    @property
    def limits(self) -> LimitsSource: ...


def make_backend(settings: BackendConfig) -> Backend:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    if settings.backend == "sim":
        from drivers.sim import SimBackend

        sim = settings.sim
        return SimBackend.create(
            sim.rows,
            sim.cols,
            seed=sim.seed,
            variability=sim.variability,
            population=sim.population,
            read_noise=sim.read_noise,
            stuck_fraction=sim.stuck_fraction,
            limits=settings.limits.to_limits(),
            state_file=sim.state_file,
        )
    if settings.backend == "visa":
        # Imported here only: the bench drivers (pyvisa) are not needed on the simulator.
        from drivers.visa import open_backend

        if settings.bench_config is None:
            raise ValueError("backend 'visa' needs bench_config (MEMPROG_BENCH_CONFIG)")
        return open_backend(settings.bench_config, limits=settings.limits.to_limits())
    raise ValueError(f"unknown backend {settings.backend!r}")
