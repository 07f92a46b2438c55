"""Trade-off points and sweeps: one row of metrics per attention mask, and the masks evaluated so far.

A point is a mask's accuracy and calibration on the evaluation sample and, when asked for, the
faithfulness of an explainer on the first ``faith_n`` of those examples, with the random baseline.
Every part comes from or goes to the result cache, so an interrupted sweep resumes where it stopped
and a point computed once (in the app, the CLI or a sweep) is never computed again.

With repair methods (`PointConfig.repair`), each point also carries the methods fitted on the mask's
validation split (`core.study.repair`), and with healing (`PointConfig.heal`) each pruned point also
carries the healed model (`core.study.healing`: LoRA adapters trained under the mask, cached by content;
minutes per mask on a CPU). The table's columns (`COLUMNS`, `repair_columns`, `heal_columns`), how a row
fills them and how a table is read (`readable`, ...) live in `core.study.sweep_columns`, and are imported
from here too. `healed_point` is the healed model's own row, which the study grid writes as a row of its own.

Each computed point is also recorded under its *context* (model, data, prompt, sample and explainer
settings), so that the trade-off view can show every mask evaluated so far in that context.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from ..cache import cache_key
from ..errors import UserError
from ..explain.dataset import DatasetExplainer, ExplainConfig, dataset_faithfulness
from ..metrics import FAITHFULNESS
from ..model.efficiency import compare_latency
from ..model.pruning import parse_layer_list, validate_mask
from ..progress import StageProgress
from ..task.conformal import rank
from ..task.evaluation import EvalConfig, EvalResult, evaluate, is_cached
from ..task.recalibration import RECALIBRATION_VERSION
from ..task.setup import Setup
from ..task.uncertainty import mean_interval, paired_mean_difference, resample_counts
from .compare import paired_stats
from .heal_job import timed_heal
from .healed import healed_setup, release_healed
from .healing import HealConfig, heal_key
from .repair import repair_results
from .sets import DEFAULT_ALPHA, DEFAULT_METHOD, check_settings, set_stats
from .sets import KEYS as SET_KEYS
from .sweep_columns import (  # noqa: F401 - the sweep table's columns and readers are imported from here
    COLUMNS,
    HEAL_FLIPS,
    HEAL_NOTES,
    HEALED,
    HEALED_POINT_COLUMNS,
    INTERVALS,
    REPAIR_NOTES,
    REPAIRED,
    SET_COLUMNS,
    SET_INTERVALS,
    TIMINGS,
    _put_gain,
    _put_heal,
    _put_intervals,
    _put_repairs,
    heal_columns,
    heal_gain_columns,
    healed_column,
    interval_columns,
    readable,
    readable_heal,
    readable_repairs,
    repair_columns,
    repaired_column,
    repaired_methods,
)


@dataclass(frozen=True)
class PointConfig:
    eval: EvalConfig = EvalConfig()
    explain: ExplainConfig | None = None
    """None: accuracy and calibration only."""
    faith_n: int = 20
    alpha: float = DEFAULT_ALPHA
    """The prediction sets' miscoverage."""
    method: str = DEFAULT_METHOD
    """The prediction sets' conformal score (`core.task.conformal.METHODS`)."""
    repair: tuple[str, ...] = ()
    """Recalibration methods to fit on each mask's validation split (`repair_columns`); none by default."""
    heal: HealConfig | None = None
    """Heal each pruned mask with these settings and add the healed model's columns (`heal_columns`); None: no
    healing (the default: it takes minutes per mask on a CPU)."""

    def columns(self) -> list[str]:
        """Every column a sweep with this config writes: `COLUMNS`, then the repair and the healing columns."""
        return [*COLUMNS, *repair_columns(self.repair), *(heal_columns() if self.heal else [])]


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
                     explain=explain, sets={"alpha": repr(float(config.alpha)), "method": config.method},
                     # only when set, so that the points recorded before the options existed stay found
                     **({"refit_head": True} if setup.refit_head else {}),
                     **({"repair": list(config.repair), "repair_version": RECALIBRATION_VERSION}
                        if config.repair else {}),
                     # the adapters' key without a mask: the model, the training data and every setting
                     **({"heal": heal_key(setup, (), config.heal)} if config.heal else {}))


