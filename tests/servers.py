"""Environment for a ``memprog serve`` subprocess on a realistic simulated array (the tests that
run the service under uvicorn share it)."""

from __future__ import annotations

from pathlib import Path


def sim_server_env(database: Path, *, rows: int, cols: int, seed: int, **extra: str
                   ) -> dict[str, str]:
    return {
        "MEMPROG_BACKEND": "sim",
        "MEMPROG_SIM__ROWS": str(rows),
        "MEMPROG_SIM__COLS": str(cols),
        "MEMPROG_SIM__SEED": str(seed),
        "MEMPROG_SIM__VARIABILITY": "realistic",
        "MEMPROG_DATABASE": str(database),
        **extra,
    }


def visa_server_env(bench_toml: str, directory: Path, database: str = "visa.db", **extra: str
                    ) -> dict[str, str]:
    """Environment for ``memprog serve`` on an emulated VISA bench: writes the bench file
    (``EmulatorRunner.config.to_toml()``) into ``directory``."""
    bench = directory / "bench.toml"
    bench.write_text(bench_toml)
    return {
        "MEMPROG_BACKEND": "visa",
        "MEMPROG_BENCH_CONFIG": str(bench),
        "MEMPROG_DATABASE": str(directory / database),
        **extra,
    }
