"""A self-contained HTML report of a sweep: curves, the table and the settings, working offline.

plotly.js is embedded once in the page (no script is fetched from a CDN), so the file can be mailed
or opened on a machine with no network. Metric titles, directions and meanings come from
`core.metrics.METRICS`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..errors import UserError
from ..metrics import METRICS
from .figures import (
    LAYOUT,
    PALETTE,
    SET_TRADEOFF_METRICS,
    TRADEOFF_METRICS,
    interval_band,
    repair_curves,
    set_curves,
    study_curves,
    tradeoff_curves,
)


def _calibration_repair(table: pd.DataFrame) -> go.Figure:
    ece, scaled = METRICS["ece"], METRICS["ece_temperature_scaled"]
    fig = go.Figure()
    for i, key in enumerate((ece.key, scaled.key)):
        if key in table and table[key].notna().any():
            band = interval_band(table, "dropped", key, PALETTE[i])
            if band is not None:
                fig.add_trace(band)
            name = METRICS[key].title + (" (fitted on validation, per mask)" if i else "")
            fig.add_trace(go.Scatter(x=table["dropped"], y=table[key], mode="lines+markers",
                                     line=dict(color=PALETTE[i]), name=name))
    if "ece_noise_q95" in table and table["ece_noise_q95"].notna().any():
        fig.add_trace(go.Scatter(x=table["dropped"], y=table["ece_noise_q95"], mode="lines", line=dict(
            color="grey", dash="dot"), name="ECE a perfectly calibrated model reaches in 95% of samples"))
    fig.update_layout(**LAYOUT, height=340, title="Calibration before and after temperature scaling",
                      xaxis_title="attention layers dropped", yaxis_title=ece.axis_title())
    return fig


REPAIR_NOTE = ("<p>Each repair method is fitted on the mask's validation examples (never the test ones) and scored "
               "on the test sample; shaded: 95% intervals. The table gives each method's ECE with its interval, its "
               "paired change from the full model, and the verdict of the comparison with the unrepaired pruned "
               "model (<code>python -m core repair</code> shows one mask in full).</p>")


def _repairs(table: pd.DataFrame, title: str = "ECE after repair against layers dropped") -> list[str]:
    """The repair figure and the per-mask repair table of a sweep table with repair columns (nothing without)."""
    from .sweep import readable_repairs

    readable = readable_repairs(table)
    if readable is None:
        return []
    return [repair_curves(table, title=title).to_html(full_html=False, include_plotlyjs=False,
                                                      config={"displaylogo": False}),
            f'<div class="scroll">{readable.to_html(index=False, na_rep="", border=0)}</div>']


def _directions(keys: list[str]) -> str:
    """One sentence on which way is better for the metrics ``keys``, read from `METRICS`.

    E.g. "Lower is better for ECE and sufficiency; higher for accuracy and comprehensiveness."
    """
    def names(better: str) -> str:
        titles = [METRICS[k].title for k in keys if METRICS[k].better == better]
        return ", ".join(titles[:-1]) + " and " + titles[-1] if len(titles) > 1 else "".join(titles)
    lower, higher = names("lower"), names("higher")
    parts = [f"lower is better for {lower}"] if lower else []
    if higher:
        parts.append(f"higher for {higher}" if lower else f"higher is better for {higher}")
    sentence = "; ".join(parts)
    return sentence[:1].upper() + sentence[1:] + "." if parts else ""


def _glossary(table: pd.DataFrame) -> str:
    """One row per metric column of ``table``: its title, direction, range and meaning."""
    def bound(v: float) -> str:
        return "∞" if v == float("inf") else f"{v:g}"
    rows = "".join(
        f"<tr><th>{html.escape(m.key)}</th><td>{html.escape(m.title)}</td><td>{m.better}</td>"
        f"<td>{bound(m.range[0])} to {bound(m.range[1])}</td><td>{html.escape(m.meaning)}</td></tr>"
        for m in METRICS.values() if m.key in table)
    return ("<table class=\"settings\"><tr><th>column</th><th>metric</th><th>better</th><th>range</th>"
            f"<th>meaning</th></tr>{rows}</table>")


def _intervals_note(table: pd.DataFrame) -> str:
    """How to read the shaded bands and the change columns, when the table has them."""
    if "accuracy_lo" not in table:
        return "<p>This table has no intervals (written before they existed): rerun the sweep to get them.</p>"
    n_beyond = int(((table.get("accuracy_change_lo", 0) > 0) | (table.get("accuracy_change_hi", 0) < 0)).sum())
    return ("<p>Shaded: 95% intervals over the test examples (accuracy: Wilson; ECE and the other calibration "
            "errors: for the true value, by inverting 1,000 simulations of correctness, widened to contain the "
            "estimate; the others: bootstrap, 1,000 resamples). The <code>_change</code> columns are each mask's "
            "difference from the full model on the same "
            "examples, with a paired 95% interval and p-value: a change is beyond noise only when its interval "
            f"excludes 0. Accuracy changes beyond noise: {n_beyond} of {len(table)} rows. The dotted line is the "
            "ECE a perfectly calibrated model with the same confidences reaches in 95% of samples of this size: "
            "an ECE below it is consistent with perfect calibration.</p>")


def check_sweep_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """``table`` if it is a sweep table (numbers of layers dropped with their metrics), else a clear error."""
    missing = [c for c in ("dropped", "accuracy", "ece") if c not in table]
    if missing:
        raise UserError(f"{source} is not a sweep table: no column {', '.join(repr(c) for c in missing)} "
                        "(write one with `python -m core sweep ... --out sweep.csv`)")
    if not pd.api.types.is_numeric_dtype(table["dropped"]):
        raise UserError(f"{source} is not a sweep table: 'dropped' must hold numbers of layers")
    return table.sort_values("dropped").reset_index(drop=True)


def read_sweep(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A sweep CSV and, if it is there, its settings file (``<csv>.json``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"sweep file '{path}' does not exist")
    table = check_sweep_table(pd.read_csv(path), f"'{path}'")
    settings_path = path.with_name(path.name + ".json")
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else {}
    return table, settings


STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f5f5f5; }
.settings th, .settings td { text-align: left; }
.scroll { overflow-x: auto; }
</style>"""