def evaluate_point(setup: Setup, drop: Sequence[int], config: PointConfig,
                   progress: StageProgress | None = None, next_masks: Sequence[Sequence[int]] = (),
                   full_setup: Setup | None = None) -> dict:
    """One row of `COLUMNS` for mask ``drop`` (and `heal_columns` with ``config.heal``); recorded among the
    context's points when the setup has a cache.

    Intervals and changes are paired against the full model on the same examples (`paired_stats`), so
    the full model is evaluated too (from the cache after the first time). ``next_masks``: the masks the
    caller evaluates next (a sweep's later steps), whose explanations then start from the hidden states
    this one keeps where they first differ (`core.model.states`; scoring keeps every layer anyway).
    ``full_setup``: the setup whose unpruned model the changes are paired against, when it is not ``setup``'s
    own (a healed model's point is compared with the original full model).
    """
    start = time.perf_counter()
    drop = validate_mask(drop, setup.lm.num_layers)
    e = replace(config.eval, drop=tuple(sorted(drop)))
    result = evaluate(setup, e, progress=(lambda d, t: progress("scoring", d, t)) if progress else None)
    base = full_setup or setup
    full = result if not drop and full_setup is None else evaluate(
        base, replace(e, drop=()), progress=(lambda d, t: progress("full model", d, t)) if progress else None)
    stats = paired_stats(full, result)
    m, scaled = result.metrics, result.metrics_temperature_scaled
    row = {"dropped": len(drop), "layers": mask_label(drop), **{k: getattr(m, k) for k in
           ("accuracy", "ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll")},
           "label_mass": stats.other["label_mass"].value if "label_mass" in stats.other else None,
           "temperature": result.temperature, "ece_temperature_scaled": scaled.ece if scaled else None,
           "comprehensiveness": None, "sufficiency": None, "random_comprehensiveness": None,
           "random_sufficiency": None, "right_to_wrong": stats.mcnemar.right_to_wrong,
           "wrong_to_right": stats.mcnemar.wrong_to_right, "mcnemar_p": stats.mcnemar.p_value,
           "ece_noise_q95": stats.noise_floor["ece"][1].q95}
    for key in INTERVALS:
        side, diff = stats.other.get(key), stats.difference.get(key)
        if key == "ece_temperature_scaled":
            side, diff = stats.scaled_other.get("ece"), stats.scaled_difference.get("ece")
        _put_intervals(row, key, side, diff)
    row.update(_set_columns(full, result, config))
    if config.repair:
        _put_repairs(row, repair_results(full, result, setup, config.repair))
    fresh = not result.cached  # the mask's own scores were computed here: its time is a fair estimate
    if config.explain is not None:
        later = [tuple(m) for m in next_masks]
        sides = ([(base, (), "explaining the full model", [drop, *later] if full_setup is None else [])]
                 if drop or full_setup is not None else []) + [(setup, drop, "explaining", later)]
        faith = [dataset_faithfulness(DatasetExplainer(where, mask, config.explain, e.split, next_masks=after),
                                      result.examples[: config.faith_n],
                                      progress=(lambda d, t, s=stage: progress(s, d, t)) if progress else None)
                 for where, mask, stage, after in sides]
        fresh = fresh and not faith[-1].cached
        s = faith[-1].summary()
        row.update(comprehensiveness=s["comprehensiveness"], sufficiency=s["sufficiency"],
                   random_comprehensiveness=s["random_baseline_comprehensiveness"],
                   random_sufficiency=s["random_baseline_sufficiency"])
        base_rows, rows = faith[0].per_example(), faith[-1].per_example()
        counts = resample_counts(len(rows), seed=0)
        for key in FAITHFULNESS:
            values = np.array([r[key] for r in rows])
            _put_intervals(row, key, mean_interval(values, counts),
                           paired_mean_difference(np.array([r[key] for r in base_rows]), values, counts))
    if config.heal is not None:
        row.update(dict.fromkeys(heal_columns()))
        if drop:  # the full model has nothing to heal
            healed, from_cache = _healed_point(setup, drop, config, progress)
            fresh = fresh and not from_cache
            _put_heal(row, healed)
    row["seconds"] = time.perf_counter() - start
    record_point(setup, config, row, timed=fresh)
    return row


def healed_point(setup: Setup, drop: Sequence[int], config: PointConfig, progress: StageProgress | None = None
                 ) -> dict:
    """The healed model's row for mask ``drop``: `COLUMNS` for the model healed with ``config.heal`` under the mask
    (its changes from the original full model), then `HEALED_POINT_COLUMNS` (its paired changes from the unhealed
    pruned model, the flips healing made, the training loss). The adapters come from the cache when trained before.

    Healing takes minutes per mask on a CPU; ``progress`` hears it as the stage "healing", step by step.
    """
    return _healed_point(setup, drop, config, progress)[0]


