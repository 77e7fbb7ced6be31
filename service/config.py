"""Service configuration: environment variables (``MEMPROG_``, ``__`` for nesting) and a TOML file.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML file given
to ``memprog serve --config FILE``, the defaults below. The defaults run out of the box on the
simulator. Examples::

    MEMPROG_BACKEND=sim MEMPROG_SIM__ROWS=256 MEMPROG_SIM__COLS=256 memprog serve
    MEMPROG_LIMITS__V_SET_MAX=0.6 MEMPROG_DATABASE=/var/lib/memprog/ops.db memprog serve

    # memprog.toml
    backend = "sim"
    database = "memprog.db"
    [sim]
    rows = 64
    variability = "realistic"
    [limits]
    v_set_max = 0.8
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from drivers.limits import LimitsSchema
from service.store.database import check_station, default_station, is_postgres


class SimSettings(BaseModel):
    """The simulated crossbar (``MEMPROG_SIM__*``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rows: int = Field(64, ge=1, le=4096, description="Word lines of the simulated array.")
    cols: int = Field(64, ge=1, le=4096, description="Bit lines of the simulated array.")
    seed: int = Field(
        0, ge=0, description="Seed of the device-to-device and cycle-to-cycle draws."
    )
    variability: Literal["ideal", "d2d", "realistic"] = Field(
        "realistic",
        description="ideal: nominal devices; d2d: device-to-device spread; realistic: D2D + "
        "cycle-to-cycle variation after every pulse.",
    )
    population: Path | None = Field(
        None,
        description="Device population file (TOML: JART constants that differ from the "
        "nominal ones, in SI units, and a [variability] recipe; examples in "
        "sim_backend/populations/). Its [variability], if any, replaces `variability`. A file "
        "with an unknown constant, a non-physical value or a wrong unit scale is refused at "
        "start, naming the field. Default: the JART nominal devices.",
    )
    read_noise: float = Field(0.0, ge=0.0, le=1.0, description="Relative σ of read noise.")
    stuck_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of stuck devices.")
    state_file: Path | None = Field(
        None,
        description="If set, the array is loaded from this .npz at start (when it exists) and "
        "saved to it at shutdown, so a simulated array survives a restart.",
    )

    @field_validator("population")
    @classmethod
    def _population_loads(cls, path: Path | None) -> Path | None:
        if path is not None:
            from sim_backend.population import Population

            Population.load(path)  # ValueError naming the field of the file
        return path


class LimitsSettings(LimitsSchema):
    """Hard safety limits (``MEMPROG_LIMITS__*``): the shared schema, :mod:`drivers.limits`."""


class ServerSettings(BaseModel):
    """Where ``memprog serve`` listens (``MEMPROG_SERVER__*``; CLI flags override) and how many
    client connections it keeps, for how long (:mod:`service.connections`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field("127.0.0.1", description="Interface to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest request body, bytes; larger ones are refused (413) before they "
        "are read. Default: 1 MiB + 128 bytes per cell of the array, so a request naming "
        "every cell fits.",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Most client (TCP) connections open at once, connections. At the limit a "
        "new one closes the connection idle longest (no request in flight: never a job's "
        "progress stream or a download), or is answered 503 if every one has a request. "
        "Default: 1000, or fewer if the file descriptor limit (RLIMIT_NOFILE, raised to its "
        "hard limit at start) minus a reserve of 3 × backlog + 64 descriptors is lower; a "
        "value beyond that budget refuses to start.",
    )
    backlog: int = Field(
        128,
        ge=1,
        le=4096,
        description="Connections the kernel queues until they are accepted, connections; also "
        "the most accepted at once, so 3 × backlog descriptors are kept in reserve.",
    )
    header_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Time a connection has to send complete request headers, s: counted from "
        "when it opens and from the first byte of each later request; then it is closed.",
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Time an idle keep-alive connection stays open between requests, s.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time a request body may go without a new chunk arriving, s; then the "
        "request is refused (408) and its connection freed.",
    )


class ProgrammingSettings(BaseModel):
    """Defaults and caps of the programming loop (``MEMPROG_PROGRAMMING__*``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    v_read: float = Field(
        0.2, description="Default read voltage, V (within limits.v_read_min … v_read_max)."
    )
    max_pulses_cap: int = Field(
        1000, ge=1, description="Largest max_pulses a /program request may ask for."
    )
    read_current_floor: float = Field(
        1e-9,
        gt=0,
        description="Smallest |read current| the programming loop trusts, A: a cell reading "
        "less (an open contact, a dead device) is stopped, never pulsed blind. The default is "
        "four decades below the smallest device current at the lowest read voltage (≈ 94 µS × "
        "0.05 V ≈ 5 µA) and well above a 2450's noise on its 10 nA range.",
    )


class PredictorSettings(BaseModel):
    """The pulse predictor (``MEMPROG_PREDICTOR__*``)."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        None,
        description="ONNX model of the pulse predictor; default: the model shipped in "
        "predictor/models/default.onnx. POST /api/v1/predictor/reload reads it again.",
    )
    models_dir: Path | None = Field(
        None,
        description="Where calibrations write adapted models and where the active model is "
        "named (active.json); default: the directory 'models' beside the database.",
    )


class AuthSettings(BaseModel):
    """Access control (``MEMPROG_AUTH__*``): API keys with scopes, see :mod:`service.auth`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Require an API key (Authorization: ApiKey <key>) on every request but "
        "/api/v1/health and the docs. Off, the service only starts bound to a loopback "
        "address. Keys: memprog keys create|list|revoke, stored hashed in the database.",
    )


class ExportSettings(BaseModel):
    """``GET /export`` (``MEMPROG_EXPORTS__*``, :mod:`service.exports`): exports run on their own
    few threads, a bounded number at a time, and never hold the database or a slow client's
    connection for long."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    workers: int = Field(
        2, ge=1, le=64,
        description="Threads that do the exports' database and file work, threads (their own: "
        "exports never take the threads the rest of the service runs on).",
    )
    max_in_progress: int = Field(
        4, ge=1, le=1024,
        description="Exports in progress at once, exports (from the request to the last byte "
        "sent); one more is refused at once (429 with Retry-After).",
    )
    send_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Time a send of an export may go without the client taking data, s; then "
        "the response is ended (the client sees a truncated transfer) and its slot freed.",
    )
    page_rows: int = Field(
        5000, ge=100, le=1_000_000,
        description="Operations a CSV export reads per page, rows; each page is its own short "
        "read of the database.",
    )
    temp_dir: Path | None = Field(
        None,
        description="Directory of an HDF5 export's temporary files (a copy of the database, "
        "then the HDF5 file; both removed at once); needs room for both. "
        "Default: the system's temporary directory.",
    )


class Settings(BaseSettings):
    """Everything the service needs; see the module docstring for the sources."""

    model_config = SettingsConfigDict(
        env_prefix="MEMPROG_",
        env_nested_delimiter="__",
        extra="forbid",
        # An empty variable means "not set" (MEMPROG_SIM__STATE_FILE= turns the file off),
        # never the path ".".
        env_parse_none_str="",
    )

    backend: Literal["sim", "visa"] = Field(
        "sim", description="sim: simulated crossbar; visa: a real bench over PyVISA."
    )
    database: Path | str = Field(
        Path("memprog.db"),
        description="Where every operation is logged: an SQLite file's path (the embedded "
        "default, one station), or a PostgreSQL URL postgresql://user:password@host:port/db "
        "shared by a lab's stations (needs the postgresql extra).",
    )
    station: str = Field(
        default_factory=default_station,
        description="This service's station name (1-63 letters, digits, '.', '_', '-'; default: "
        "the host name), written on every operation, run, job, key use, device-memory entry "
        "and model activation. One service per station and database.",
    )
    state_dir: Path | None = Field(
        None,
        description="With a PostgreSQL database: the local directory of this station's side "
        "journal, lock and models (default: the working directory). With SQLite they sit "
        "beside the database file.",
    )
    heartbeat_s: float = Field(
        5.0, gt=0, le=300,
        description="s between this station's heartbeats in the stations table "
        "(GET /api/v1/stations marks a station silent after 3 missed beats).",
    )
    bench_config: Path | None = Field(
        None, description="Bench TOML for the visa backend (instruments, wiring, limits)."
    )
    sim: SimSettings = Field(default_factory=SimSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    programming: ProgrammingSettings = Field(default_factory=ProgrammingSettings)
    predictor: PredictorSettings = Field(default_factory=PredictorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    exports: ExportSettings = Field(default_factory=ExportSettings)

    @field_validator("database", mode="after")
    @classmethod
    def _path_or_url(cls, value: Path | str) -> Path | str:
        return value if is_postgres(value) else Path(value)

    @field_validator("station", mode="after")
    @classmethod
    def _station_name(cls, value: str) -> str:
        return check_station(value)

    @property
    def local_dir(self) -> Path:
        """Where this station keeps its local files (models): beside an SQLite database, else
        ``state_dir`` (default: the working directory)."""
        if is_postgres(self.database):
            return self.state_dir if self.state_dir is not None else Path.cwd()
        return Path(self.database).parent

    @model_validator(mode="after")
    def _bench_config_for_visa(self) -> Settings:
        if self.backend == "visa" and self.bench_config is None:
            raise ValueError("backend 'visa' needs bench_config (MEMPROG_BENCH_CONFIG)")
        return self

    @model_validator(mode="after")
    def _default_read_within_limits(self) -> Settings:
        v, lo, hi = self.programming.v_read, self.limits.v_read_min, self.limits.v_read_max
        if not math.isfinite(v) or not lo <= abs(v) <= hi:
            raise ValueError(
                f"programming.v_read = {v} V: the default read voltage's magnitude must lie "
                f"within limits.v_read_min = {lo} V … limits.v_read_max = {hi} V"
            )
        floor = self.programming.read_current_floor
        if floor >= self.limits.compliance:
            raise ValueError(
                f"programming.read_current_floor = {floor} A must be below limits.compliance "
                f"= {self.limits.compliance} A (no reading could be trusted)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources


NOT_SETTINGS = ("MEMPROG_HEALTH_URL", "MEMPROG_CHROMIUM", "MEMPROG_FUZZ_")
"""Variables with the prefix that are not settings (deploy/healthcheck.py, tests): exact names,
or prefixes ending in '_'."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``MEMPROG_`` variable that names no setting: a typo such as
    ``MEMPROG_LIMIT__V_SET_MAX`` would otherwise be ignored, the limit silently left as it is."""
    variables = os.environ if environ is None else environ
    known = set(Settings.model_fields)
    for key in sorted(variables):
        upper = key.upper()
        if not upper.startswith("MEMPROG_") or any(
            upper == n or (n.endswith("_") and upper.startswith(n)) for n in NOT_SETTINGS
        ):
            continue
        if upper[len("MEMPROG_"):].split("__")[0].lower() not in known:
            raise ValueError(
                f"environment variable {key} names no setting (known: "
                f"{', '.join('MEMPROG_' + k.upper() for k in sorted(known))}; nested ones "
                "with __, e.g. MEMPROG_LIMITS__V_SET_MAX)"
            )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, over the TOML ``config_file`` if given, over defaults.
    An environment variable that names no setting is refused (:func:`check_environment`)."""
    check_environment()
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return FileSettings(**overrides)