def _settings_table(settings: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v))}"
                   "</td></tr>" for k, v in settings.items())
    return f'<table class="settings">{rows}</table>'


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
{STYLE}</head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def _has_sets(table: pd.DataFrame) -> bool:
    return any(m in table and table[m].notna().any() for m in SET_TRADEOFF_METRICS)


def _sets_note(table: pd.DataFrame, alpha: float | None) -> str:
    """What the prediction-set panels show, when the table has them."""
    if not _has_sets(table):
        return ""
    calibrated = (f"calibrated for 1 - alpha = {1 - alpha:g} coverage" if alpha is not None else "calibrated")
    return (f"<p>Prediction sets, {calibrated} on each mask's own validation examples: a worse model keeps its "
            "coverage and pays with larger sets, and a threshold that jumps between two masks shows as a step in "
            "the set size. AURC: the area under the risk-coverage curve (abstaining on the least confident "
            "answers first). Shaded: 95% intervals, the threshold recalibrated in every resample.</p>")


def render(table: pd.DataFrame, settings: dict, title: str = "Attention pruning sweep") -> str:
    figures = [tradeoff_curves(table), _calibration_repair(table)]
    if _has_sets(table):
        figures.append(set_curves(table, settings.get("alpha")))
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
             for i, fig in enumerate(figures)]
    repairs = _repairs(table)
    repaired = f"<h2>Repair after pruning</h2>\n{REPAIR_NOTE}\n" + "\n".join(repairs) if repairs else ""
    return _page(title, f"""<p>Each row drops one more attention layer, in the strategy's order. Accuracy and
calibration on the test sample; comprehensiveness and sufficiency (ERASER AOPC; the random baseline dashed) on its first
examples. {_directions([m for m in TRADEOFF_METRICS if m in table])}</p>
{_intervals_note(table)}
{parts[0]}
{parts[1]}
{_sets_note(table, settings.get("alpha"))}
{"".join(parts[2:])}
{repaired}
<h2>Table</h2>
<div class="scroll">{table.round(4).to_html(index=False, na_rep="", border=0)}</div>
<h2>Metrics</h2>
{_glossary(table)}
<h2>Settings</h2>
{_settings_table(settings)}""")


def render_study(table: pd.DataFrame, run: dict, title: str = "Attention pruning study") -> str:
    """A study grid's report: its curves per dataset, the table, the run's settings and counts; offline."""
    metrics = [m for m in TRADEOFF_METRICS if m in table and table[m].notna().any()]
    figure = (study_curves(table, metrics).to_html(full_html=False, include_plotlyjs=True,
                                                    config={"displaylogo": False})
              if len(table) else "<p>No point of the grid finished.</p>")
    set_metrics = [m for m in SET_TRADEOFF_METRICS if m in table and table[m].notna().any()]
    if len(table) and set_metrics:
        figure += _sets_note(table, run.get("settings", {}).get("alpha")) + study_curves(table, set_metrics).to_html(
            full_html=False, include_plotlyjs=False, config={"displaylogo": False})
    failed = run.get("failed") or []
    failures = (f"<h2>Failed points ({len(failed)})</h2><ul>"
                + "".join(f"<li>{html.escape(f)}</li>" for f in failed) + "</ul><p>Rerun the same command to retry "
                "them; finished points come from the cache.</p>") if failed else ""
    counts = {k: run.get(k) for k in ("points", "computed", "cached", "seconds")}
    repairs = []
    if len(table):  # plotly.js came with the curves above
        names = ["model", "dataset", "strategy", *(["healed"] if "healed" in table else [])]
        for (model, dataset, strategy, *healed), rows in table.groupby(names, sort=False):
            first = rows[rows["explainer"] == rows["explainer"].iloc[0]]  # repairs do not depend on the explainer
            repairs += _repairs(first, f"ECE after repair against layers dropped: {model} on {dataset}, {strategy}"
                                + "".join(f", {h}" for h in healed))
    repaired = f"<h2>Repair after pruning</h2>\n{REPAIR_NOTE}\n" + "\n".join(repairs) if repairs else ""
    return _page(title, f"""<p>Each panel shows one metric (row) on one dataset (column) as attention layers are
dropped in each strategy's order: one line per {', '.join(c for c in ('model', 'strategy', 'explainer', 'healed')
if c in table and table[c].astype(str).nunique() > 1) or 'model'}. {_directions(metrics)}</p>
{_intervals_note(table)}
{figure}
{repaired}
{failures}
<h2>Table</h2>
<div class="scroll">{table.round(4).to_html(index=False, na_rep="", border=0)}</div>
<h2>Metrics</h2>
{_glossary(table)}
<h2>Run</h2>
{_settings_table({**counts, "engine": run.get("engine")})}
<h2>Settings</h2>
{_settings_table(run.get("settings", {}))}""")


def write_report(sweep_csv: str | Path, out: str | Path) -> Path:
    table, settings = read_sweep(sweep_csv)
    out = Path(out)
    out.write_text(render(table, settings), encoding="utf-8")
    return out
