"""Repair after pruning: which recalibration brings a pruned model's confidence back, judged against noise.

`compare_repairs` takes one mask's logits and returns a `RepairComparison`: one row per method of
`core.task.recalibration` (and the unrepaired pruned model, ``"none"``), each with

* every metric of `REPAIR_KEYS` on the test split with its 95% interval, by the method each metric gets
  everywhere (`core.task.uncertainty.methods`: Wilson, test inversion for the calibration errors, BCa);
* its paired change against the unrepaired pruned model and its paired difference from the full
  model (and, given the full model's validation logits, from the full model after the same method);
* how many predicted answers it changed, with McNemar's counts and p-value against the unrepaired
  pruned model, and a verdict in plain words.

`repair_results` (and `ResultComparison.repairs`, which memoises it) does the same from two evaluations of
the same examples: the pruned one's ``val_logits`` / ``val_labels`` (scored under its mask) to fit on,
its test logits to score, and contextual calibration's content-free answers scored under each mask
through the result cache (`cached_content_free_probs`).

**Honest fitting.** Each method is fitted on the pruned model's validation logits and labels only
and scored on the test split; it never sees a test label. A validation split smaller than a method
needs is said in its row ("fitted on only N validation examples; this method needs about M"), and a
method that cannot be fitted says why in its row while the others go on.

**One resampling.** Every row uses the same count matrix (`resample_counts` with one seed) and the
same simulations of correctness, so every paired difference, against any row, is over the same
resamples and simulations (`core.task.uncertainty.side` and `differences`).

**Verdicts** (a change is beyond noise when its paired 95% interval excludes 0; accuracy changes are
judged by the exact McNemar test at p < 0.05, the house test for flipped answers):

* ``restores the full model's calibration``: the pruned model was worse than the full model beyond
  noise in ECE or smooth ECE; the method improves ECE beyond noise against the unrepaired pruned
  model; its ECE and smooth ECE are within noise of the full model's (or better); and it does not
  cost accuracy beyond noise against the unrepaired pruned model.
* ``improves beyond noise``: ECE improves beyond noise against the unrepaired pruned model
  (otherwise; an accuracy loss beyond noise is said in the summary).
* ``worse``: ECE is worse beyond noise than the unrepaired pruned model's.
* ``no change``: ECE's change is within noise.
* ``not fitted``: the method could not be fitted (its row says why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import UserError
from ..metrics import METRICS
from ..model.pruning import validate_mask
from ..task import calibration as cal
from ..task.data import Example
from ..task.evaluation import EvalResult, score_cached
from ..task.recalibration import (
    RECALIBRATION_VERSION,
    RECALIBRATORS,
    Fitted,
    NotFittable,
    check_labels,
    check_logits,
    check_recalibrator,
    content_free_texts,
)
from ..task.uncertainty import (
    LEVEL,
    N_RESAMPLES,
    Difference,
    Interval,
    McNemar,
    Side,
    differences,
    mcnemar,
    resample_counts,
    side,
)

if TYPE_CHECKING:
    from ..task.data import Dataset
    from ..task.setup import Setup

REPAIR_KEYS = ("accuracy", "ece", "smooth_ece", "brier", "nll")
"""The metrics of every row, in table order."""
CALIBRATION_KEYS = ("ece", "smooth_ece")
"""The metrics a "restores" verdict asks to be within noise of the full model."""
UNREPAIRED = "none"
RESTORES, IMPROVES, NO_CHANGE, WORSE, NOT_FITTED = (
    "restores the full model's calibration", "improves beyond noise", "no change", "worse", "not fitted")
BEFORE = "before repair"
"""The verdict of the ``none`` row."""
ACCURACY_P = 0.05


@dataclass(frozen=True)
class RepairRow:
    """One method on one mask's test split (or the unrepaired pruned model, method ``"none"``)."""

    method: str
    title: str
    changes_prediction: bool
    """Whether the method can change a predicted answer at all."""
    verdict: str
    summary: str
    """The verdict in a sentence, with the numbers behind it."""
    notes: tuple[str, ...] = ()
    """Plain remarks: a validation split smaller than the method needs, an optimum on its bound."""
    error: str | None = None
    """Why the method could not be fitted (then it has no metrics)."""
    params: Mapping[str, object] = field(default_factory=dict)
    metrics: Mapping[str, Interval] = field(default_factory=dict)
    vs_pruned: Mapping[str, Difference] = field(default_factory=dict)
    """Paired change (this row - unrepaired pruned model)."""
    vs_full: Mapping[str, Difference] = field(default_factory=dict)
    """Paired difference (this row - full model)."""
    changed: int = 0
    """Test examples whose predicted answer differs from the unrepaired pruned model's."""
    mcnemar: McNemar | None = None
    """Correctness against the unrepaired pruned model (None when not fitted)."""
    full_after: Mapping[str, Interval] = field(default_factory=dict)
    """The full model after the same method, fitted on its own validation logits (empty unless asked)."""
    vs_full_after: Mapping[str, Difference] = field(default_factory=dict)
    """Paired difference (this row - the full model after the same method)."""
    full_after_error: str | None = None

    @property
    def fitted(self) -> bool:
        return self.error is None

    @property
    def flagged(self) -> bool:
        """Whether it changed any predicted answer (then its McNemar counts belong next to it)."""
        return self.changed > 0

    def as_dict(self) -> dict:
        def side(d: Mapping) -> dict:
            return {k: v.as_dict() for k, v in d.items()}

        return {"method": self.method, "title": self.title, "changes_prediction": self.changes_prediction,
                "verdict": self.verdict, "summary": self.summary, "notes": list(self.notes), "error": self.error,
                "params": dict(self.params), "metrics": side(self.metrics), "vs_pruned": side(self.vs_pruned),
                "vs_full": side(self.vs_full), "changed": self.changed,
                "mcnemar": self.mcnemar.as_dict() if self.mcnemar is not None else None,
                "full_after": side(self.full_after), "vs_full_after": side(self.vs_full_after),
                "full_after_error": self.full_after_error}


