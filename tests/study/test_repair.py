"""The repair comparison: honest fitting (no test label is ever seen), shared resamples, verdicts and flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from core.errors import UserError
from core.study.repair import (
    IMPROVES,
    NO_CHANGE,
    NOT_FITTED,
    REPAIR_KEYS,
    RESTORES,
    UNREPAIRED,
    WORSE,
    compare_repairs,
    repair_verdict,
)
from core.task import calibration as cal
from core.task.recalibration import RECALIBRATORS
from core.task.uncertainty import Difference, McNemar, calibration_intervals, mcnemar, paired_differences


def calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from its own probabilities)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    return z, np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])


def scenario(n_test: int = 1000, n_val: int = 1000, k: int = 2, scale: float = 3.0):
    """(full test, pruned val, val labels, pruned test, test labels, full val): the pruned model overconfident."""
    full, labels = calibrated(n_test, k, 1)
    full_val, val_labels = calibrated(n_val, k, 2)
    return full, scale * full_val, val_labels, scale * full, labels, full_val


def test_an_overconfident_pruned_model_is_restored_by_temperature_scaling() -> None:
    full, val, y_val, test, y, _ = scenario()
    result = compare_repairs(full, val, y_val, test, y, content_free=np.array([0.5, 0.5]))
    none = result.row(UNREPAIRED)
    assert none.vs_full["ece"].beyond_noise and none.vs_full["ece"].value > 0  # worse before repair
    row = result.row("temperature")
    assert row.verdict == RESTORES, row.summary
    assert row.params["temperature"] == pytest.approx(3.0, rel=0.15)
    assert row.summary.startswith(RESTORES) and "ECE change -" in row.summary
    assert [r.method for r in result.rows] == [UNREPAIRED, *RECALIBRATORS]
    # contextual calibration with a uniform content-free distribution is the identity: no change
    ctx = result.row("contextual")
    assert ctx.verdict == NO_CHANGE and ctx.changed == 0
    assert all((ctx.vs_pruned[k].value, ctx.vs_pruned[k].lo, ctx.vs_pruned[k].hi) == (0, 0, 0) for k in REPAIR_KEYS)


def test_rows_use_the_uncertainty_modules_intervals_and_paired_differences_on_one_resampling() -> None:
    full, val, y_val, test, y, _ = scenario(200, 100)
    result = compare_repairs(full, val, y_val, test, y, seed=3)
    pruned, full_p = cal.softmax(test), cal.softmax(full)
    base, other, diff = paired_differences(full_p, pruned, y, seed=3)
    for key in REPAIR_KEYS:
        for mine, theirs in ((result.full[key], base[key]), (result.row(UNREPAIRED).metrics[key], other[key])):
            assert (mine.value, mine.lo, mine.hi) == pytest.approx((theirs.value, theirs.lo, theirs.hi), abs=1e-6)
        d = result.row(UNREPAIRED).vs_full[key]
        assert (d.value, d.lo, d.hi, d.p_value) == pytest.approx(
            (diff[key].value, diff[key].lo, diff[key].hi, diff[key].p_value), abs=1e-6)
    t = result.row("temperature").params["temperature"]
    repaired = cal.softmax(test, t)
    _, _, change = paired_differences(pruned, repaired, y, seed=3)
    alone = calibration_intervals(repaired, y, seed=3)
    for key in REPAIR_KEYS:
        got, want = result.row("temperature").vs_pruned[key], change[key]
        assert (got.value, got.lo, got.hi) == pytest.approx((want.value, want.lo, want.hi), abs=1e-6)
        i = result.row("temperature").metrics[key]
        assert (i.value, i.lo, i.hi) == pytest.approx((alone[key].value, alone[key].lo, alone[key].hi), abs=1e-6)
    none = result.row(UNREPAIRED).vs_pruned
    assert all((none[k].value, none[k].lo, none[k].hi, none[k].p_value) == (0, 0, 0, 1) for k in REPAIR_KEYS)


def test_fitting_never_sees_the_test_split() -> None:
    full, val, y_val, test, y, _ = scenario(300, 300, k=3)
    cf = np.array([0.5, 0.3, 0.2])
    first = compare_repairs(full, val, y_val, test, y, content_free=cf)
    rng = np.random.default_rng(0)
    shuffled = compare_repairs(full, val, y_val, test, rng.permutation(y), content_free=cf)
    altered = compare_repairs(full * 0.5, val, y_val, test * 0.2 + rng.normal(0, 1, test.shape), y, content_free=cf)
    for name, info in RECALIBRATORS.items():
        alone = info.fit(val, y_val, cf).params
        for result in (first, shuffled, altered):
            assert result.row(name).params == alone, name
    assert first.row("temperature").metrics["ece"] != shuffled.row("temperature").metrics["ece"]


def test_answer_changing_methods_are_flagged_with_their_mcnemar_counts_and_temperature_changes_none() -> None:
    full, val, y_val, test, y, _ = scenario(400, 400)
    cf = np.array([0.8, 0.2])  # divides answer 0 down: many answers move to 1
    result = compare_repairs(full, val, y_val, test, y, content_free=cf)
    for name in ("temperature", "ets"):
        row = result.row(name)
        assert not row.changes_prediction and row.changed == 0 and not row.flagged
        assert (row.mcnemar.right_to_wrong, row.mcnemar.wrong_to_right, row.mcnemar.p_value) == (0, 0, 1.0)
        assert "changes" not in row.summary
    row = result.row("contextual")
    before = cal.softmax(test).argmax(axis=1)
    after = RECALIBRATORS["contextual"].fit(val, y_val, cf).probs(test).argmax(axis=1)
    assert row.changes_prediction and row.flagged and row.changed == int((before != after).sum()) > 20
    assert row.mcnemar == mcnemar(before == y, after == y)
    assert (f"it changes {row.changed} predicted answers ({row.mcnemar.right_to_wrong} right→wrong, "
            f"{row.mcnemar.wrong_to_right} wrong→right") in row.summary
    assert row.metrics["accuracy"].value == pytest.approx(np.mean(after == y))
    assert result.table().loc[row.title, "answers changed"].startswith(f"{row.changed} (")


def test_a_harmful_method_is_worse_and_its_accuracy_loss_is_said() -> None:
    full, val, y_val, test, y, _ = scenario(1000, 200, scale=1.0)  # the pruned model is the calibrated full model
    result = compare_repairs(full, val, y_val, test, y, content_free=np.array([0.97, 0.03]))
    row = result.row("contextual")
    assert row.verdict == WORSE and row.vs_pruned["ece"].lo > 0
    assert row.mcnemar.p_value < 0.05 and row.mcnemar.right_to_wrong > row.mcnemar.wrong_to_right
    assert row.summary.endswith("accuracy falls beyond noise")
    assert result.row("temperature").verdict == NO_CHANGE  # nothing to repair


def test_a_method_that_cannot_be_fitted_says_why_and_the_others_go_on() -> None:
    full, val, y_val, test, y, _ = scenario(200, 100)
    one_class = np.zeros_like(y_val)
    result = compare_repairs(full, val, one_class, test, y, content_free=np.array([0.6, 0.4]))
    for name in ("vector", "matrix", "binning", "isotonic"):
        row = result.row(name)
        assert row.verdict == NOT_FITTED and not row.fitted and "at least two different answers" in row.error
        assert row.summary == f"not fitted: {row.error}" and not row.metrics and row.mcnemar is None
    assert result.row("temperature").fitted and result.row("contextual").fitted
    assert "at least two different answers" in result.table().loc[RECALIBRATORS["binning"].title, "notes"]


def test_small_validation_splits_are_said_next_to_their_rows() -> None:
    full, val, y_val, test, y, _ = scenario(200, 100)
    result = compare_repairs(full, val, y_val, test, y, methods=["isotonic", "binning", "temperature"],
                             params={"binning": {"n_bins": 5}})
    assert [r.method for r in result.rows] == [UNREPAIRED, "isotonic", "binning", "temperature"]
    assert result.row("isotonic").notes[0].startswith(
        "fitted on only 100 validation examples; this method needs about 1,000")
    assert not any("fitted on only" in n for n in result.row("binning").notes)  # 5 bins need about 100
    assert len(result.row("binning").params["edges"][0]) == 4
    assert not result.row("temperature").notes


def test_the_full_model_after_the_same_method() -> None:
    full, val, y_val, test, y, full_val = scenario(300, 300)
    result = compare_repairs(full, val, y_val, test, y, full_val_logits=full_val, content_free=np.array([0.5, 0.5]))
    row = result.row("temperature")
    t_full = RECALIBRATORS["temperature"].fit(full_val, y_val).params["temperature"]
    alone = calibration_intervals(cal.softmax(full, t_full), y)
    assert row.full_after["ece"].value == pytest.approx(alone["ece"].value)
    assert row.full_after["ece"].lo == pytest.approx(alone["ece"].lo, abs=1e-6)
    assert row.vs_full_after["ece"].value == pytest.approx(row.metrics["ece"].value - alone["ece"].value)
    assert "content-free" in result.row("contextual").full_after_error  # no full_content_free given
    assert not compare_repairs(full, val, y_val, test, y, methods=["temperature"]).row("temperature").full_after


def test_multiple_choice_rows_offering_fewer_answers() -> None:
    full, val, y_val, test, y, _ = scenario(300, 300, k=4)
    for z in (full, val, test):
        z[::4, 3] = -np.inf
    y, y_val = np.where((np.arange(300) % 4 == 0) & (y == 3), 0, y), np.where(
        (np.arange(300) % 4 == 0) & (y_val == 3), 0, y_val)
    result = compare_repairs(full, val, y_val, test, y, content_free=np.array([0.3, 0.3, 0.2, 0.2]))
    assert all(r.fitted for r in result.rows)
    assert all(np.isfinite([r.metrics[k].value for k in REPAIR_KEYS]).all() for r in result.rows)


def test_table_and_json() -> None:
    full, val, y_val, test, y, _ = scenario(200, 100)
    result = compare_repairs(full, val, y_val, test, y)
    table = result.table()
    assert list(table.index) == ["full model (reference)", *[r.title for r in result.rows]]
    assert table.loc["temperature scaling", "ECE"] == result.row("temperature").metrics["ece"].value
    assert table.loc["temperature scaling", "ECE change vs pruned 95% CI"].startswith("[")
    out = json.loads(json.dumps(result.as_json()))
    assert out["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95} and out["n_validation"] == 100
    assert out["rows"][1]["method"] == "temperature" and out["rows"][1]["params"]["temperature"] > 1
    assert out["rows"][-1]["verdict"] == NOT_FITTED  # contextual without content-free answers
    with pytest.raises(UserError, match="no row"):
        result.row("platt")


def test_inputs_are_checked() -> None:
    full, val, y_val, test, y, _ = scenario(50, 50)
    with pytest.raises(UserError, match="different examples"):
        compare_repairs(full[:40], val, y_val, test, y)
    other = test.copy()
    other[0, 1] = -np.inf
    with pytest.raises(UserError, match="offer different answers"):
        compare_repairs(full, val, y_val, other, y)
    with pytest.raises(UserError, match="labels"):
        compare_repairs(full, val, y_val, test, y[:10])
    with pytest.raises(UserError, match="one of the answers"):
        compare_repairs(full, val, y_val, test, y + 1)
    with pytest.raises(UserError, match="unknown recalibration method"):
        compare_repairs(full, val, y_val, test, y, methods=["platt"])
    with pytest.raises(UserError, match="unknown recalibration method"):
        compare_repairs(full, val, y_val, test, y, params={"platt": {}})


def d(value: float, lo: float, hi: float) -> Difference:
    return Difference(value, lo, hi, 0.01 if lo > 0 or hi < 0 else 0.5)


BETTER, NOISE, WORSE_D = d(-0.05, -0.08, -0.02), d(0.0, -0.02, 0.02), d(0.05, 0.02, 0.08)
NO_FLIPS = McNemar(0, 0, 1.0)


@pytest.mark.parametrize(("vs_pruned", "vs_full", "before", "flips", "expected"), [
    (BETTER, NOISE, WORSE_D, NO_FLIPS, RESTORES),
    (BETTER, BETTER, WORSE_D, NO_FLIPS, RESTORES),  # better than the full model counts as restored
    (BETTER, WORSE_D, WORSE_D, NO_FLIPS, IMPROVES),  # still worse than the full model
    (BETTER, NOISE, NOISE, NO_FLIPS, IMPROVES),  # the pruned model was not worse beyond noise: nothing to restore
    (BETTER, NOISE, WORSE_D, McNemar(20, 5, 0.004), IMPROVES),  # restored calibration, lost accuracy
    (BETTER, NOISE, WORSE_D, McNemar(5, 20, 0.004), RESTORES),  # gained accuracy: still restores
    (NOISE, NOISE, WORSE_D, NO_FLIPS, NO_CHANGE),  # within noise of both: not claimed as a repair
    (WORSE_D, WORSE_D, NOISE, NO_FLIPS, WORSE),
])
def test_verdict_rules(vs_pruned, vs_full, before, flips, expected) -> None:
    def both(x: Difference) -> dict:
        return {"ece": x, "smooth_ece": x}

    assert repair_verdict(both(vs_pruned), both(vs_full), both(before), flips) == expected


def test_restoring_needs_smooth_ece_within_noise_of_the_full_model_too() -> None:
    assert repair_verdict({"ece": BETTER}, {"ece": NOISE, "smooth_ece": WORSE_D},
                          {"ece": WORSE_D, "smooth_ece": WORSE_D}, NO_FLIPS) == IMPROVES
