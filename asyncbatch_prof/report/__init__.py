"""Numbers → pictures: one self-contained, offline HTML report per run, and comparisons of runs.

Figures (``figures``, ``timeline``) are separate from page assembly (``page``, ``run_report``,
``compare``); the cards show metrics.json's numbers by contract name.
"""

from asyncbatch_prof.report.compare import write_comparison
from asyncbatch_prof.report.run_report import write_report

__all__ = ["write_report", "write_comparison"]