@dataclass(frozen=True)
class RepairComparison:
    """Every recalibration method on one mask: the rows, the full model's metrics and the resampling used."""

    n_test: int
    n_validation: int
    n_answers: int
    n_bins: int
    n_resamples: int
    seed: int
    full: Mapping[str, Interval]
    rows: tuple[RepairRow, ...]
    """The unrepaired pruned model (``"none"``) first, then the methods in menu order."""

    def row(self, method: str) -> RepairRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise UserError(f"no row for method '{method}'; rows: {', '.join(r.method for r in self.rows)}")

    def table(self) -> pd.DataFrame:
        """One row per method (the full model first, for reference): each metric with its interval, its change
        against the unrepaired pruned model and its difference from the full model, the answers changed,
        the verdict and the notes."""
        records = [{"method": "full model (reference)", "verdict": "",
                    **_cells(self.full, {}, {})}]
        for r in self.rows:
            flips = ""
            if r.mcnemar is not None:
                m = r.mcnemar
                flips = (f"{r.changed} ({m.right_to_wrong} right→wrong, {m.wrong_to_right} wrong→right, "
                         f"McNemar p = {m.p_value:.2g})" if r.changed else "none")
            records.append({"method": r.title, "verdict": r.verdict, **_cells(r.metrics, r.vs_pruned, r.vs_full),
                            "answers changed": flips, "notes": "; ".join([*r.notes, *([r.error] if r.error else [])])})
        return pd.DataFrame(records).set_index("method")

    def as_json(self) -> dict:
        return {"n_test": self.n_test, "n_validation": self.n_validation, "n_answers": self.n_answers,
                "n_bins": self.n_bins, "metrics": list(REPAIR_KEYS),
                "bootstrap": {"resamples": self.n_resamples, "seed": self.seed, "level": LEVEL},
                "full": {k: v.as_dict() for k, v in self.full.items()}, "rows": [r.as_dict() for r in self.rows]}


def _ci(i: Interval | Difference) -> str:
    return f"[{i.lo:.3f}, {i.hi:.3f}]"


def _cells(metrics: Mapping[str, Interval], vs_pruned: Mapping[str, Difference], vs_full: Mapping[str, Difference]
           ) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in REPAIR_KEYS:
        title = METRICS[key].title
        out[title] = metrics[key].value if key in metrics else np.nan
        out[f"{title} 95% CI"] = _ci(metrics[key]) if key in metrics else ""
        for name, d in (("change vs pruned", vs_pruned), ("difference vs full", vs_full)):
            out[f"{title} {name}"] = d[key].value if key in d else np.nan
            out[f"{title} {name} 95% CI"] = _ci(d[key]) if key in d else ""
    return out


def _score(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, n_bins: int, seed: int) -> Side:
    """One set of test probabilities' `REPAIR_KEYS` with the intervals every other view shows."""
    return side(probs, labels, counts, n_bins, len(counts), seed, keys=REPAIR_KEYS)


