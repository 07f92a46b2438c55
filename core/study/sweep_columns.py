"""The columns of a sweep table: their names, how a point's row fills them, and how a table is read.

A sweep, the grid and the report all write and read the same table, so its layout is stated once here
and `core.study.sweep` (which computes the points) only fills it. Each metric of `INTERVALS` and
`SET_INTERVALS` carries the six columns of `interval_columns`: its 95% interval and its paired change
from the full model with interval and p.

With repair methods (`core.study.sweep.PointConfig.repair`), each point also carries, per method fitted on
the mask's validation split (`core.study.repair`), its ECE, smooth ECE and accuracy with intervals and their
changes from the full model, its verdict and the answers it changed (`repair_columns`).

With healing (`core.study.sweep.PointConfig.heal`), each pruned point also carries the healed model: every
metric of `HEALED` as ``<metric>_healed`` with its interval and change from the full model, and its paired
change from the unhealed pruned model (``<metric>_healed_vs_pruned``), with the flips (`heal_columns`). The
healed model's own row (`core.study.sweep.healed_point`) adds `HEALED_POINT_COLUMNS` to `COLUMNS`.

`readable`, `readable_repairs` and `readable_heal` turn a table into text for reading: values with their
intervals, changes with their paired intervals and verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..metrics import METRICS
from ..task.recalibration import RECALIBRATORS
from ..task.uncertainty import Difference, Interval
from .repair import RepairComparison
from .sets import KEYS as SET_KEYS

INTERVALS = ("accuracy", "ece", "smooth_ece", "brier", "nll", "label_mass", "ece_temperature_scaled",
             "comprehensiveness", "sufficiency")
"""The metrics whose sweep columns carry a 95% interval and the paired change from the full model."""


def interval_columns(key: str) -> list[str]:
    """``key``'s interval columns: its 95% interval, and its change from the full model with interval and p."""
    return [f"{key}_lo", f"{key}_hi", f"{key}_change", f"{key}_change_lo", f"{key}_change_hi", f"{key}_change_p"]


SET_INTERVALS = ("coverage", "set_size", "singleton_share", "aurc", "accuracy_at_80")
"""The prediction-set and abstention metrics whose sweep columns carry an interval and the paired change."""
SET_COLUMNS = ["qhat", *SET_KEYS, *[c for k in SET_INTERVALS for c in interval_columns(k)]]
"""Each point's prediction sets at the configured alpha and method (``qhat``: the pruned side's threshold; empty
without validation examples, or too few for alpha) and its abstention metrics (`core.study.sets`)."""

COLUMNS = ["dropped", "layers", "accuracy", "ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll", "label_mass",
           "temperature", "ece_temperature_scaled", "comprehensiveness", "sufficiency", "random_comprehensiveness",
           "random_sufficiency", "right_to_wrong", "wrong_to_right", "mcnemar_p", "ece_noise_q95",
           *[c for k in INTERVALS for c in interval_columns(k)], *SET_COLUMNS,
           "seconds", "latency_ms", "latency_full_ms", "latency_ratio", "latency_ratio_lo", "latency_ratio_hi",
           "flop_ratio"]
REPAIRED = ("ece", "smooth_ece", "accuracy")
"""The metrics a sweep with repair methods (``PointConfig.repair``) writes per method, each with the interval
columns of `interval_columns`: the pruned model after the method, and its change from the full model."""
REPAIR_NOTES = ("verdict", "changed")
"""Per method, the comparison's verdict in words and how many predicted answers it changed."""


def repaired_column(key: str, method: str) -> str:
    """The column of metric ``key`` after repair ``method``: ``ece_repaired_temperature``."""
    return f"{key}_repaired_{method}"


def repair_columns(methods: Sequence[str]) -> list[str]:
    """The columns a sweep with ``methods`` adds, per method: each metric of `REPAIRED` after it, with its interval
    columns, then `REPAIR_NOTES` (``verdict_repaired_<method>``, ``changed_repaired_<method>``)."""
    out: list[str] = []
    for m in methods:
        for key in REPAIRED:
            out += [repaired_column(key, m), *interval_columns(repaired_column(key, m))]
        out += [repaired_column(x, m) for x in REPAIR_NOTES]
    return out


