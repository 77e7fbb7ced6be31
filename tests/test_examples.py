"""examples/digits_layer.py runs as the README shows: a digits classifier whose last layer is
programmed into a simulated array (a service it starts), within 2 points of the software one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_digits_example_programs_its_last_layer_and_classifies_with_it():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_layer.py")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    software = float(re.search(r"software classifier: ([\d.]+) %", out).group(1))
    programmed = float(re.search(r"programmed classifier: ([\d.]+) %", out).group(1))
    assert software > 90 and software - programmed <= 2.0, out
    converged, cells = map(int, re.search(r"(\d+)/(\d+) converged", out).groups())
    assert converged == cells == 320
    assert float(re.search(r"([\d.]+) nJ of programming energy", out).group(1)) > 0
    assert float(re.search(r"([\d.]+) TOPS/W", out).group(1)) > 0
