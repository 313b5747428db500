"""``fedsim sweep``: experiment files x a grid of overrides x seeds, each an ordinary run.

``spec`` reads and checks the sweep file, ``plan`` expands it into run directories,
``execute`` starts, resumes or keeps each run (in parallel processes), ``summarise``
turns the run directories into mean ± std per cell, a table, a CSV and plots.
"""

from fedsim.sweep.plan import Sweep, load_sweep
from fedsim.sweep.spec import SweepError

__all__ = ["Sweep", "SweepError", "load_sweep"]