def _healed_point(setup: Setup, drop: Sequence[int], config: PointConfig, progress: StageProgress | None
                  ) -> tuple[dict, bool]:
    """`healed_point`'s row, and whether its adapters came from the cache."""
    if config.heal is None:
        raise UserError("a healed point needs healing settings (PointConfig.heal)")
    start = time.perf_counter()
    drop = validate_mask(drop, setup.lm.num_layers)
    trained = timed_heal(setup, drop, config.heal, progress=(
        lambda s: progress(f"healing, step {s.step} of {s.total}", s.step, s.total)) if progress else None)
    hs = healed_setup(setup, trained)
    try:
        plain = replace(config, heal=None)
        row = evaluate_point(hs, drop, plain, progress, full_setup=setup)
        e = replace(config.eval, drop=tuple(sorted(drop)))
        pruned, healed = evaluate(setup, e), evaluate(hs, e)  # both from the cache now
        stats = paired_stats(pruned, healed)
        for key in INTERVALS:
            diff = stats.scaled_difference.get("ece") if key == "ece_temperature_scaled" else stats.difference.get(key)
            _put_gain(row, key, diff)
        sets = _set_columns(pruned, healed, config)
        for key in SET_INTERVALS:
            _, _, value, lo, hi, p = interval_columns(key)
            row.update(zip(heal_gain_columns(key), (sets[value], sets[lo], sets[hi], sets[p]), strict=True))
        if config.explain is not None:
            examples = pruned.examples[: config.faith_n]
            rows = [dataset_faithfulness(DatasetExplainer(where, drop, config.explain, e.split), examples).per_example()
                    for where in (setup, hs)]
            counts = resample_counts(len(rows[0]), seed=0)
            for key in FAITHFULNESS:
                _put_gain(row, key, paired_mean_difference(*(np.array([r[key] for r in side]) for side in rows),
                                                           counts))
        m = stats.mcnemar
        first, last = trained.loss_change() or (None, None)
        row.update(zip(HEAL_NOTES, (m.right_to_wrong, m.wrong_to_right, m.p_value, first, last), strict=True))
    finally:
        release_healed(hs.lm)
    row["seconds"] = time.perf_counter() - start
    return row, trained.cached


def _set_columns(full: EvalResult, result: EvalResult, config: PointConfig) -> dict:
    """The `SET_COLUMNS` of a point: prediction sets where its validation examples allow ``config.alpha``,
    abstention always, each with the paired change from the full model."""
    check_settings(config.alpha, config.method)
    n_cal = 0 if result.val_labels is None else len(result.val_labels)
    if n_cal and rank(n_cal, config.alpha) > n_cal:  # too few for alpha: no sets, as without validation
        full, result = _without_validation(full), _without_validation(result)
    s = set_stats(full, result, config.alpha, config.method)
    assert s.other is not None and s.difference is not None
    row: dict = {k: s.other[k].value if k in s.other else None for k in SET_KEYS}
    row["qhat"] = s.sets_other.qhat if s.sets_other is not None else None
    for key in SET_INTERVALS:
        _put_intervals(row, key, s.other.get(key), s.difference.get(key))
    return row


def _without_validation(result: EvalResult) -> EvalResult:
    return replace(result, val_logits=None, val_labels=None, _memo={})


_RECORDING = threading.Lock()
"""One read-modify-write of a context's points at a time (a background sweep and the page both record)."""


def record_point(setup: Setup, config: PointConfig, row: dict, timed: bool = False) -> None:
    """Add ``row`` to the masks evaluated so far in this context (nothing without a cache).

    ``timed``: its ``seconds`` were spent computing it (none of it came from the cache), so they are
    kept for `estimate_sweep`.
    """
    if setup.cache is None:
        return
    key = _context_key(setup, config)
    with _RECORDING:
        points = setup.cache.load(key, _points) or {}
        if timed and row.get("seconds") is not None:
            _record_seconds(setup, config, float(row["seconds"]))
        points[row["layers"]] = {k: v for k, v in row.items() if k not in TIMINGS}
        setup.cache.put(key, points)


def _points(stored: dict) -> dict[str, dict]:
    """The recorded points of a context: one row (a dict) per mask label."""
    if not all(isinstance(row, dict) and "dropped" in row for row in stored.values()):
        raise ValueError("a point is not a row with 'dropped'")
    return stored


def points(setup: Setup, config: PointConfig) -> pd.DataFrame:
    """Every mask evaluated so far in this context, one row each (`COLUMNS` less the timings, and the context's
    `repair_columns` and `heal_columns`)."""
    stored = (setup.cache.load(_context_key(setup, config), _points) if setup.cache is not None else None) or {}
    table = pd.DataFrame(list(stored.values()), columns=[c for c in config.columns() if c not in TIMINGS])
    return table.sort_values(["dropped", "layers"]).reset_index(drop=True)


