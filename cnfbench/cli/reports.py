"""``cnfbench report``, ``compare`` and ``merge``: the commands that read finished runs.

pandas, matplotlib and the report code are imported inside the commands, so
their ``--help`` starts at once; default metrics in the help come from the
column catalogue.

Like ``run``, they report bad input (a missing or unreadable run folder, an
unknown metric or column) as one ``Error:`` line with exit code 2; a damaged
file that has an intact copy gives a ``warning:`` line and the copy is used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cnfbench.cli import fail, load_registry_or_fail, load_runs_or_fail, main
from cnfbench.columns import COMPARE, REPORT, default_metrics
from cnfbench.messages import plural
from cnfbench.output_paths import OutputPathError, check_output_dir, check_output_file
from cnfbench.params import ParamError
from cnfbench.text_tables import terminal_width

FORMAT_HELP = "write the table as {what} to this file ('-' = standard output) [default: not written]"
REGRESSION = 1


def _check_outputs(files: dict[str, str | None], folders: dict[str, Path | None] | None = None) -> None:
    """Fail with one line, before any work, when an output file or folder cannot be written."""
    try:
        for what, path in files.items():
            if path and path != "-":
                check_output_file(path, what)
        for what, folder in (folders or {}).items():
            if folder is not None:
                check_output_dir(folder, what)
    except OutputPathError as exc:
        raise fail(str(exc)) from None


def _emit(path: str | None, render: Callable[[], str], what: str) -> bool:
    """Write ``render()`` to ``path`` ('-' = stdout); True when it went to stdout."""
    if not path:
        return False
    text = render()
    if path == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return True
    from cnfbench.run_folder import atomic_write

    target = Path(path)
    try:
        atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot write {what} to {target}: {exc.strerror or exc}") from None
    click.echo(f"wrote {what}: {target}", err=True)
    return False


PAGE_TEXT_WIDTH = 120
"""Columns a view's text takes on the HTML page (it scrolls sideways in its box where the screen is narrower)."""


def _view_page(loaded: Any, cells: Any, out_dir: Path | None, heading: str, text: str, figures: Any) -> None:
    """``report.html`` of a view (``--rank``, ``--work-precision``): its text, its figures, the interactive chart
    of the cells, provenance and notes, beside the figures in ``--out`` or in the run folder."""
    from cnfbench.reports.html import REPORT_HTML, write_html_report

    target = out_dir or loaded[0].path
    title = f"cnfbench report: {heading.lower()} — " + ", ".join(run.name for run in loaded)
    notes = [*(w for run in loaded for w in run.warnings), *figures.notes]
    page = write_html_report(target / REPORT_HTML, title, loaded, [], figures.files, notes, cells,
                             sections=[(heading, text)])
    click.echo(f"wrote {page}", err=True)


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", "metrics", multiple=True,
              help=f"comma list of metric columns [default: {', '.join(default_metrics(REPORT))}; "
                   "with --cols: nll_ref]")
@click.option("--rows", multiple=True, help="comma list of columns down the table, e.g. dataset [default: the "
                                            "configuration columns that vary]")
@click.option("--cols", multiple=True, help="comma list of columns across the table, e.g. solver,trace "
                                            "[default: none, one column per metric]")
@click.option("--stat", type=click.Choice(["mean", "median"]), default="mean",
              help="mean ± std over seeds, or median [first–third quartile] [default: mean]")
@click.option("--markdown", "markdown_path", metavar="FILE", help=FORMAT_HELP.format(what="Markdown"))
@click.option("--csv", "csv_path", metavar="FILE", help=FORMAT_HELP.format(what="CSV (numbers)"))
@click.option("--latex", "latex_path", metavar="FILE", help=FORMAT_HELP.format(what="LaTeX (booktabs)"))
@click.option("--caption", help="caption of the LaTeX table [default: what the entries are and how they are marked]")
@click.option("--label", help="\\label of the LaTeX table: letters, digits and : . _ - [default: tab:<run name>]")
@click.option("--json", "json_path", metavar="FILE", help=FORMAT_HELP.format(what="JSON"))
@click.option("--plots", is_flag=True,
              help="write plots (NLL vs NFE and wall-clock, training curves, 2D densities; PNG, PDF, SVG) into OUT "
                   "itself, or RUN/plots/ without --out [default: off]")
