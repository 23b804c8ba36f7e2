"""Renderers of a pivot table: plain text for the terminal, Markdown, LaTeX (booktabs), CSV (numbers) and JSON.

Every header carries its unit; best entries are bold (``*`` in plain text) — never one of a configuration with a
flagged cell (:attr:`~cnfbench.reports.pivot.Entry.marked`) — and entries with a flagged cell end in ``(!)``.
:func:`text_table` is the padded-columns layout the terminal outputs share. Every label, header, caption and note
passes through its format's escaping (:mod:`cnfbench.reports.escape`): a run folder's strings are shown, never
interpreted.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from cnfbench.reports.escape import (
    LATEX_LABEL_TEXT,
    is_latex_label,
    latex_escape,
    markdown_escape,
    single_line,
    terminal_escape,
)
from cnfbench.reports.metrics import Metric, ReportError
from cnfbench.reports.pivot import Entry, PivotTable, entry_text, entry_value, seeds_shown
from cnfbench.text_tables import fold_table, wrap_text


def _grid(table: PivotTable, cell: Any) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of display cells; ``cell(entry, metric)`` renders one value."""
    headers = [*table.rows, *(table.header(k, m) for k, m in table.value_columns())]
    body = []
    for row_key in table.row_keys:
        values = [cell(table.entries.get((row_key, col_key, m.name)), m) for col_key, m in table.value_columns()]
        body.append([*row_key, *values])
    return headers, body


def to_text(table: PivotTable, width: int | None = None) -> str:
    """A plain-text table for the terminal, folded to ``width`` columns (default 100); the best entries end in
    ``*``."""
    def cell(entry: Entry | None, metric: Metric) -> str:
        return entry_text(table, entry, metric) + (" *" if entry is not None and entry.marked else "")

    headers, body = _grid(table, cell)
    headers = [terminal_escape(h) for h in headers]
    body = [[terminal_escape(v) for v in row] for row in body]
    lines = [wrap_text(terminal_escape(table.caption(marked="marked *")), width),
             text_table(headers, body, len(table.rows), width)]
    return "\n".join([*lines, *(wrap_text(f"note: {terminal_escape(n)}", width) for n in table.notes)])


def text_table(headers: Sequence[str], body: Sequence[Sequence[Any]], left: int, width: int | None = None) -> str:
    """The first ``left`` columns left-aligned, the others right-aligned, folded to fit ``width`` columns
    (:func:`cnfbench.text_tables.fold_table`)."""
    return fold_table(headers, body, left, width)


def to_markdown(table: PivotTable) -> str:
    """A GitHub-flavoured Markdown table with an italic caption; best entries in ``**bold**``; every text escaped
    (:func:`~cnfbench.reports.escape.markdown_escape`)."""
    def cell(entry: Entry | None, metric: Metric) -> str:
        text = markdown_escape(entry_text(table, entry, metric))
        return f"**{text}**" if entry is not None and entry.marked else text

    headers, body = _grid(table, cell)
    left = len(table.rows)
    align = ["---"] * left + ["---:"] * (len(headers) - left)
    lines = [f"*{markdown_escape(table.caption())}*", "",
             "| " + " | ".join(markdown_escape(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join([*(markdown_escape(v) for v in row[:left]), *row[left:]]) + " |" for row in body]
    if table.notes:
        lines += ["", *(f"- {markdown_escape(n)}" for n in table.notes)]
    return "\n".join(lines) + "\n"


def _latex_header(table: PivotTable) -> list[str]:
    """The header rows: with column axes, a grouped first row (``\\multicolumn`` over each group, ``\\cmidrule``
    under it) — the column labels over their metrics, or the one metric over the column labels — then the names."""
    left = len(table.rows)
    rows = [latex_escape(axis) for axis in table.rows]
    if not table.cols:
        return [" & ".join([*rows, *(latex_escape(m.header) for m in table.metrics)]) + r" \\"]
    if len(table.metrics) > 1:
        groups = [(", ".join(key), len(table.metrics)) for key in table.col_keys]
        names = [latex_escape(m.header) for _ in table.col_keys for m in table.metrics]
    else:
        groups = [(table.metrics[0].header, len(table.col_keys))]
        names = [latex_escape(", ".join(key)) for key in table.col_keys]
    top, rules, column = [""] * left, [], left + 1
    for label, span in groups:
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}")
        rules.append(rf"\cmidrule(lr){{{column}-{column + span - 1}}}")
        column += span
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join([*rows, *names]) + r" \\"]