def _differences(base: Side, other: Side, seed: int) -> dict[str, Difference]:
    """Paired differences (other - base); exactly 0 when the two sides are the same probabilities (to 1e-12:
    a method that is the identity up to rounding must not come out "beyond noise")."""
    if np.allclose(base.probs, other.probs, rtol=0, atol=1e-12):
        return {k: Difference(0.0, 0.0, 0.0, 1.0) for k in REPAIR_KEYS}
    return differences(base, other, seed)


def _fit(name: str, logits: np.ndarray, labels: np.ndarray, content_free: np.ndarray | None,
         params: Mapping[str, object]) -> Fitted | str:
    try:
        return RECALIBRATORS[name].fit(logits, labels, content_free, **params)
    except NotFittable as e:
        return str(e)


def repair_verdict(vs_pruned: Mapping[str, Difference], vs_full: Mapping[str, Difference],
                   before: Mapping[str, Difference], flips: McNemar) -> str:
    """The verdict of one method by the rules of the module's notes.

    ``vs_pruned`` and ``vs_full`` are its paired differences from the unrepaired pruned model and the
    full model, ``before`` the unrepaired pruned model's from the full model, ``flips`` McNemar's
    test of its correctness against the unrepaired pruned model's.
    """
    pruned_worse = any(before[k].beyond_noise and before[k].value > 0 for k in CALIBRATION_KEYS)
    ece = vs_pruned["ece"]
    near_full = all(not vs_full[k].beyond_noise or vs_full[k].value < 0 for k in CALIBRATION_KEYS)
    costs_accuracy = flips.p_value < ACCURACY_P and flips.right_to_wrong > flips.wrong_to_right
    if ece.beyond_noise and ece.value < 0:
        return RESTORES if pruned_worse and near_full and not costs_accuracy else IMPROVES
    return WORSE if ece.beyond_noise else NO_CHANGE


def _summary(verdict: str, vs_pruned: Mapping[str, Difference], vs_full: Mapping[str, Difference],
             changed: int, flips: McNemar) -> str:
    d, f = vs_pruned["ece"], vs_full["ece"]
    text = (f"{verdict}: ECE change {d.value:+.3f} {_ci(d)} against the unrepaired pruned model, "
            f"{f.value:+.3f} {_ci(f)} from the full model")
    if changed:
        moved = "within noise"
        if flips.p_value < ACCURACY_P:
            moved = ("falls" if flips.right_to_wrong > flips.wrong_to_right else "rises") + " beyond noise"
        text += (f"; it changes {changed} predicted answer{'s' if changed != 1 else ''} ({flips.right_to_wrong} "
                 f"right→wrong, {flips.wrong_to_right} wrong→right, McNemar p = {flips.p_value:.2g}): accuracy "
                 f"{moved}")
    return text


