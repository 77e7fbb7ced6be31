"""VISA drivers for the real bench: Keithley 2450, Keysight 33500B, Keithley 707B.

``open_backend(path)`` is what the service's factory calls for ``MEMPROG_BACKEND=visa``.
pyvisa is imported only when an instrument is first opened.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from drivers.base import Limits, stricter
from drivers.visa.bench import BenchConfig, LimitsConfig, load_bench, parse_bench


def open_backend(path: str | Path, limits: Limits | None = None):
    """A :class:`~drivers.visa.backend.VisaBackend` for the bench configuration at ``path``.

    ``limits`` (the service's configured ones) tighten the bench file's: the instruments are
    programmed with the stricter of the two (the 2450's current limit included), not only the
    service's checks.

    No I/O happens here: the instruments are connected on first use (``describe``, a read, a
    pulse), so a service can start before its bench is reachable and report it as unavailable.
    """
    from drivers.visa.backend import VisaBackend

    bench = load_bench(path)
    if limits is not None:
        both = stricter(bench.limits.to_limits(), limits)
        bench = bench.model_copy(update={"limits": LimitsConfig(**dataclasses.asdict(both))})
    return VisaBackend(bench)


__all__ = ["BenchConfig", "load_bench", "open_backend", "parse_bench"]
