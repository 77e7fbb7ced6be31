"""The simulated crossbar: JART VCM v1b physics, variability, and the Crossbar itself.

SET (conductance rises) at negative voltage, RESET at positive voltage; SI units.
"""

from sim_backend.crossbar import RANGES, Crossbar, SimulatorRanges
from sim_backend.variability import PRESETS, Variability

__all__ = ["PRESETS", "RANGES", "Crossbar", "SimulatorRanges", "Variability"]