def compare_repairs(
    full_test_logits: np.ndarray,
    pruned_val_logits: np.ndarray,
    val_labels: np.ndarray,
    pruned_test_logits: np.ndarray,
    test_labels: np.ndarray,
    *,
    methods: Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, object]] | None = None,
    content_free: np.ndarray | None = None,
    full_val_logits: np.ndarray | None = None,
    full_content_free: np.ndarray | None = None,
    n_bins: int = cal.DEFAULT_BINS,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> RepairComparison:
    """Every recalibration method of ``methods`` (all by default) fitted on the pruned model's validation split
    and compared on its test split with the unrepaired pruned model and the full model.

    Logits are [n, K] with -inf for answers an example does not offer (log-probabilities work as well).
    ``params`` overrides a method's parameters (``{"binning": {"n_bins": 5}}``). ``content_free`` is the
    pruned model's `content_free_probs` (contextual calibration needs it; without it that row says so).
    With ``full_val_logits`` (the full model on the same validation examples) each method is also fitted
    on the full model, and each row shows the full model after the same method (``full_content_free``
    is the full model's content-free answer distribution, for contextual calibration).
    """
    full_test = check_logits(full_test_logits)
    k = full_test.shape[1]
    pruned_test, pruned_val = check_logits(pruned_test_logits, k), check_logits(pruned_val_logits, k)
    if pruned_test.shape != full_test.shape:
        raise UserError(f"the full and pruned test logits cover different examples ({full_test.shape} vs "
                        f"{pruned_test.shape})")
    if not np.array_equal(np.isfinite(full_test), np.isfinite(pruned_test)):
        raise UserError("the full and pruned test logits offer different answers: they are not the same examples")
    labels = check_labels(test_labels, pruned_test, "test")
    if not len(labels):
        raise UserError("the repair comparison needs at least one test example")
    y_val = check_labels(val_labels, pruned_val, "validation")
    full_val = check_logits(full_val_logits, k) if full_val_logits is not None else None
    if full_val is not None and full_val.shape != pruned_val.shape:
        raise UserError(f"the full and pruned validation logits cover different examples ({full_val.shape} vs "
                        f"{pruned_val.shape})")
    names = list(RECALIBRATORS) if methods is None else [check_recalibrator(m).name for m in methods]
    params = dict(params or {})
    for name in params:
        check_recalibrator(name)

    counts = resample_counts(len(labels), n_resamples, seed)
    full = _score(cal.softmax(full_test), labels, counts, n_bins, seed)
    none = _score(cal.softmax(pruned_test), labels, counts, n_bins, seed)
    before = _differences(full, none, seed)
    predicted = none.probs.argmax(axis=1)
    rows = [RepairRow(UNREPAIRED, "none (pruned, unrepaired)", False, BEFORE,
                      "the pruned model before repair; its ECE against the full model: "
                      + METRICS["ece"].verdict(before["ece"].value, before["ece"].beyond_noise, before["ece"].p_value),
                      metrics=none.intervals, vs_pruned=_differences(none, none, seed), vs_full=before,
                      mcnemar=mcnemar(predicted == labels, predicted == labels))]
    for name in names:
        info, own = RECALIBRATORS[name], params.get(name, {})
        fitted = _fit(name, pruned_val, y_val, content_free, own)
        size = info.size_note(len(y_val), k, own)
        if isinstance(fitted, str):
            rows.append(RepairRow(name, info.title, info.changes_prediction, NOT_FITTED, f"not fitted: {fitted}",
                                  notes=(size,) if size else (), error=fitted))
            continue
        scored = _score(fitted.probs(pruned_test), labels, counts, n_bins, seed)
        vs_pruned, vs_full = _differences(none, scored, seed), _differences(full, scored, seed)
        moved = scored.probs.argmax(axis=1)
        flips = mcnemar(predicted == labels, moved == labels)
        changed = int((moved != predicted).sum())
        verdict = repair_verdict(vs_pruned, vs_full, before, flips)
        after: dict = {}
        if full_val is not None:
            refit = _fit(name, full_val, y_val, full_content_free, own)
            if isinstance(refit, str):
                after["full_after_error"] = refit
            else:
                repaired_full = _score(refit.probs(full_test), labels, counts, n_bins, seed)
                after = {"full_after": repaired_full.intervals,
                         "vs_full_after": _differences(repaired_full, scored, seed)}
        rows.append(RepairRow(name, info.title, info.changes_prediction, verdict,
                              _summary(verdict, vs_pruned, vs_full, changed, flips),
                              notes=tuple(n for n in (size, *fitted.notes) if n), params=fitted.params,
                              metrics=scored.intervals, vs_pruned=vs_pruned, vs_full=vs_full, changed=changed,
                              mcnemar=flips, **after))
    return RepairComparison(len(labels), len(y_val), k, n_bins, n_resamples, seed, full.intervals, tuple(rows))


# ---------------------------------------------------------------- one mask's evaluations -> the comparison

CONTENT_FREE_SPLIT = "content-free"
"""The split name the content-free inputs' scores are cached under (they belong to no split of the data)."""


def parse_methods(raw: str, option: str = "--methods") -> tuple[str, ...]:
    """``"temperature,vector"`` -> the methods in menu order; ``"all"`` -> every method; unknown names refused."""
    names = [x.strip() for x in raw.split(",") if x.strip()]
    if names == ["all"]:
        return tuple(RECALIBRATORS)
    if not names:
        raise UserError(f"{option} takes method names separated by commas, or 'all'; the methods: "
                        f"{', '.join(RECALIBRATORS)}")
    if bad := [x for x in names if x not in RECALIBRATORS]:
        raise UserError(f"{option}: unknown recalibration method{'s' if len(bad) > 1 else ''} "
                        f"{', '.join(repr(x) for x in bad)}; use {', '.join(RECALIBRATORS)} (or 'all')")
    return tuple(m for m in RECALIBRATORS if m in names)


def require_validation(dataset: Dataset, val_n: int, what: str = "the repair methods") -> None:
    """A `UserError` saying what to do when ``what`` would have no validation examples to be fitted on."""
    if val_n < 1:
        raise UserError(f"{what} are fitted on validation examples, and none are asked for (val_n = {val_n}): "
                        "ask for some, e.g. --val-n 100")
    if not dataset.splits.get("validation"):
        raise UserError(f"{what} are fitted on validation examples, and dataset '{dataset.name}' has no "
                        "validation split: use a dataset with one")


