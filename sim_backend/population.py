"""Device populations: what devices a simulated array holds, written as a TOML file.

A lab's devices differ from the JART VCM v1b nominal set — another filament radius or disc
length, another activation energy, a heated chuck, another spread. A population names the
constants that differ and the variability recipe::

    name = "hot chuck"
    [nominal]            # JART constants to override (SI: K, eV, m, Ohm, K/W); the rest nominal
    T0 = 330.0
    r = 42e-9
    [variability]
    preset = "realistic" # the D2D/C2C recipe of a preset; d2d_sigma, c2c may override it

``[nominal]`` keys are fields of :class:`sim_backend.jart.JartConstants`. Four of them vary from
device to device (``r``, ``l_disc``, ``N_max``, ``N_min``, :mod:`sim_backend.variability`): for
those the value moves the *centre* of the distribution the devices are drawn from (bounds keep
their relative spans: ±10 % for r, l_disc and N_max, ±50 % for N_min). The thermal resistance
R_th0 stays given at the reference radius of 45 nm (T = T0 + P R_th0 (r_ref / r)², the JART
scaling): a thinner filament is hotter. The operating bounds ``N_lo``/``N_hi`` are those of the
current fit (the conductance window) and cannot be changed.

A file is refused (``ValueError`` naming the field) for an unknown key, a value that is not a
finite number, a non-physical value, or a value outside the plausible window of its unit
(:data:`PLAUSIBLE`) — e.g. ``r = 42`` (metres, not nanometres) or ``T0 = 57`` (kelvin, not °C).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sim_backend.jart import NOMINAL, JartConstants
from sim_backend.variability import NOMINAL_VALUES, PARAMETERS, PRESETS, Variability

PLAUSIBLE: dict[str, tuple[float, float, str, str]] = {
    # name: (lowest, highest, unit, an example in that unit)
    "T0": (200.0, 500.0, "K", "293.0"),
    "dWA": (0.3, 3.0, "eV", "1.35"),
    "a": (0.05e-9, 2e-9, "m", "0.25e-9"),
    "nu0": (1e10, 1e16, "Hz", "2e13"),
    "z_VO": (1.0, 3.0, "1", "2.0"),
    "mu_n": (1e-8, 1e-2, "m^2/(V s)", "4e-6"),
    "l_cell": (0.5e-9, 50e-9, "m", "3e-9"),
    "R_th0": (1e4, 1e9, "K/W", "15.72e6"),
    "R_th_reset_scale": (0.01, 1.0, "1", "0.27"),
    "R_TiOx": (0.0, 1e5, "Ohm", "650.0"),
    "R0": (0.0, 1e5, "Ohm", "719.2"),
    "R_th_line": (0.0, 1e8, "K/W", "90471.0"),
    "alpha_line": (0.0, 0.1, "1/K", "3.92e-3"),
    "N_plug": (1.0, 100.0, "1e26 m^-3", "20.0"),
    # the device-to-device parameters: the centre of their distribution
    "r": (5e-9, 500e-9, "m", "45e-9"),
    "l_disc": (0.05e-9, 50e-9, "m", "0.4e-9"),
    "N_max": (2.5, 100.0, "1e26 m^-3", "20.0"),
    "N_min": (1e-4, 0.05, "1e26 m^-3", "0.008"),
}
"""The constants a population may set, each with its plausible window: a value outside is
refused as a likely wrong unit (or a non-physical device)."""

FIXED = ("N_lo", "N_hi")
"""Constants a population cannot change (the operating window of the current fit)."""


@dataclass(frozen=True)
class Centre:
    """Centre of the device-to-device distributions (the population's nominal device)."""

    N_max: float = NOMINAL_VALUES["N_max"]  # 1e26 m^-3
    N_min: float = NOMINAL_VALUES["N_min"]  # 1e26 m^-3
    r: float = NOMINAL_VALUES["r"]  # m
    l_disc: float = NOMINAL_VALUES["l_disc"]  # m

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in PARAMETERS}


