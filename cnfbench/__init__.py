"""cnfbench: benchmark continuous normalizing flows across fields, solvers and trace estimators."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cnfbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Public API for notebooks: ``cnfbench.run(...)`` (a sweep, as the command runs it),
# ``cnfbench.load_results(path)``, ``cnfbench.load_model(run, cell_id)`` and the report functions. They are
# imported on first use, so that ``import cnfbench`` stays light (no torch, pandas or matplotlib).
_EXPORTS = {
    "load_results": "cnfbench.run_folder",
    "load_run": "cnfbench.run_folder",
    "combine": "cnfbench.reports",
    "aggregate": "cnfbench.reports",
    "pivot": "cnfbench.reports",
    "to_text": "cnfbench.reports",
    "to_markdown": "cnfbench.reports",
    "to_latex": "cnfbench.reports",
    "to_csv": "cnfbench.reports",
    "to_json": "cnfbench.reports",
    "compare_runs": "cnfbench.reports",
    "merge_runs": "cnfbench.reports",
    "write_plots": "cnfbench.reports.plots",
    "write_density_artifacts": "cnfbench.run_folder",
    "load_model": "cnfbench.models",
    "write_html_report": "cnfbench.reports",
    "run": "cnfbench.cli.from_python",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnfbench' has no attribute {name!r}")
