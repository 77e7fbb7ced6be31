"""The strategy contract and the registry: a *strategy* chooses programming pulses, the loop
(:mod:`programming.loop`) does everything else.

Strategies are vectorised over cells: a :class:`Planner` gets arrays and returns arrays, no
per-device Python loop. A new strategy is one file::

    @dataclass(frozen=True)
    class MyStrategy(Strategy):
        # its docstring's first line is its summary in GET /array
        def begin(self, target, limits): return MyPlanner(...)

and one registration line where the strategies are assembled — ``programming/__init__.py``
(``register_strategy("mine")(MyStrategy)``), or ``service/app.py`` for one that needs the
service (the pulse predictor's).

Sign convention: SET (G rises) at negative voltage, RESET (G falls) at positive voltage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from drivers.base import Limits


class Planner(ABC):
    """The pulse chooser of one programming run; it may keep per-cell state between calls."""

    @abstractmethod
    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pulses for the cells ``idx`` (indices into the run's targets) whose conductance is
        now ``g`` (S). Returns ``(voltage, width)`` per cell, in V and s, within the limits.

        Called once per iteration with the cells still to be programmed; a cell's previous
        call tells what its last pulse was, ``g`` what it did.
        """

    def one_shot(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called before the single ``choose`` of a run without verify (no feedback will come);
        a planner may then choose differently (the predictor uses its one-shot prior)."""

    # Device memory: what a planner learns about each device, kept per cell in the database
    # across runs (the predictor: the device's speed latent), so that the next run on the cell
    # starts from it instead of from a blind guess.
    memory_key: str | None = None
    """What the remembered values are (e.g. the model that inferred them); None: nothing."""

    def recall(self, values: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Before the first ``choose``: the values remembered for the run's cells (NaN: none)."""

    def remember(self, g: np.ndarray) -> np.ndarray | None:
        """After the last verify read ``g`` (S, every cell of the run): the values to keep per
        cell (NaN: nothing learned), or None to keep nothing."""
        return None


class Strategy(ABC):
    """A way of choosing programming pulses. Instances are immutable, tuned configurations."""

    name: str = ""
    summary: str = ""

    @abstractmethod
    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        """A planner for a run towards ``target`` (S, one entry per cell) within ``limits``."""

    def validate(  # noqa: B027 - optional hook, accepts everything by default
        self, target: np.ndarray, limits: Limits, v_read: float
    ) -> None:
        """Refuse a request this strategy cannot carry out, before anything is queued or fired:
        raise :class:`programming.errors.InvalidRequest` naming the field. A run that starts
        must not fail on its request half-way (its pulses would be fired already)."""


_STRATEGIES: dict[str, type[Strategy]] = {}
_DEFAULT: list[str] = []


def register_strategy(name: str, summary: str = "") -> Callable:
    """Class decorator: make ``name`` selectable in ``/program`` (``strategy`` field)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        cls.summary = summary or (cls.__doc__ or "").strip().splitlines()[0]
        _STRATEGIES[name] = cls
        return cls

    return decorate


def set_default_strategy(name: str) -> None:
    """The strategy a ``/program`` request gets when it names none."""
    if name not in _STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}")
    _DEFAULT[:] = [name]


def default_strategy() -> str:
    return _DEFAULT[0]


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)


def strategy_summaries() -> dict[str, str]:
    return {name: _STRATEGIES[name].summary for name in strategy_names()}


def get_strategy(name: str) -> Strategy:
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(strategy_names())}") from None
