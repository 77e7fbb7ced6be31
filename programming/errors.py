"""Domain errors of the programming core. They say what went wrong in the core's terms; the
service maps them to HTTP in its one table (``service/errors.py``).

Their HTTP answers are in ``service/errors.py`` (the same concept on the service's side).
"""

from __future__ import annotations

from collections.abc import Sequence


class InvalidRequest(ValueError):
    """A request a strategy cannot carry out, found before anything is queued or fired: names the
    field (``loc``, a path into the request body), what is wrong, its kind (``limit``,
    ``value_error``) and the limit broken, if any."""

    def __init__(self, loc: Sequence[str | int], msg: str, kind: str,
                 limit: float | None = None):
        super().__init__(msg)
        self.loc = list(loc)
        self.msg = msg
        self.kind = kind
        self.limit = limit


class StrategyFailure(RuntimeError):
    """A strategy failed in the middle of a run (a bug, not bad input: requests are checked by
    :meth:`Strategy.validate` before the run). The run is recorded ``failed`` with every
    operation it made."""
