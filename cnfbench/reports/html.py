"""One self-contained HTML page for a report: tables, an interactive chart, plots as embedded PNGs, provenance.

The page loads nothing from the network (plotly.js — the partial bundle vendored beside this module, see
:mod:`~cnfbench.reports.explorer` — and the data are inlined; no fonts or style sheets from elsewhere), so it can be
mailed, archived or opened offline. It also forbids the network: its
Content-Security-Policy (:func:`content_security_policy`) allows no fetch of any kind and images only from ``data:``
and ``blob:`` URIs, and runs only the inline scripts the page itself wrote, named by their SHA-256 hashes, so that a
script or event handler that reached the page through a run folder's strings could not run even if escaping missed
it. Every string from the run folder is written with :func:`~cnfbench.reports.escape.html_escape`.

On a narrow screen (below 720 px) nothing widens the page: each table scrolls sideways inside its own box, and long
specs, commands and notes wrap. Provenance lists every command that wrote the run folder, oldest first: the earlier
``cnfbench run`` commands (``history``), the last one, and each ``cnfbench evaluate`` (``evaluations``).
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cnfbench.reports.escape import html_escape
from cnfbench.reports.explorer import explorer
from cnfbench.reports.pivot import PivotTable
from cnfbench.reports.render import entry_text
from cnfbench.run_folder import Run, atomic_write

REPORT_HTML = "report.html"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222;
       max-width: 1400px; overflow-wrap: anywhere; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.table-box { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; overflow-wrap: normal; }
figure.table figcaption { font-style: italic; font-size: 0.9em; color: #222; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #444; text-align: left; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #eef6ee; } td.flagged { color: #a33; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
.notes li, .warnings li { font-size: 0.85em; } .warnings { color: #a33; }
dl.prov { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.85em; }
.explorer label { margin-right: 1.2em; font-size: 0.9em; }
dl.prov dt { font-weight: bold; } dl.prov dd { margin: 0; font-family: monospace; word-break: break-all; }
dl.prov ol { margin: 0; padding-left: 1.5em; } dl.prov .when { color: #555; }
.explorer .controls { display: flex; flex-wrap: wrap; gap: 0.3em 0; } .explorer select { max-width: 100%; }
@media (max-width: 720px) {
  body { margin: 0.8em; }
  dl.prov { grid-template-columns: minmax(0, 1fr); } dl.prov dd { margin-bottom: 0.4em; }
}
"""


CSP_DIRECTIVES: tuple[str, ...] = (
    "default-src 'none'", "img-src data: blob:", "style-src 'unsafe-inline'", "font-src 'none'", "connect-src 'none'",
    "media-src 'none'", "object-src 'none'", "frame-src 'none'", "worker-src 'none'", "manifest-src 'none'",
    "form-action 'none'", "base-uri 'none'",
)
"""The page's policy besides its scripts: no fetch of any kind (``default-src 'none'``, and each fetch directive
said outright), images only from ``data:`` URIs (the embedded plots) and ``blob:`` URLs (plotly's "download as PNG"
draws the chart through one: both are made in the page, never fetched), no form target, no ``<base>``. Styles are
inline (``'unsafe-inline'``): plotly.js adds empty ``<style>`` elements and sets style attributes as it draws, which
a hash cannot name; with nothing to fetch, a style can change how the page looks but send nothing anywhere."""

_e = html_escape