@dataclass(frozen=True)
class Population:
    """A device population (see the module docstring).

    ``constants``: the JART constants of the dynamics (T0, dWA, …; its ``r`` stays the 45 nm
    reference of R_th0). ``centre``: the device-to-device centre. ``variability``: the recipe
    from the file's ``[variability]``, or None when the file has none (the array's own
    ``variability`` setting then applies).
    """

    name: str = "nominal"
    constants: JartConstants = NOMINAL
    centre: Centre = field(default_factory=Centre)
    variability: Variability | None = None
    overrides: tuple[tuple[str, float], ...] = ()  # what the file set, in its order

    @property
    def is_nominal(self) -> bool:
        return not self.overrides

    # ------------------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | os.PathLike) -> Population:
        """Read a population file; ``ValueError`` naming the field (and the file)."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"population {path}: cannot be read ({exc})") from exc
        try:
            return cls.from_dict(doc, default_name=path.stem)
        except ValueError as exc:
            raise ValueError(f"population {path}: {exc}") from exc

    @classmethod
    def from_dict(cls, doc: dict, *, default_name: str = "population") -> Population:
        unknown = set(doc) - {"name", "nominal", "variability"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}; expected name, [nominal], "
                             "[variability]")
        name = doc.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise ValueError("name: must be a non-empty string")
        nominal = doc.get("nominal", {})
        if not isinstance(nominal, dict):
            raise ValueError("nominal: must be a table of constants")
        overrides = []
        for key, value in nominal.items():
            overrides.append((key, _checked(key, value)))
        values = dict(overrides)
        if values.get("N_min", NOMINAL_VALUES["N_min"]) >= values.get("N_max",
                                                                      NOMINAL_VALUES["N_max"]):
            raise ValueError("nominal.N_min: must be below N_max")
        constants = replace(NOMINAL, **{k: v for k, v in values.items()
                                        if k not in PARAMETERS})
        centre = Centre(**{k: v for k, v in values.items() if k in PARAMETERS})
        return cls(name=name.strip(), constants=constants, centre=centre,
                   variability=_variability(doc["variability"]) if "variability" in doc
                   else None, overrides=tuple(overrides))

    def to_dict(self) -> dict:
        """The file's content (round-trips through :meth:`from_dict`)."""
        out: dict = {"name": self.name, "nominal": dict(self.overrides)}
        if self.variability is not None:
            out["variability"] = asdict(self.variability)
        return out


NOMINAL_POPULATION = Population()


def _checked(key: str, value: object) -> float:
    where = f"nominal.{key}"
    if key in FIXED:
        raise ValueError(f"{where}: the operating window N_lo … N_hi belongs to the current "
                         "fit and cannot be changed by a population")
    if key not in PLAUSIBLE:
        known = ", ".join(sorted(PLAUSIBLE))
        raise ValueError(f"{where}: unknown constant; one of {known}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    lo, hi, unit, example = PLAUSIBLE[key]
    v = float(value)
    if not lo <= v <= hi:
        raise ValueError(f"{where} = {v:g} {unit} is outside the plausible range [{lo:g}, "
                         f"{hi:g}] {unit}: expected {unit}, e.g. {key} = {example}")
    return v


def _variability(table: object) -> Variability:
    if not isinstance(table, dict):
        raise ValueError("variability: must be a table")
    unknown = set(table) - {"preset", "d2d_sigma", "c2c"}
    if unknown:
        raise ValueError(f"variability.{sorted(unknown)[0]}: unknown field; expected preset, "
                         "d2d_sigma, c2c")
    preset = table.get("preset", "ideal")
    if preset not in PRESETS:
        raise ValueError(f"variability.preset: {preset!r} is not one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    sigma = table.get("d2d_sigma", base.d2d_sigma)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not (math.isfinite(sigma) and 0 <= sigma <= 10):
        raise ValueError(f"variability.d2d_sigma: a relative σ in [0, 10], got {sigma!r}")
    c2c = table.get("c2c", base.c2c)
    if not isinstance(c2c, bool):
        raise ValueError(f"variability.c2c: true or false, got {c2c!r}")
    return Variability(float(sigma), c2c)


def resolve_population(population: str | os.PathLike | Population | None) -> Population:
    """None (the nominal population), a file path, or a :class:`Population`."""
    if population is None:
        return NOMINAL_POPULATION
    if isinstance(population, Population):
        return population
    return Population.load(population)


def shipped() -> dict[str, Path]:
    """The example populations shipped in ``sim_backend/populations``, by file stem."""
    folder = Path(__file__).resolve().parent / "populations"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


__all__ = ["FIXED", "NOMINAL_POPULATION", "PLAUSIBLE", "Centre", "Population",
           "resolve_population", "shipped"]
