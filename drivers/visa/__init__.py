"""VISA drivers for the real bench: Keithley 2450, Keysight 33500B, Keithley 707B.

``open_backend(path)`` is what the service's factory calls for ``MEMPROG_BACKEND=visa``.
pyvisa is imported only when an instrument is first opened.
"""

from __future__ import annotations

from pathlib import Path

from drivers.visa.bench import BenchConfig, load_bench, parse_bench


def open_backend(path: str | Path):
    """A :class:`~drivers.visa.backend.VisaBackend` for the bench configuration at ``path``.

    No I/O happens here: the instruments are connected on first use (``describe``, a read, a
    pulse), so a service can start before its bench is reachable and report it as unavailable.
    """
    from drivers.visa.backend import VisaBackend

    return VisaBackend(load_bench(path))


__all__ = ["BenchConfig", "load_bench", "open_backend", "parse_bench"]