HEALED = (*INTERVALS, *SET_INTERVALS)
"""The metrics a sweep with healing (``PointConfig.heal``) writes for the healed model: ``<metric>_healed`` with
the interval columns of `interval_columns` (its change from the full model), then its paired change from the
unhealed pruned model (`heal_gain_columns`)."""
HEAL_FLIPS = ("right_to_wrong", "wrong_to_right", "mcnemar_p")
"""The healed model's flips against the full model (``right_to_wrong_healed``, ...), as the unhealed ones."""
HEAL_NOTES = ("healed_right_to_wrong_vs_pruned", "healed_wrong_to_right_vs_pruned", "healed_mcnemar_p_vs_pruned",
              "heal_loss_first", "heal_loss_last")
"""The flips healing made against the unhealed pruned model, and the training loss of the first and the last five
steps."""


def healed_column(key: str) -> str:
    """The column of metric ``key`` for the healed model: ``ece_healed``."""
    return f"{key}_healed"


def heal_gain_columns(key: str) -> list[str]:
    """The healed model's paired change in ``key`` from the unhealed pruned model: value, 95% interval and p."""
    base = f"{key}_healed_vs_pruned"
    return [base, f"{base}_lo", f"{base}_hi", f"{base}_p"]


HEALED_POINT_COLUMNS = [*[c for k in HEALED for c in heal_gain_columns(k)], *HEAL_NOTES]
"""What a healed model's own row (`healed_point`) adds to `COLUMNS`: its changes from the unhealed pruned model."""


def heal_columns() -> list[str]:
    """The columns a sweep with healing adds: per metric of `HEALED`, ``<metric>_healed`` with its interval columns
    and its `heal_gain_columns`; then the flips of `HEAL_FLIPS` (``right_to_wrong_healed``, ...) and `HEAL_NOTES`."""
    out: list[str] = []
    for key in HEALED:
        out += [healed_column(key), *interval_columns(healed_column(key)), *heal_gain_columns(key)]
    return [*out, *(healed_column(x) for x in HEAL_FLIPS), *HEAL_NOTES]


def repaired_methods(table: pd.DataFrame) -> list[str]:
    """The repair methods a sweep table has columns for, in menu order."""
    return [m for m in RECALIBRATORS if repaired_column("ece", m) in table]


TIMINGS = ("seconds", "latency_ms", "latency_full_ms", "latency_ratio", "latency_ratio_lo", "latency_ratio_hi",
           "flop_ratio")
"""Measured afresh on each run, never stored with a point."""


def _put_intervals(row: dict, key: str, side: Interval | None, diff: Difference | None) -> None:
    values = [None] * 6 if side is None or diff is None else [side.lo, side.hi, diff.value, diff.lo, diff.hi,
                                                                diff.p_value]
    row.update(zip(interval_columns(key), values, strict=True))


def _put_repairs(row: dict, repairs: RepairComparison) -> None:
    """Each method's `REPAIRED` metrics with intervals and changes from the full model, verdict and answers changed
    (a method that could not be fitted leaves its metrics empty and says so in its verdict)."""
    for r in repairs.rows[1:]:
        for key in REPAIRED:
            column = repaired_column(key, r.method)
            row[column] = r.metrics[key].value if r.fitted else None
            _put_intervals(row, column, r.metrics.get(key), r.vs_full.get(key))
        row[repaired_column("verdict", r.method)] = r.verdict if r.fitted else f"{r.verdict}: {r.error}"
        row[repaired_column("changed", r.method)] = r.changed if r.fitted else None


def _put_gain(row: dict, key: str, diff: Difference | None) -> None:
    values = [None] * 4 if diff is None else [diff.value, diff.lo, diff.hi, diff.p_value]
    row.update(zip(heal_gain_columns(key), values, strict=True))


def _put_heal(row: dict, healed: dict) -> None:
    """A pruned point's healing columns from the healed model's own row (`core.study.sweep.healed_point`)."""
    for key in HEALED:
        row[healed_column(key)] = healed[key]
        row.update(zip(interval_columns(healed_column(key)), (healed[c] for c in interval_columns(key)), strict=True))
        row.update((c, healed[c]) for c in heal_gain_columns(key))
    row.update((healed_column(x), healed[x]) for x in HEAL_FLIPS)
    row.update((x, healed[x]) for x in HEAL_NOTES)