def cached_content_free_probs(setup: Setup, drop: Sequence[int] = ()) -> np.ndarray:
    """`core.task.recalibration.content_free_probs` with the scores read from (or stored in) the result cache.

    The content-free inputs are scored as examples of their own split, through the same prompt and mask,
    so a mask's contextual calibration costs its scoring once. Their ids carry the texts, so changing
    the content-free inputs changes the key.
    """
    drop = sorted(validate_mask(drop, setup.lm.num_layers))
    examples = [Example(f"content-free-v{RECALIBRATION_VERSION}:{text}", text, 0)
                for text in content_free_texts(setup.lm.tokenizer)]
    scores = score_cached(setup, drop, setup.builder(drop), CONTENT_FREE_SPLIT, examples)
    return cal.softmax(scores.logits).mean(axis=0)


def repair_key(methods: Sequence[str] | None, params: Mapping[str, Mapping[str, object]] | None, full_after: bool,
               n_resamples: int, seed: int) -> tuple:
    """What a memoised repair comparison of two evaluations is looked up by (see `ResultComparison.repairs`)."""
    names = tuple(RECALIBRATORS) if methods is None else tuple(methods)
    return names, json.dumps(params or {}, sort_keys=True, default=str), full_after, n_resamples, seed


def repair_results(full: EvalResult, pruned: EvalResult, setup: Setup | None = None,
                   methods: Sequence[str] | None = None, params: Mapping[str, Mapping[str, object]] | None = None,
                   *, full_after: bool = False, n_resamples: int = N_RESAMPLES, seed: int = 0) -> RepairComparison:
    """`compare_repairs` of two evaluations of the same examples: every method fitted on ``pruned``'s
    validation logits (its ``val_logits`` / ``val_labels``, scored under the same mask) and scored on its
    test logits, against ``full`` on the same test examples.

    ``setup`` gives contextual calibration its content-free answers, scored under each side's mask
    (through the cache); without it, that row says it needs them. ``full_after`` also fits each method
    on ``full``'s validation logits (the rows then show the full model after the same method). The
    number of ECE bins is the evaluations' own.
    """
    if [ex.id for ex in full.examples] != [ex.id for ex in pruned.examples]:
        raise UserError("the two evaluations cover different examples; a repair comparison needs the same ones "
                        "(same data, split, n and seed)")
    sides = (pruned, full) if full_after else (pruned,)
    if any(r.val_logits is None or r.val_labels is None for r in sides):
        raise UserError("the repair methods are fitted on validation examples, and this evaluation has none: "
                        "evaluate with validation examples (val_n above 0, e.g. --val-n 100) on a dataset with a "
                        "validation split")
    if full_after and not np.array_equal(full.val_labels, pruned.val_labels):
        raise UserError("the two evaluations' validation examples differ; the full model after the same method "
                        "needs the same ones")
    names = list(RECALIBRATORS) if methods is None else [check_recalibrator(m).name for m in methods]
    contextual = setup is not None and "contextual" in names
    return compare_repairs(
        full.logits, pruned.val_logits, pruned.val_labels, pruned.logits, pruned.labels, methods=names,
        params=params,
        content_free=cached_content_free_probs(setup, pruned.dropped_attention_layers) if contextual else None,
        full_val_logits=full.val_logits if full_after else None,
        full_content_free=(cached_content_free_probs(setup, full.dropped_attention_layers)
                           if contextual and full_after else None),
        n_bins=pruned.metrics.n_bins, n_resamples=n_resamples, seed=seed)


def repaired_probs(result: EvalResult, method: str, setup: Setup | None = None,
                   params: Mapping[str, object] | None = None) -> np.ndarray:
    """``result``'s test probabilities after ``method``, fitted on its validation logits (for a reliability
    diagram); raises `NotFittable` (a `UserError`) with the reason when the method cannot be fitted."""
    info = check_recalibrator(method)
    if result.val_logits is None or result.val_labels is None:
        raise UserError(f"{info.title} is fitted on validation examples, and this evaluation has none")
    content_free = (cached_content_free_probs(setup, result.dropped_attention_layers)
                    if setup is not None and method == "contextual" else None)
    fitted = info.fit(result.val_logits, result.val_labels, content_free, **dict(params or {}))
    return fitted.probs(result.logits)