@click.option("--html", is_flag=True,
              help="write OUT/report.html: one self-contained page with the tables and plots [default: off]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder for --plots and --html: the plots and report.html go into it [default: the run folder, "
                   "plots in RUN/plots/, when there is one run]")
@click.option("--rank", "rank_metrics", multiple=True, metavar="METRIC",
              help="instead of the table: rank the configurations on each dataset by these metrics (comma list; "
                   "a dataset's entry is the mean over seeds), average ranks, Friedman's test, Nemenyi's critical "
                   "difference and, for a cost metric, the performance profile; needs 3+ datasets and 2+ "
                   "configurations; with --plots the critical-difference diagram and profile [default: off]")
@click.option("--work-precision", "work_precision", is_flag=True,
              help="instead of the table: per dataset and solver family (dopri5, euler, ...), the error of each "
                   "solver spec of a sweep against its NFE and seconds, points by cost, seeds aggregated, log-log "
                   "slopes; needs a family with 2+ specs, e.g. from cnfbench evaluate RUN --solver "
                   "'euler[steps=2..64:x2]'; with --plots the figure [default: off]")
@click.option("--published", is_flag=True,
              help="instead of the table: a protocol run's numbers beside the paper's (mean ± std over seeds, the "
                   "difference, a verdict), with the protocol's sources and deviations; --latex FILE and --html too "
                   "[default: off]")
@click.option("--wp-metric", "wp_metric", metavar="METRIC",
              help="the error of --work-precision: logp_error_mean or logp_error_max (test log-density against the "
                   "reference solve, by the test pass's cost), energy_distance or sliced_w2 (samples against the "
                   "test data, by the sampling solve's cost) [default: logp_error_mean]")