def source_hash(source: str) -> str:
    """The CSP source expression that allows exactly the inline script ``source``: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(scripts: Sequence[str]) -> str:
    """The page's Content-Security-Policy: :data:`CSP_DIRECTIVES`, and ``script-src`` the hashes of its inline
    ``scripts`` exactly as written (``'none'`` when there is none: no inline script, event handler, ``javascript:``
    URL or ``eval`` runs)."""
    allowed = " ".join(dict.fromkeys(source_hash(source) for source in scripts)) or "'none'"
    return "; ".join([*CSP_DIRECTIVES, f"script-src {allowed}"])


def inline_element(tag: str, source: str) -> str:
    """``source`` as an inline ``<script>`` or ``<style>`` element. The page's own scripts and style are trusted and
    never escaped (scripts are listed by hash instead), so :class:`ValueError` if ``source`` holds the end tag, which
    would end the element early, or a carriage return, which the HTML parser turns into ``\\n`` (the browser's hash
    would differ from ours)."""
    if f"</{tag}" in source.lower() or "\r" in source:
        raise ValueError(f"an inline {tag} must not contain '</{tag}' or a carriage return")
    return f"<{tag}>{source}</{tag}>"


def table_html(table: PivotTable) -> str:
    """A pivot table as an HTML ``<table>`` under its caption, in a box that scrolls sideways on a narrow screen (the
    caption stays in view), best entries in bold (never on a flagged row), flagged ones in red, then its notes."""
    head = [*table.rows, *(table.header(k, m) for k, m in table.value_columns())]
    lines = ['<figure class="table">', f"<figcaption>{_e(table.caption())}</figcaption>", '<div class="table-box">',
             "<table>",
             "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for row_key in table.row_keys:
        cells = [f"<td>{_e(v)}</td>" for v in row_key]
        for col_key, metric in table.value_columns():
            entry = table.entries.get((row_key, col_key, metric.name))
            klass = "num" + (" best" if entry is not None and entry.marked else "") + \
                (" flagged" if entry is not None and entry.flagged else "")
            cells.append(f'<td class="{klass}">{_e(entry_text(table, entry, metric))}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>", "</div>", "</figure>"]
    if table.notes:
        lines.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(lines)


def image_html(title: str, png: bytes) -> str:
    """An ``<img>`` with the PNG embedded as a ``data:`` URI, in a captioned figure."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(title)}</figcaption></figure>")


def command_text(command: Any) -> str:
    """A recorded command (a list of arguments) as a shell would take it back (``shlex.join``); other values as
    text."""
    if isinstance(command, list):
        return shlex.join(str(part) for part in command)
    return str(command)


