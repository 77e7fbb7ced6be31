"""Build the configured backend: the one place that knows every backend kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.base import Backend

if TYPE_CHECKING:
    from service.config import Settings


def make_backend(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    if settings.backend == "sim":
        from drivers.sim import SimBackend

        sim = settings.sim
        return SimBackend.create(
            sim.rows,
            sim.cols,
            seed=sim.seed,
            variability=sim.variability,
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