def report(runs: tuple[str, ...], metrics: tuple[str, ...], rows: tuple[str, ...], cols: tuple[str, ...],
           stat: str, markdown_path: str | None, csv_path: str | None, latex_path: str | None,
           caption: str | None, label: str | None, json_path: str | None, plots: bool, html: bool,
           out_dir: Path | None, rank_metrics: tuple[str, ...], work_precision: bool, wp_metric: str | None,
           published: bool) -> None:
    """Aggregate the seeds of one or more run folders and print a table (units in every header).

    \b
    cnfbench report results/grid1
    cnfbench report results/grid1 --rows dataset --cols solver,trace --metric nll_ref --latex table.tex
    cnfbench report results/grid1 --html
    cnfbench report results/suite --rank nll_ref,train_time_s --plots
    cnfbench report results/wp --work-precision --plots
    """
    from cnfbench import reports as rep
    from cnfbench.reports.escape import LATEX_LABEL_TEXT, is_latex_label, latex_label

    if label is not None and not is_latex_label(label):
        raise fail(f"--label {label!r} may hold only {LATEX_LABEL_TEXT}, e.g. tab:solvers")
    if wp_metric is not None and not work_precision:
        raise fail("--wp-metric chooses the error of --work-precision; add --work-precision or drop --wp-metric")
    views = [name for name, asked in (("--rank", rank_metrics), ("--work-precision", work_precision),
                                      ("--published", published)) if asked]
    if len(views) > 1:
        raise fail(f"{' and '.join(views)} are separate views; ask for one at a time")
    if views:
        view = views[0]
        allowed = {"--latex", "--label"} if published else set()
        given = [name for name, value in (("--metric", metrics), ("--rows", rows), ("--cols", cols),
                                          ("--stat", stat != "mean"), ("--markdown", markdown_path),
                                          ("--csv", csv_path), ("--latex", latex_path), ("--json", json_path),
                                          ("--caption", caption), ("--label", label)) if value and name not in allowed]
        if given:
            raise fail(f"{view} prints its own tables (with --plots its figures, with --html a page of both); drop "
                       f"{', '.join(given)}")
    files = {"Markdown": markdown_path, "CSV": csv_path, "LaTeX": latex_path, "JSON": json_path}
    _check_outputs(files, {"plots and HTML": out_dir} if plots or html else None)
    loaded = load_runs_or_fail(runs)
    if (plots or html) and out_dir is None and len(loaded) > 1:
        raise fail("--plots/--html with several runs need --out DIR (or merge them first with 'cnfbench merge')")
    if (plots or html) and out_dir is None:
        _check_outputs({}, {"plots and HTML": loaded[0].path})
    cells = rep.combine(loaded)
    if cells.empty:
        raise fail(f"no cells in {', '.join(str(run.path) for run in loaded)}")
    if published:
        _published_view(loaded, cells, latex_path, label, html, out_dir)
        return
    if rank_metrics:
        from cnfbench.reports import ranking

        try:
            rankings = [ranking.rank(cells, name) for name in rep.split_list(rank_metrics) or [""]]
        except rep.ReportError as exc:
            raise fail(str(exc)) from None
        click.echo("\n\n".join(ranking.to_text(result, terminal_width()) for result in rankings))
        if plots or html:
            from cnfbench.reports.plots import PLOTS_DIR
            from cnfbench.reports.rank_plots import write_rank_plots

            plot_dir = out_dir or loaded[0].path / PLOTS_DIR
            written = write_rank_plots(rankings, plot_dir)
            click.echo(f"wrote {plural(len(written.files), 'plot')} into {plot_dir}", err=True)
            if html:
                _view_page(loaded, cells, out_dir, "Rankings across datasets",
                           "\n\n".join(ranking.to_text(result, PAGE_TEXT_WIDTH) for result in rankings), written)
        return
    if work_precision:
        from cnfbench.reports import work_precision as wp

        try:
            view_data = wp.work_precision(cells, wp_metric or wp.DEFAULT_METRIC)
        except rep.ReportError as exc:
            raise fail(str(exc)) from None
        click.echo(wp.to_text(view_data, terminal_width()))
        if plots or html:
            from cnfbench.reports.plots import PLOTS_DIR

            plot_dir = out_dir or loaded[0].path / PLOTS_DIR
            written = wp.write_wp_plots(view_data, plot_dir)
            for note in written.notes:
                click.echo(f"note: {note}", err=True)
            click.echo(f"wrote {plural(len(written.files), 'plot')} into {plot_dir}", err=True)
            if html:
                _view_page(loaded, cells, out_dir, f"Work-precision: {view_data.metric.name}",
                           wp.to_text(view_data, PAGE_TEXT_WIDTH), written)
        return
    metric_list = rep.split_list(metrics)
    col_list = rep.split_list(cols)
    if not metric_list and col_list:
        metric_list = ["nll_ref"] if "nll_ref" in cells else []
    try:
        table = rep.pivot(cells, rep.split_list(rows), col_list, metric_list or None, stat)
    except rep.ReportError as exc:
        raise fail(str(exc)) from None
    to_stdout = False
    label = label or latex_label("tab:" + "+".join(run.name for run in loaded))

    def latex(table: Any) -> str:
        return rep.to_latex(table, label, caption)

    for path, render, what in ((markdown_path, rep.to_markdown, "Markdown"), (csv_path, rep.to_csv, "CSV"),
                               (latex_path, latex, "LaTeX"), (json_path, rep.to_json, "JSON")):
        to_stdout |= _emit(path, lambda render=render: render(table), what)
    if not to_stdout:
        click.echo(rep.to_text(table, terminal_width()))
    if not (plots or html):
        return
    from cnfbench.reports.plots import PLOTS_DIR, write_plots

    # --out DIR gets everything itself (the plots beside report.html); a run folder keeps its plots in plots/
    target = out_dir or loaded[0].path
    plot_dir = out_dir or loaded[0].path / PLOTS_DIR
    result = write_plots(target, cells, rep.combine_curves(loaded),
                         dict(zip(cells["run"].drop_duplicates(), [run.path for run in loaded], strict=False)),
                         into=plot_dir)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if plots:
        click.echo(f"wrote {plural(len(result.files), 'plot')} into {plot_dir}", err=True)
    if html:
        from cnfbench.reports.html import REPORT_HTML, write_html_report

        tables = [("Results", table)]
        overview = rep.pivot(cells, stat=stat)
        if rep.to_text(overview) != rep.to_text(table):
            tables.append(("All default metrics", overview))
        title = "cnfbench report: " + ", ".join(run.name for run in loaded)
        notes = [*(w for run in loaded for w in run.warnings), *result.notes]
        page = write_html_report(target / REPORT_HTML, title, loaded, tables, result.files, notes, cells)
        click.echo(f"wrote {page}", err=True)