def command_history(provenance: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every command that wrote a run folder, oldest first, as ``(when, what, command)``: each earlier ``cnfbench
    run`` of the folder (``history``, one per resume), the last one, then each ``cnfbench evaluate``
    (``evaluations``); entries without a command are left out, hand-edited ones read as far as they go."""
    entries: list[tuple[str, str, Any]] = []
    history = provenance.get("history")
    for item in history if isinstance(history, list) else []:
        if isinstance(item, dict):
            entries.append((str(item.get("created") or ""), "run", item.get("command")))
    entries.append((str(provenance.get("created") or ""), "run", provenance.get("command")))
    evaluations = provenance.get("evaluations")
    for item in evaluations if isinstance(evaluations, list) else []:
        if isinstance(item, dict):
            entries.append((str(item.get("created") or ""), "evaluate", item.get("command")))
    entries = [(when, what, command) for when, what, command in entries if command]
    ordered = sorted(enumerate(entries), key=lambda item: (item[1][0] or "~", item[0]))  # undated last, in order
    return [(when, what, command_text(command)) for _, (when, what, command) in ordered]


def _provenance(run: Run) -> str:
    prov = run.provenance
    statuses = run.cells["status"].value_counts() if "status" in run.cells else {}
    items = [("folder", _e(run.path)),
             ("cells", _e(", ".join(f"{n} {s}" for s, n in statuses.items()) or "none")),
             ("created", _e(prov.get("created", "unknown")))]
    commands = command_history(prov)
    if commands:
        listed = "".join(f'<li><span class="when">{_e(when or "undated")} ({_e(what)})</span> {_e(command)}</li>'
                         for when, what, command in commands)
        items.append((f"commands ({len(commands)})" if len(commands) > 1 else "command", f"<ol>{listed}</ol>"))
    if run.versions:
        items.append(("versions", _e(", ".join(f"{k} {v}" for k, v in run.versions.items() if v))))
    machine = prov.get("machine")
    if isinstance(machine, dict):
        items.append(("machine", _e(", ".join(f"{k} {v}" for k, v in machine.items()))))
    for key in ("git_commit", "hostname", "python"):
        if prov.get(key):
            items.append((key.replace("_", " "), _e(prov[key])))
    recorded = prov.get("plugins")
    plugins = [p for p in recorded if isinstance(p, dict)] if isinstance(recorded, list) else []
    if plugins:  # names to show, never files to import
        items.append(("plugins", _e(", ".join(" ".join(str(p[k]) for k in ("name", "version") if p.get(k))
                                              + (f" ({p.get('source', '?')}: {p['origin']})" if p.get("origin")
                                                 else "") for p in plugins))))
    if isinstance(prov.get("merged_from"), list):
        items.append(("merged from", _e(", ".join(str(s.get("path", "?")) for s in prov["merged_from"]
                                                  if isinstance(s, dict)))))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items)  # every value escaped above
    warnings = "".join(f"<li>{_e(w)}</li>" for w in run.warnings)
    return (f"<h3>{_e(run.name)}</h3><dl class=\"prov\">{body}</dl>"
            + (f'<ul class="warnings">{warnings}</ul>' if warnings else ""))


def render_html(title: str, runs: Sequence[Run], tables: Sequence[tuple[str, PivotTable]],
                images: Sequence[tuple[str, Path | bytes]], notes: Sequence[str] = (),
                cells: pd.DataFrame | None = None, sections: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page: tables, ``sections`` (a heading and preformatted text each: the rankings, the
    work-precision view), the interactive chart of ``cells`` (when given), then plots (files or PNG bytes,
    embedded), then provenance and notes; its Content-Security-Policy allows exactly the scripts it inlines."""
    chart = explorer(cells) if cells is not None else None
    scripts = [source.replace("\r\n", "\n").replace("\r", "\n") for source in (chart.scripts if chart else ())]
    policy = content_security_policy(scripts)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{_e(policy)}">',
             '<meta name="referrer" content="no-referrer">', f"<title>{_e(title)}</title>",
             inline_element("style", _STYLE), "</head>", "<body>", f"<h1>{_e(title)}</h1>",
             "<p>Test NLL in nats per sample (exact trace); <em>ref solve</em> = the tight reference solve, the "
             "density the trained field really defines. NFE = dynamics evaluations counted by the harness. "
             "Aggregated over seeds (± one standard deviation where an entry has two or more); only finished cells "
             "enter the numbers; an entry of a configuration with a flagged cell (!) is never marked best.</p>"]
    for heading, table in tables:
        parts += [f"<h2>{_e(heading)}</h2>", table_html(table)]
    for heading, text in sections:
        parts += [f"<h2>{_e(heading)}</h2>", f'<div class="table-box"><pre>{_e(text)}</pre></div>']
    if chart is not None:
        parts += ["<h2>Explore</h2>", "<p>Choose the dataset and the metric on each axis; hover over a point for its "
                  "configuration's full spec; click a legend entry to hide or show it.</p>", chart.markup,
                  *(inline_element("script", source) for source in scripts)]
    if images:
        parts.append("<h2>Plots</h2>")
        for caption, image in images:
            png = image if isinstance(image, bytes) else Path(image).read_bytes()
            parts.append(image_html(caption, png))
    parts.append("<h2>Provenance</h2>")
    parts += [_provenance(run) for run in runs]
    if notes:
        parts += ["<h2>Notes</h2>", '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_html_report(path: str | Path, title: str, runs: Sequence[Run], tables: Sequence[tuple[str, PivotTable]],
                      images: Sequence[tuple[str, Path | bytes]], notes: Sequence[str] = (),
                      cells: pd.DataFrame | None = None, sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write :func:`render_html`'s page to ``path`` atomically and return the path."""
    target = Path(path)
    page = render_html(title, runs, tables, images, notes, cells, sections)
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8", newline="\n"))  # as hashed
    return target