def readable(table: pd.DataFrame, keys: Sequence[str] = ("accuracy", "ece", "smooth_ece", "comprehensiveness",
                                                             "sufficiency")) -> pd.DataFrame:
    """A sweep table for reading: per metric, its value with the 95% interval and its change from the full
    model with the paired interval and a verdict (rows without intervals, e.g. older points, show the value)."""
    out = table[[c for c in ("dropped", "layers") if c in table]].copy()
    for key in keys:
        if key not in table or table[key].isna().all():
            continue
        m = METRICS[key]
        lo, hi, ch, clo, chi, p = interval_columns(key)
        has = {c: c in table for c in (lo, ch)}
        out[m.title] = [
            f"{r[key]:.3f}" + (f" [{r[lo]:.3f}, {r[hi]:.3f}]" if has[lo] and pd.notna(r[lo]) else "")
            if pd.notna(r[key]) else "" for _, r in table.iterrows()]
        if has[ch]:
            out[f"{m.title}: change from full"] = [
                f"{r[ch]:+.3f} [{r[clo]:+.3f}, {r[chi]:+.3f}] "
                f"{m.verdict(r[ch], r[clo] > 0 or r[chi] < 0, r[p])}" if pd.notna(r[ch]) else ""
                for _, r in table.iterrows()]
    return out


def readable_heal(table: pd.DataFrame, keys: Sequence[str] = ("accuracy", "ece", "smooth_ece", "comprehensiveness",
                                                                 "sufficiency")) -> pd.DataFrame | None:
    """One row per pruned mask of a sweep table with healing columns: per metric, the healed model's value with its
    95% interval, its change from the full model and from the unhealed pruned model, each with the paired interval
    and a verdict (None without healing columns)."""
    if healed_column("accuracy") not in table:
        return None
    rows = table[table["dropped"] > 0] if "dropped" in table else table
    out = rows[[c for c in ("dropped", "layers") if c in rows]].copy()
    for key in keys:
        column = healed_column(key)
        if column not in rows or rows[column].isna().all():
            continue
        m = METRICS[key]
        lo, hi, ch, clo, chi, p = interval_columns(column)
        gain, glo, ghi, gp = heal_gain_columns(key)
        out[f"{m.title}, healed"] = [f"{r[column]:.3f} [{r[lo]:.3f}, {r[hi]:.3f}]" if pd.notna(r[column]) else ""
                                     for _, r in rows.iterrows()]
        for title, (v, a, b, q) in (("from full", (ch, clo, chi, p)), ("from pruned", (gain, glo, ghi, gp))):
            out[f"{m.title}, healed: change {title}"] = [
                f"{r[v]:+.3f} [{r[a]:+.3f}, {r[b]:+.3f}] {m.verdict(r[v], r[a] > 0 or r[b] < 0, r[q])}"
                if pd.notna(r[v]) else "" for _, r in rows.iterrows()]
    return out


def readable_repairs(table: pd.DataFrame) -> pd.DataFrame | None:
    """One row per mask of a sweep table with repair columns: per method, its ECE after repair with the 95%
    interval, its change from the full model with the paired interval, and its verdict (None without repairs)."""
    methods = repaired_methods(table)
    if not methods:
        return None
    out = table[[c for c in ("dropped", "layers", "ece") if c in table]].rename(columns={"ece": "ECE, unrepaired"})
    if "ECE, unrepaired" in out:
        out["ECE, unrepaired"] = [f"{v:.3f}" if pd.notna(v) else "" for v in out["ECE, unrepaired"]]
    for m in methods:
        key = repaired_column("ece", m)
        lo, hi, ch, clo, chi, _ = interval_columns(key)
        title = RECALIBRATORS[m].title
        out[f"ECE after {title}"] = [
            f"{r[key]:.3f} [{r[lo]:.3f}, {r[hi]:.3f}]; from full {r[ch]:+.3f} [{r[clo]:+.3f}, {r[chi]:+.3f}]"
            if pd.notna(r[key]) else "" for _, r in table.iterrows()]
        verdict = repaired_column("verdict", m)
        changed = repaired_column("changed", m)
        out[f"{title}: verdict"] = [
            str(r[verdict]) + (f" ({int(r[changed])} answer{'s' if r[changed] != 1 else ''} changed)"
                               if pd.notna(r.get(changed)) and r[changed] else "")
            if pd.notna(r.get(verdict)) else "" for _, r in table.iterrows()]
    return out