def _published_view(loaded: Any, cells: Any, latex_path: str | None, label: str | None, html: bool,
                    out_dir: Path | None) -> None:
    """``--published``: the run's protocol (named in its rows) against the paper's numbers."""
    from cnfbench.protocols import protocol_spec, published_table
    from cnfbench.reports import published as pub
    from cnfbench.reports.escape import latex_label
    from cnfbench.reports.plots import PlotResult

    names = sorted({str(name) for name in cells.get("protocol", []) if isinstance(name, str) and name})
    if not names:
        raise fail("--published compares a protocol run with its paper, and these rows come from no protocol; run "
                   "one with `cnfbench run --protocol NAME` (`cnfbench protocols` lists them)")
    registry = load_registry_or_fail(())  # a run folder is data: only installed plugins are loaded
    texts = []
    for name in names:
        if name not in registry.names("protocol"):
            raise fail(f"the rows come from protocol {name!r}, which no installed plugin offers (protocols: "
                       f"{', '.join(registry.names('protocol'))}): install its plugin or name it in CNFBENCH_PLUGINS")
        try:
            spec = protocol_spec(registry, name)
        except ParamError as exc:
            raise fail(str(exc)) from None
        table = published_table(spec, cells)
        texts.append((spec, table))
        click.echo(pub.to_text(spec, table, terminal_width()))
        if latex_path:
            latex = pub.to_latex(spec, table, label or latex_label(f"tab:{name}"))
            _emit(latex_path, lambda text=latex: text, "LaTeX")
    if html:
        _view_page(loaded, cells, out_dir, "Published numbers beside this run's",
                   "\n\n".join(pub.to_text(spec, table, PAGE_TEXT_WIDTH) for spec, table in texts), PlotResult())


@main.command()
@click.argument("base")
@click.argument("new")
@click.option("--metric", "metrics", multiple=True,
              help=f"comma list of metrics to compare [default: {', '.join(default_metrics(COMPARE))}]")
@click.option("--factor", type=float, default=1.05,
              help="a ratio metric (times, NFE, memory) has changed when NEW/BASE moves past this (1.05 = 5%) "
                   "[default: 1.05]")
@click.option("--difference", type=float, default=0.02,
              help="a difference metric (NLLs in nats, bits/dim, mass) has changed when its mean moves by more "
                   "than this, in its unit [default: 0.02]")
@click.option("--threshold", "thresholds", multiple=True, metavar="METRIC:+D|METRIC:xF",
              help="a metric's own threshold, e.g. nll_ref:+0.05,train_time_s:x1.10 (compared even when not in "
                   "--metric) [default: none, --factor or --difference by the metric's kind]")
@click.option("--fail-on", "fail_on", multiple=True, metavar="METRIC:+D|METRIC:xF",
              help="for CI: these thresholds, and exit 1 when one of these metrics moved past it the worse way "
                   "(proven worse, or inconclusive for want of seeds) or a configuration newly fails, e.g. "
                   "nll_ref:+0.02,train_time_s:x1.10 [default: none]")
@click.option("--alpha", type=float, default=0.05,
              help="worse/better also needs p < alpha (paired t-test when both runs have the same seeds, else "
                   "Welch's; 2+ seeds a side); unchanged needs the 1 - 2*alpha confidence interval within the "
                   "threshold (TOST) [default: 0.05]")
@click.option("--ignore-versions", is_flag=True,
              help="compare even when torch/torchdiffeq/cnfbench versions differ [default: off]")
@click.option("--ignore-concurrency", is_flag=True,
              help="compare time and memory even when the runs' cells ran with different concurrency or threads "
                   "[default: off]")
@click.option("--fail-on-regression", is_flag=True,
              help="exit 1 when a configuration is worse or newly failing [default: off]")
