"""The healed model as a third model wherever a comparison is drawn, on tiny models: the three-way comparison's
pairs, prediction sets and explanations, the sweep's healed columns, the grid's healed rows and keys, and the
``--heal-steps`` options of compare, sweep and study.

Healing with a learning rate of 0 leaves the adapters at their initialisation (LoRA's B is zero), so the
healed model is exactly the pruned one: every paired change healed - pruned must then be 0 with a [0, 0]
interval, and every healed value the pruned one. The healing itself (where adapters sit, resuming,
the cache) is tested in tests/model/test_heal.py.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from helpers.cli import run_cli
from helpers.tiny_models import tiny_loaded, tiny_model, tiny_tokenizer

from core.cache import ResultCache
from core.errors import UserError
from core.explain.agreement import agreement
from core.explain.dataset import ExplainConfig
from core.metrics import FAITHFULNESS
from core.study.compare import compare_explanations, compare_results
from core.study.healed import HealComparison, explain_healed, healed_comparison, healed_explanation_cached
from core.study.healing import HealConfig, heal
from core.study.sweep import (
    COLUMNS,
    HEAL_FLIPS,
    HEALED,
    HEALED_POINT_COLUMNS,
    PointConfig,
    heal_columns,
    heal_gain_columns,
    healed_column,
    interval_columns,
    points,
    readable_heal,
    sweep,
)
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig
from core.task.prompts import PromptConfig
from core.task.setup import Setup

TEXTS = [("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
         ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative")]
ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(40) for t, lab in TEXTS]
"""240 rows: 144 train, 48 validation, 48 test."""
CONFIG = EvalConfig(n=20, val_n=20)
DROP = (1, 2)
ZERO = HealConfig(steps=2, batch_size=4, seq_len=16, lr=0.0)
"""Healing that changes nothing: the healed model is the pruned one."""
TRAINS = HealConfig(steps=3, batch_size=4, seq_len=16, lr=3e-2)


def _setup(cache: ResultCache | None = None) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"),
                 cache=cache if cache is not None else ResultCache())


def _zero(d) -> bool:
    return (d.value, d.lo, d.hi) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_healed_with_zero_learning_rate_is_the_pruned_model_in_every_pair(fresh_results) -> None:
    setup = _setup()
    c = compare_results(setup, DROP, CONFIG)
    hc = healed_comparison(setup, c, heal(setup, DROP, ZERO), CONFIG)
    assert hc.pair("full", "pruned") is c and hc.pair("pruned", "healed") is hc.pair("pruned", "healed")
    assert hc.healed.model.startswith(f"{setup.lm.name}+heal-")
    np.testing.assert_array_equal(hc.healed.logits, c.other.logits)
    stats = hc.stats()
    gain = stats[("pruned", "healed")]
    assert all(_zero(d) for d in gain.difference.values()) and gain.difference.keys() >= {"accuracy", "ece", "nll"}
    assert all(_zero(d) for d in gain.scaled_difference.values())
    assert (gain.mcnemar.right_to_wrong, gain.mcnemar.wrong_to_right) == (0, 0)
    # against the full model, the healed model's changes are the pruned model's, on the same resamples
    for key, d in stats[("full", "pruned")].difference.items():
        h = stats[("full", "healed")].difference[key]
        assert (h.value, h.lo, h.hi) == pytest.approx((d.value, d.lo, d.hi), abs=1e-12), key
    sets = hc.sets(0.2, "lac")
    s = sets[("pruned", "healed")]
    assert s.unavailable is None and all(_zero(d) for d in s.difference.values())
    assert sets[("full", "pruned")] is c.sets(0.2, "lac")  # computed once, shared with the page's comparison
    out = hc.healed_json(1000, 0, 0.2, "lac")
    assert set(out["changes"]) == {"healed_vs_full", "healed_vs_pruned"} and set(out["sets"]) == set(out["changes"])
    assert out["changes"]["healed_vs_pruned"]["difference"]["accuracy"]["ci"] == [0.0, 0.0]
    assert out["changes"]["healed_vs_pruned"]["mcnemar"]["right_to_wrong"] == 0
    assert "temperature_scaled_difference" in out["changes"]["healed_vs_full"] and "losses" not in out["heal"]
    assert out["values"]["ece"]["value"] == pytest.approx(c.other.metrics.ece)


def test_the_healed_model_is_compared_with_the_mask_it_was_healed_under(fresh_results) -> None:
    setup = _setup()
    result = heal(setup, DROP, ZERO)
    with pytest.raises(UserError, match=r"heal the mask \[1, 2\], not the comparison's \[1\]"):
        healed_comparison(setup, compare_results(setup, (1,), CONFIG), result, CONFIG)
    against_a_mask = compare_results(setup, DROP, CONFIG, base=(3,))
    with pytest.raises(UserError, match="base must be the full model"):
        HealComparison.extending(against_a_mask, against_a_mask.other, result)


def test_the_healed_explanation_is_set_against_the_full_models(fresh_results) -> None:
    setup = _setup()
    explain = ExplainConfig.make("occlusion")
    ex = compare_results(setup, DROP, CONFIG).base.examples[0]
    c = compare_explanations(setup, DROP, ex, explain)
    zero = heal(setup, DROP, ZERO)
    assert not healed_explanation_cached(setup, zero, ex, explain)
    h = explain_healed(setup, zero, ex, c, explain)
    assert healed_explanation_cached(setup, zero, ex, explain)
    np.testing.assert_allclose(h.healed.scores, c.other.scores, rtol=0, atol=1e-12)  # healed = pruned
    assert h.vs_pruned.spearman == pytest.approx(1.0) and h.vs_pruned.f1 in (None, 1.0)
    assert h.vs_full == agreement(c.base.scores, c.other.scores)
    assert h.faithfulness.comprehensiveness == pytest.approx(c.other_faithfulness.comprehensiveness)
    assert h.noise_verdict() is None  # occlusion is deterministic: no seeds to compare
    trained = explain_healed(setup, heal(setup, DROP, TRAINS), ex, c, explain)
    assert trained.vs_full == agreement(c.base.scores, trained.healed.scores)
    assert not np.allclose(trained.healed.scores, c.other.scores)


def test_sweep_columns_for_the_healed_model(fresh_results) -> None:
    setup = _setup()
    plain = PointConfig(eval=CONFIG, explain=ExplainConfig.make("occlusion"), faith_n=4)
    config = dataclasses.replace(plain, heal=ZERO)
    table = sweep(setup, [2, 1, 0, 3], 2, config, latency=False)
    assert list(table.columns) == config.columns() == [*COLUMNS, *heal_columns()]
    assert table.loc[0, heal_columns()].isna().all()  # the full model has nothing to heal
    for i in (1, 2):
        row = table.iloc[i]
        for key in HEALED:
            # explaining the pruned model resumed from the full model's hidden states (`core.model.states`), the
            # healed one ran from the start: the same numbers to float rounding; scores are bit for bit the same
            tol = 1e-6 if key in FAITHFULNESS else 1e-12
            column = healed_column(key)
            assert row[column] == pytest.approx(row[key], nan_ok=True, abs=tol), (i, key)
            for mine, theirs in zip(interval_columns(column), interval_columns(key), strict=True):
                assert row[mine] == pytest.approx(row[theirs], nan_ok=True, abs=tol), (i, mine)
            value, lo, hi, _ = heal_gain_columns(key)
            assert (row[value], row[lo], row[hi]) == pytest.approx((0, 0, 0), abs=tol), (i, key)
        for x in HEAL_FLIPS:
            assert row[healed_column(x)] == row[x]
        assert (row["healed_right_to_wrong_vs_pruned"], row["healed_wrong_to_right_vs_pruned"]) == (0, 0)
        assert row["heal_loss_first"] > 0 and row["comprehensiveness_healed"] == pytest.approx(row["comprehensiveness"])
    # its context is its own: the points without healing keep their columns
    assert list(points(setup, config)["layers"]) == ["none", "2", "1,2"]
    assert points(setup, plain).empty and healed_column("ece") not in points(setup, plain)
    shown = readable_heal(table)
    assert list(shown["dropped"]) == [1, 2]
    assert shown["accuracy, healed: change from pruned"].iloc[0].startswith("+0.000 [+0.000, +0.000] within noise")
    assert readable_heal(table[COLUMNS]) is None


def test_a_trained_healing_changes_the_healed_columns_consistently(fresh_results) -> None:
    setup = _setup()
    table = sweep(setup, [2, 1, 0, 3], 1, PointConfig(eval=CONFIG, heal=TRAINS), latency=False)
    row = table.iloc[1]
    c = compare_results(setup, (2,), CONFIG)
    trained = heal(setup, (2,), TRAINS)
    assert trained.cached  # the sweep's adapters
    hc = healed_comparison(setup, c, trained, CONFIG)
    stats = hc.stats()
    for key in ("accuracy", "ece", "brier", "nll"):
        g, f = stats[("pruned", "healed")].difference[key], stats[("full", "healed")].difference[key]
        assert row[healed_column(key)] == pytest.approx(stats[("full", "healed")].other[key].value)
        assert row[heal_gain_columns(key)[0]] == pytest.approx(g.value)
        assert (row[f"{key}_healed_change_lo"], row[f"{key}_healed_change_hi"]) == pytest.approx((f.lo, f.hi))
    assert row["ece_healed_vs_pruned"] != 0  # it trained
    assert (row["heal_loss_first"], row["heal_loss_last"]) == pytest.approx(trained.loss_change())


def test_grid_healed_rows_and_keys(fresh_results, folders, tmp_path) -> None:
    from core.study.figures import study_curves
    from core.study.grid import COLUMNS_OUT, NOT_HEALED, GridSpec, heal_label, plan, run_study

    spec = GridSpec(models=(folders["model"],), datasets=(folders["data"],), strategies=("last-to-first",),
                    max_drop=2, n=20, val_n=20, prompt=PromptConfig(style="zero-shot"), heal=ZERO)
    checked, unhealed = plan(spec), plan(dataclasses.replace(spec, heal=None))
    assert [(p.dropped, p.healed) for p in checked.points] == [(0, False), (1, False), (2, False), (1, True),
                                                                (2, True)]
    assert [checked.point_key(p) for p in checked.points[:3]] == [unhealed.point_key(p) for p in unhealed.points]
    twin = checked.points[3]
    assert checked.point_key(twin) != checked.point_key(checked.points[1])
    assert checked.point_key(twin) != plan(dataclasses.replace(spec, heal=TRAINS)).point_key(twin)
    assert checked.columns() == [*COLUMNS_OUT[:4], "healed", *COLUMNS_OUT[4:-1], *HEALED_POINT_COLUMNS, "cached"]
    assert unhealed.columns() == COLUMNS_OUT
    with pytest.raises(UserError, match="one device"):
        plan(dataclasses.replace(spec, device="auto"))
    with pytest.raises(UserError, match="steps must be"):
        plan(dataclasses.replace(spec, heal=HealConfig(steps=0)))
    cache = ResultCache(tmp_path / "cache")
    result = run_study(spec, tmp_path / "study", cache=cache)
    table = result.table
    assert list(table.columns) == checked.columns() and len(table) == 5
    assert list(table["healed"]) == [NOT_HEALED] * 3 + [heal_label(ZERO)] * 2 == [NOT_HEALED] * 3 + [
        "healed (lm, 2 steps)"] * 2
    pruned, healed = table.iloc[1:3].reset_index(drop=True), table.iloc[3:].reset_index(drop=True)
    for key in ("accuracy", "ece", "accuracy_change", "ece_change_lo", "coverage", "right_to_wrong"):
        np.testing.assert_allclose(healed[key], pruned[key], rtol=0, atol=1e-12, err_msg=key)
    assert (healed["accuracy_healed_vs_pruned"] == 0).all() and pruned["accuracy_healed_vs_pruned"].isna().all()
    names = [t.name for t in study_curves(table, ["accuracy"]).data if t.mode == "lines+markers"]
    assert names == [NOT_HEALED, "healed (lm, 2 steps)"]
    assert "healed (lm, 2 steps)" in (tmp_path / "study" / "report.html").read_text()
    assert run_study(spec, cache=cache).cached == 5  # every point, healed or not, is found under its key


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """The tiny model as a folder and the rows as a CSV file, for the commands."""
    root = tmp_path_factory.mktemp("heal")
    folder = root / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = root / "tiny.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    return {"model": str(folder), "data": str(data)}


def test_compare_takes_heal_steps(folders, tmp_path, capsys, fresh_results) -> None:
    argv = ["compare", "--model", folders["model"], "--dataset", folders["data"], "--prompt", "zero-shot",
            "--drop-attn", "1,2", "--n", "20", "--val-n", "20", "--alpha", "0.2", "--heal-steps", "2"]
    code, out, err = run_cli(capsys, *argv, "--json", "-", "--predictions", str(tmp_path / "p.csv"))
    assert code == 0, err
    result = json.loads(out)
    healed = result["healed"]
    assert healed["model"].startswith("tiny-llama+heal-") and healed["heal"]["steps_done"] == 2
    assert healed["heal"]["config"]["objective"] == "lm" and not healed["heal"]["cached"]
    assert set(healed["changes"]) == {"healed_vs_full", "healed_vs_pruned"}
    d = healed["changes"]["healed_vs_pruned"]["difference"]["accuracy"]
    assert d["value"] == pytest.approx(healed["values"]["accuracy"]["value"] - result["pruned"]["accuracy"]["value"])
    assert healed["sets"]["healed_vs_full"]["prediction_sets"]["alpha"] == 0.2
    assert "healing the pruned model (lm objective): 2 steps to train" in err
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"prediction_healed", "confidence_healed", "correct_healed", "flipped_by_healing"} <= set(table.columns)
    assert table["correct_healed"].mean() == pytest.approx(healed["values"]["accuracy"]["value"])
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "pruned and healed (tiny-llama+heal-" in out and "adapters from the cache" in out
    assert "flips, healed against pruned:" in out and "prediction sets and abstention, healed against pruned:" in out
    assert "healed - pruned" in out and "all 2 steps are cached" in err
    code, _, err = run_cli(capsys, *argv, "--base-attn", "3")
    assert code == 2 and "leave out --base-attn" in err
    code, _, err = run_cli(capsys, *argv[:-1], "-1")
    assert code == 2 and "--heal-steps must be 0" in err
    with pytest.raises(SystemExit):
        run_cli(capsys, *argv, "--heal-objective", "sideways")
    assert "invalid choice: 'sideways' (choose from 'lm', 'task')" in capsys.readouterr().err


def test_sweep_and_study_take_heal_steps(folders, tmp_path, capsys, fresh_results) -> None:
    out = tmp_path / "sweep.csv"
    code, printed, err = run_cli(capsys, "sweep", "--model", folders["model"], "--dataset", folders["data"],
                                 "--prompt", "zero-shot", "--strategy", "last-to-first", "--max-drop", "1", "--n",
                                 "20", "--val-n", "20", "--faith-n", "0", "--heal-steps", "1", "--heal-objective",
                                 "task", "--out", str(out))
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == [*COLUMNS, *heal_columns()] and table["accuracy_healed"].iloc[1] >= 0
    assert json.loads((tmp_path / "sweep.csv.json").read_text())["heal"]["objective"] == "task"
    assert "healing 1 masks of 1 steps each (task objective)" in err
    assert "pruned and healed (task objective, 1 LoRA steps per mask" in printed and "change from pruned" in printed
    code, _, err = run_cli(capsys, "study", "--models", folders["model"], "--datasets", folders["data"],
                           "--strategies", "last-to-first", "--max-drop", "1", "--n", "20", "--val-n", "20",
                           "--prompt", "zero-shot", "--heal-steps", "1", "--out", str(tmp_path / "study"))
    assert code == 0, err
    grid = pd.read_csv(tmp_path / "study" / "results.csv")
    assert list(grid["healed"]) == ["not healed", "not healed", "healed (lm, 1 steps)"]
    assert json.loads((tmp_path / "study" / "run.json").read_text())["settings"]["heal"]["steps"] == 1
    assert "healing 1 pruned masks of 1 steps each" in err