def to_latex(table: PivotTable, label: str = "tab:cnfbench", caption: str | None = None) -> str:
    """A ``table`` environment with a booktabs ``tabular``: grouped headers for several metrics or column axes,
    best entries (significantly) in bold. ``caption`` replaces the generated one (which says how entries are
    aggregated and marked; escaped like every text) and ``label`` is the ``\\label`` (:class:`ReportError` unless it
    holds only letters, digits and ``: . _ -``). The table's notes follow as comments. Needs
    ``\\usepackage{booktabs}``."""
    if not is_latex_label(label):
        raise ReportError(f"LaTeX label {label!r} may hold only {LATEX_LABEL_TEXT}, e.g. tab:solvers")

    def cell(entry: Entry | None, metric: Metric) -> str:
        if entry is None:
            return ""
        if not entry.n:
            return latex_escape(entry.failed or "—")
        math_text = entry_value(table, entry, metric, pm=r" \pm ", interval=(r"\ [", ", ", "]"))
        text = rf"$\mathbf{{{math_text}}}$" if entry.marked else f"${math_text}$"
        if seeds_shown(table, entry):
            text += f" ($n={entry.n}$)"
        return text + (" (!)" if entry.flagged else "")

    headers, body = _grid(table, cell)
    left = len(table.rows)
    spec = "l" * left + "r" * (len(headers) - left)
    lines = [
        r"% generated by cnfbench report; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption if caption is not None else table.caption())}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *_latex_header(table),
        r"\midrule",
    ]
    for row in body:
        lines.append(" & ".join([*(latex_escape(v) for v in row[:left]), *row[left:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += [f"% note: {single_line(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _stat_names(stat: str) -> tuple[str, str, str]:
    return ("mean", "std", "") if stat == "mean" else ("median", "q1", "q3")


def to_csv(table: PivotTable) -> str:
    """The pivot as CSV with numbers, not text.

    Per value column: ``mean``, ``std``, ``n`` and ``best`` (or ``median``, ``q1``, ``q3``, ``n``, ``best``).
    """
    names = _stat_names(table.stat)
    headers = list(table.rows)
    for col_key, metric in table.value_columns():
        base = table.header(col_key, metric)
        unit = f" [{metric.unit}]" if metric.unit else ""
        label = base[: -len(unit)] if unit and base.endswith(unit) else base
        headers += [f"{label} {s}{unit}" for s in names if s] + [f"{label} n", f"{label} best"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row_key in table.row_keys:
        values: list[Any] = list(row_key)
        for col_key, metric in table.value_columns():
            entry = table.entries.get((row_key, col_key, metric.name))
            if entry is None:
                values += [""] * (len([s for s in names if s]) + 2)
                continue
            numbers = [entry.center, entry.low] + ([entry.high] if table.stat == "median" else [])
            values += [repr(float(v)) if math.isfinite(v) else "" for v in numbers] + [entry.n, entry.best]
        writer.writerow(values)
    return out.getvalue()


def to_json(table: PivotTable) -> str:
    """The pivot as JSON: caption, axes, metrics (with unit and goal) and one object per entry."""
    def number(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    names = _stat_names(table.stat)
    entries = []
    for (row_key, col_key, metric), entry in table.entries.items():
        item: dict[str, Any] = {"row": dict(zip(table.rows, row_key, strict=True)),
                                "col": dict(zip(table.cols, col_key, strict=True)), "metric": metric,
                                names[0]: number(entry.center), names[1]: number(entry.low)}
        if names[2]:
            item[names[2]] = number(entry.high)
        item.update(n=entry.n, cells=entry.cells, failed=entry.failed, best=entry.best, significant=entry.significant,
                    flagged=entry.flagged)
        entries.append(item)
    data = {"caption": table.caption(), "stat": table.stat, "rows": table.rows, "cols": table.cols,
            "metrics": [{"name": m.name, "header": m.header, "unit": m.unit, "scale": m.scale, "goal": m.goal}
                        for m in table.metrics],
            "entries": entries, "notes": table.notes}
    return json.dumps(data, indent=2) + "\n"
