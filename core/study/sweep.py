"""Trade-off points and sweeps: one row of metrics per attention mask, and the masks evaluated so far.

A point is a mask's accuracy and calibration on the evaluation sample and, when asked for, the
faithfulness of an explainer on the first ``faith_n`` of those examples, with the random baseline.
Every part comes from or goes to the result cache, so an interrupted sweep resumes where it stopped
and a point computed once (in the app, the CLI or a sweep) is never computed again.

Each computed point is also recorded under its *context* (model, data, prompt, sample and explainer
settings), so that the trade-off view can show every mask evaluated so far in that context.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import pandas as pd

from ..cache import cache_key
from ..errors import UserError
from ..explain.dataset import DatasetExplainer, ExplainConfig, dataset_faithfulness
from ..model.efficiency import compare_latency
from ..model.pruning import parse_layer_list, validate_mask
from ..progress import StageProgress
from ..task.evaluation import EvalConfig, evaluate
from ..task.setup import Setup

COLUMNS = ["dropped", "layers", "accuracy", "ece", "adaptive_ece", "mce", "brier", "nll", "temperature",
           "ece_temperature_scaled", "comprehensiveness", "sufficiency", "random_comprehensiveness",
           "random_sufficiency", "seconds", "latency_ms", "latency_full_ms"]
TIMINGS = ("seconds", "latency_ms", "latency_full_ms")
"""Measured afresh on each run, never stored with a point."""


@dataclass(frozen=True)
class PointConfig:
    eval: EvalConfig = EvalConfig()
    explain: ExplainConfig | None = None
    """None: accuracy and calibration only."""
    faith_n: int = 20


def mask_label(drop: Sequence[int]) -> str:
    return "none" if not drop else ",".join(map(str, sorted(drop)))


def sweep_order(table: pd.DataFrame) -> list[int]:
    """The layers in the order a sweep table dropped them: the inverse of `mask_label` over its rows.

    Labels are sorted, so the order is read from what each row adds to the one before.
    """
    order: list[int] = []
    for label in table.sort_values("dropped").get("layers", pd.Series(dtype=str)).astype(str):
        order += [int(x) for x in parse_layer_list(label) if x.isdigit() and int(x) not in order]
    return order


def _context_key(setup: Setup, config: PointConfig) -> str:
    e = config.eval
    explain = None
    if config.explain is not None:
        explain = {"explainer": config.explain.explainer, "params": config.explain.resolved_params(),
                   "granularity": config.explain.granularity, "removal": config.explain.removal,
                   "k": list(config.explain.k_percents), "n": config.faith_n}
    return cache_key("points", model=setup.lm.id, data=setup.ds.fingerprint, split=e.split, n=e.n, seed=e.seed,
                     balanced=e.balanced, prompt=asdict(setup.prompt), bins=e.n_bins, val_n=e.val_n,
                     explain=explain,
                     # only when set, so that the points recorded before the option existed stay found
                     **({"refit_head": True} if setup.refit_head else {}))


def evaluate_point(setup: Setup, drop: Sequence[int], config: PointConfig,
                   progress: StageProgress | None = None) -> dict:
    """One row of `COLUMNS` for mask ``drop``; recorded among the context's points when the setup has a cache."""
    start = time.perf_counter()
    drop = validate_mask(drop, setup.lm.num_layers)
    e = replace(config.eval, drop=tuple(sorted(drop)))
    result = evaluate(setup, e, progress=(lambda d, t: progress("scoring", d, t)) if progress else None)
    m, scaled = result.metrics, result.metrics_temperature_scaled
    row = {"dropped": len(drop), "layers": mask_label(drop), "accuracy": m.accuracy, "ece": m.ece,
           "adaptive_ece": m.adaptive_ece, "mce": m.mce, "brier": m.brier, "nll": m.nll,
           "temperature": result.temperature, "ece_temperature_scaled": scaled.ece if scaled else None,
           "comprehensiveness": None, "sufficiency": None, "random_comprehensiveness": None,
           "random_sufficiency": None}
    if config.explain is not None:
        explainer = DatasetExplainer(setup, drop, config.explain, e.split)
        faith = dataset_faithfulness(explainer, result.examples[: config.faith_n],
                                     progress=(lambda d, t: progress("explaining", d, t)) if progress else None)
        s = faith.summary()
        row.update(comprehensiveness=s["comprehensiveness"], sufficiency=s["sufficiency"],
                   random_comprehensiveness=s["random_baseline_comprehensiveness"],
                   random_sufficiency=s["random_baseline_sufficiency"])
    row["seconds"] = time.perf_counter() - start
    record_point(setup, config, row)
    return row


def record_point(setup: Setup, config: PointConfig, row: dict) -> None:
    """Add ``row`` to the masks evaluated so far in this context (nothing without a cache)."""
    if setup.cache is None:
        return
    key = _context_key(setup, config)
    points = setup.cache.get(key) or {}
    points[row["layers"]] = {k: v for k, v in row.items() if k not in TIMINGS}
    setup.cache.put(key, points)


def points(setup: Setup, config: PointConfig) -> pd.DataFrame:
    """Every mask evaluated so far in this context, one row each (`COLUMNS` less the timings)."""
    stored = (setup.cache.get(_context_key(setup, config)) if setup.cache is not None else None) or {}
    table = pd.DataFrame(list(stored.values()), columns=[c for c in COLUMNS if c not in TIMINGS])
    return table.sort_values(["dropped", "layers"]).reset_index(drop=True)


def sweep(setup: Setup, order: Sequence[int], max_drop: int, config: PointConfig,
          progress: StageProgress | None = None, latency: bool = True) -> pd.DataFrame:
    """Drop the first 0, 1, ..., ``max_drop`` layers of ``order`` in turn: one row per step.

    ``latency_ms`` is measured afresh (never cached): a forward pass over 128 tokens, median of 3,
    timed in turns with the full model's (``latency_full_ms``) so that their ratio holds under load.
    """
    if not 0 <= max_drop <= len(order):
        raise UserError(f"the number of layers to drop must be between 0 and {len(order)} (got {max_drop})")
    rows = []
    for k in range(max_drop + 1):
        def step(stage: str, done: float, total: int, k: int = k) -> None:
            if progress:  # in points: the finished ones plus the running one's share
                progress(f"{k} of {max_drop} layers dropped: {stage}", k + done / max(total, 1), max_drop + 1)
        row = evaluate_point(setup, order[:k], config, step)
        if latency:
            full, pruned = compare_latency(setup.lm, order[:k], tokens=128, repeats=3)
            row["latency_ms"], row["latency_full_ms"] = 1000 * pruned, 1000 * full
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
