"""cnfbench: benchmark continuous normalizing flows across fields, solvers and trace estimators."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cnfbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Public API for notebooks: ``cnfbench.load_results(path)`` and the report functions. They are
# imported on first use, so that ``import cnfbench`` stays light (no pandas or matplotlib).
_EXPORTS = {
    "load_results": "cnfbench.results",
    "load_run": "cnfbench.report",
    "combine": "cnfbench.report",
    "aggregate": "cnfbench.report",
    "pivot": "cnfbench.report",
    "to_text": "cnfbench.report",
    "to_markdown": "cnfbench.report",
    "to_latex": "cnfbench.report",
    "to_csv": "cnfbench.report",
    "to_json": "cnfbench.report",
    "compare_runs": "cnfbench.compare",
    "merge_runs": "cnfbench.merge",
    "write_plots": "cnfbench.plots",
    "write_density_artifacts": "cnfbench.plots",
    "write_html_report": "cnfbench.html_report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnfbench' has no attribute {name!r}")
