"""``cnfbench report RUN --published``: a protocol run's numbers beside the paper's, as text, LaTeX and a page.

Per published number of the protocol (:func:`cnfbench.protocols.published_table`): the group and
configuration, the paper's value with its ±, the run's mean ± std over its seeds, the difference in the
number's unit and the verdict; then the protocol's sources, notes, deviations and the rows cnfbench cannot
express, so that the table is never read without them.
"""

from __future__ import annotations

import math

import pandas as pd

from cnfbench.protocols import ProtocolSpec
from cnfbench.reports.escape import latex_escape, terminal_escape
from cnfbench.text_tables import fold_table, wrap_text


def _fixed(value: float, sign: bool = False) -> str:
    return (f"{value:+.3f}" if sign else f"{value:.3f}") if math.isfinite(value) else "—"


def body(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The table's headers and rows as display strings (one place for the text and the LaTeX)."""
    headers = ["group", "configuration", "column", "unit", "paper", "±", "ours", "std", "seeds", "ours - paper",
               "verdict"]
    rows = [[str(r.group), str(r.configuration), str(r.column), str(r.unit), _fixed(r.paper), _fixed(r.paper_pm),
             _fixed(r.ours_mean), _fixed(r.ours_std), str(int(r.seeds)), _fixed(r.difference, sign=True),
             short_verdict(str(r.verdict))]
            for r in table.itertuples()]
    return headers, rows


def short_verdict(verdict: str) -> str:
    """The verdict as the table shows it: ``n/c`` for not comparable, ``*`` after one of a deviated run."""
    text = "n/c" if verdict.startswith("not comparable") else verdict
    return text.replace(" (deviated)", " *")


def reasons(table: pd.DataFrame) -> list[str]:
    """Why a verdict is missing or qualified, each reason once."""
    return list(dict.fromkeys(str(why) for why in table.get("why", []) if why))


def caption(spec: ProtocolSpec) -> str:
    return (f"Protocol {spec.name}: {spec.title}. Paper: the published value and its ± as the paper gives it; "
            "ours: the mean and sample std over this run's finished seeds; ours - paper in the number's unit; "
            "verdict: within ± (|ours - paper| <= the paper's ±), within tolerance (<= the protocol's stated "
            "tolerance), off, n/c (not comparable) or not run, with why below the table; * marks a run that "
            "deviated from the protocol.")


def context(spec: ProtocolSpec) -> list[str]:
    """The protocol's sources, notes, deviations and inexpressible rows, one line each."""
    return [*(f"source: {text}" for text in spec.sources), *(f"note: {text}" for text in spec.notes),
            *(f"deviation: {text}" for text in spec.deviations),
            *(f"not expressible: {text}" for text in spec.not_expressible)]


def to_text(spec: ProtocolSpec, table: pd.DataFrame, width: int | None = None) -> str:
    if spec.kind == "visual" or table.empty:
        parts = [wrap_text(terminal_escape(f"Protocol {spec.name}: {spec.title}. It publishes figures, not "
                                           "numbers: compare `cnfbench report RUN --plots` with the figure its "
                                           "sources name."), width)]
    else:
        parts = [wrap_text(terminal_escape(caption(spec)), width)]
        headers, rows = body(table)
        parts.append(fold_table(headers, [[terminal_escape(v) for v in row] for row in rows], 2, width))
        parts.extend(wrap_text(terminal_escape(f"why: {line}"), width) for line in reasons(table))
        parts.extend(wrap_text(terminal_escape(f"{r.group} {r.configuration} {r.column}: {r.notes} ({r.source})"),
                               width) for r in table.itertuples() if r.notes)
    parts.extend(wrap_text(terminal_escape(line), width) for line in context(spec))
    return "\n".join(parts)


def to_latex(spec: ProtocolSpec, table: pd.DataFrame, label: str) -> str:
    """A booktabs table of the comparison, its caption saying what each entry is."""
    headers, rows = body(table)
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(caption(spec))}}}", f"\\label{{{label}}}",
             "\\begin{tabular}{" + "l" * 4 + "r" * 6 + "l}", "\\toprule",
             " & ".join(latex_escape(h) for h in headers) + " \\\\", "\\midrule",
             *(" & ".join(latex_escape(v) for v in row) + " \\\\" for row in rows),
             "\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"