@click.option("--markdown", "markdown_path", metavar="FILE", help=FORMAT_HELP.format(what="Markdown"))
@click.option("--json", "json_path", metavar="FILE", help=FORMAT_HELP.format(what="JSON"))
def compare(base: str, new: str, metrics: tuple[str, ...], factor: float, difference: float,
            thresholds: tuple[str, ...], fail_on: tuple[str, ...], alpha: float, ignore_versions: bool,
            ignore_concurrency: bool, fail_on_regression: bool, markdown_path: str | None,
            json_path: str | None) -> int:
    """Compare run NEW with run BASE configuration by configuration (seeds aggregated).

    Each row is worse or better (a metric moved past its threshold and a t-test gives p < alpha), unchanged
    (its 90% confidence interval lies within every threshold: TOST), inconclusive (fewer than 2 seeds a side,
    or p >= alpha), newly failing, fixed or not comparable; the why column says what decided it.
    Log-likelihoods are compared as differences in nats, times and NFE as ratios.

    \b
    cnfbench compare results/reference results/my-run
    cnfbench compare results/main results/branch --fail-on nll_ref:+0.02,train_time_s:x1.10
    """
    from cnfbench.reports import ReportError, split_list
    from cnfbench.reports import compare as cmp

    _check_outputs({"Markdown": markdown_path, "JSON": json_path})
    base_run, new_run = load_runs_or_fail((base, new))
    try:
        import pandas as pd

        from cnfbench.reports.metrics import available_metrics

        known = available_metrics(pd.concat([base_run.cells, new_run.cells], ignore_index=True))
        gates = cmp.parse_thresholds(",".join(fail_on), known)
        chosen = {**cmp.parse_thresholds(",".join(thresholds), known), **gates}
        comparison = cmp.compare_runs(base_run, new_run, split_list(metrics) or None, factor, alpha, ignore_versions,
                                      ignore_concurrency, chosen, difference)
    except ReportError as exc:
        raise fail(str(exc)) from None
    to_stdout = _emit(markdown_path, lambda: cmp.to_markdown(comparison), "Markdown")
    to_stdout |= _emit(json_path, lambda: cmp.to_json(comparison), "JSON")
    if not to_stdout:
        click.echo(cmp.to_text(comparison, terminal_width()))
    if fail_on_regression and comparison.regressions:
        click.echo(f"regression: {plural(len(comparison.regressions), 'configuration')} worse or newly failing",
                   err=True)
        return REGRESSION
    if gates:
        failed = [row for row in comparison.rows if row.verdict == "newly failing"
                  or any(c.metric.name in gates and c.direction == "worse" for c in row.changes)]
        if failed:
            click.echo(f"regression: {plural(len(failed), 'configuration')} newly failing or worse in "
                       f"{', '.join(f'{name} ({t.text()})' for name, t in gates.items())} (past the threshold the "
                       "worse way, proven or untested)", err=True)
            return REGRESSION
    return 0


@main.command()
@click.argument("out")
@click.argument("runs", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="when another cnfbench command is writing OUT, wait for it to end instead "
                                           "of stopping with an error [default: off]")
def merge(out: str, runs: tuple[str, ...], wait: bool) -> None:
    """Combine run folders (from several machines) into the new run folder OUT, keeping their provenance.

    A cell found in several runs is kept once: a done row wins, else the newest run's row.
    """
    from cnfbench.cli.run import writing
    from cnfbench.output_paths import OutputPathError, check_free_space
    from cnfbench.reports.merge import check_merge, merge_runs
    from cnfbench.run_folder import ResultsError

    _check_outputs({}, {"the merged run": out})
    try:
        check_free_space(out, "the merged run")
        sources = check_merge(out, runs)  # before the lock: a refused merge touches nothing
    except (OutputPathError, ResultsError, ValueError) as exc:
        raise fail(str(exc)) from None
    with writing(Path(out), wait):
        try:
            result = merge_runs(out, sources, sys.argv)
        except (ResultsError, ValueError) as exc:  # a full device too (DiskFull): nothing half-written is left
            raise fail(str(exc)) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"merged {plural(result.cells, 'cell')} from {plural(len(runs), 'run')} into {result.out}")
