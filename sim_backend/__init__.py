"""The simulated crossbar: JART VCM v1b physics, variability, and the Crossbar itself.

SET (conductance rises) at negative voltage, RESET at positive voltage; SI units.
"""

from sim_backend.crossbar import Crossbar
from sim_backend.variability import PRESETS, Variability

__all__ = ["PRESETS", "Crossbar", "Variability"]