def sweep_steps(setup: Setup, order: Sequence[int], max_drop: int, config: PointConfig,
                progress: StageProgress | None = None, latency: bool = True) -> Iterator[dict]:
    """The rows of `sweep`, one at a time, as each step is done (a caller may stop between them)."""
    if not 0 <= max_drop <= len(order):
        raise UserError(f"the number of layers to drop must be between 0 and {len(order)} (got {max_drop})")
    for k in range(max_drop + 1):
        def step(stage: str, done: float, total: int, k: int = k) -> None:
            if progress:  # in points: the finished ones plus the running one's share
                progress(f"{k} of {max_drop} layers dropped: {stage}", k + done / max(total, 1), max_drop + 1)
        row = evaluate_point(setup, order[:k], config, step, next_masks=[order[:j] for j in range(k + 1, max_drop + 1)])
        if latency:
            timing = compare_latency(setup.lm, order[:k], tokens=128)
            row.update(latency_ms=1000 * timing.pruned_seconds, latency_full_ms=1000 * timing.full_seconds,
                       latency_ratio=timing.ratio, latency_ratio_lo=timing.lo, latency_ratio_hi=timing.hi,
                       flop_ratio=timing.flop_ratio)
        yield row


def sweep(setup: Setup, order: Sequence[int], max_drop: int, config: PointConfig,
          progress: StageProgress | None = None, latency: bool = True) -> pd.DataFrame:
    """Drop the first 0, 1, ..., ``max_drop`` layers of ``order`` in turn: one row per step.

    ``latency_ms`` is measured afresh (never cached): a forward pass over 128 tokens, median of 9, timed in
    turns with the full model's (``latency_full_ms``) so that their ratio holds under load; ``latency_ratio``
    is the median of the paired ratios with its 95% interval (``_lo``, ``_hi``), and ``flop_ratio`` the ratio
    the FLOP count alone gives (`core.model.efficiency.compare_latency`).
    """
    return pd.DataFrame(list(sweep_steps(setup, order, max_drop, config, progress, latency)),
                        columns=config.columns())


@dataclass(frozen=True)
class SweepEstimate:
    """What a sweep will cost before it runs: its masks, which are cached, and the time for the rest."""

    masks: list[str]
    """Each step's mask label (0, 1, ... layers dropped); empty when the order is not known yet (greedy)."""
    cached: list[bool]
    seconds: float | None
    """Estimated seconds for the masks to compute (None: nothing measured yet with these settings)."""
    basis: str
    """Where the estimate comes from, in words."""

    @property
    def to_compute(self) -> int:
        return len(self.masks) - sum(self.cached)


RECENT_POINTS = 5
"""How many of the last computed points' times an estimate takes the median of."""


def _timing_key(setup: Setup, config: PointConfig) -> str:
    return cache_key("point-seconds", context=_context_key(setup, config))


def estimate_sweep(setup: Setup, order: Sequence[int] | None, max_drop: int, config: PointConfig) -> SweepEstimate:
    """The masks of a sweep of ``order`` (None: not known before a greedy search) to ``max_drop`` layers, which
    of them are cached in this context, and the time for the others: the median time of the last points
    computed with these settings (none yet: nothing to go on, said so)."""
    known = set(points(setup, config)["layers"])
    masks = [mask_label(order[:k]) for k in range(max_drop + 1)] if order is not None else []
    # a mask whose scores are cached (prefetched, or evaluated on another view) costs seconds at most, unless
    # it still needs explaining; with re-fitted heads, looking its scores up would fit a head per mask
    cached = [m in known or (config.explain is None and not setup.refit_head
                             and is_cached(setup, replace(config.eval, drop=tuple(sorted(order[:k])))))
              for k, m in enumerate(masks)]
    recent = (setup.cache.load(_timing_key(setup, config), _seconds) if setup.cache is not None else None) or []
    todo = (len(masks) - sum(cached)) if order is not None else max_drop + 1
    if not recent:
        return SweepEstimate(masks, cached, None, "no mask has been computed with these settings yet: the first "
                                                  "one measures it")
    per = float(np.median(recent))
    return SweepEstimate(masks, cached, per * todo, f"{per:.0f} s per mask, the median of the last {len(recent)} "
                                                    "computed with these settings")


def _seconds(stored: dict) -> list[float]:
    seconds = stored.get("seconds")
    if not isinstance(seconds, list) or not all(isinstance(x, int | float) for x in seconds):
        raise ValueError("not a list of seconds")
    return [float(x) for x in seconds]


def _record_seconds(setup: Setup, config: PointConfig, seconds: float) -> None:
    """Remember how long a new point took, for `estimate_sweep` (`record_point` calls it with a cache)."""
    key = _timing_key(setup, config)
    recent = setup.cache.load(key, _seconds) or []
    setup.cache.put(key, {"seconds": (recent + [seconds])[-RECENT_POINTS:]})
