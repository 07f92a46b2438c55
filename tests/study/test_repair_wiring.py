"""The repair comparison wired to evaluations, sweeps, the grid, the report and the ``repair`` command, on tiny models.

The methods themselves are tested against their references in tests/task/test_recalibration.py and the
comparison's statistics in tests/study/test_repair.py; here: that the wiring fits on each mask's own
validation examples (never the test ones), gives contextual calibration its content-free answers under
the mask, keys the cache and the points by the methods, and writes what it says it writes.
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
from core.study.compare import compare_results
from core.study.repair import (
    NOT_FITTED,
    UNREPAIRED,
    cached_content_free_probs,
    compare_repairs,
    parse_methods,
    repair_results,
    repaired_probs,
    require_validation,
)
from core.study.sweep import (
    COLUMNS,
    REPAIR_NOTES,
    REPAIRED,
    PointConfig,
    evaluate_point,
    interval_columns,
    points,
    readable_repairs,
    repair_columns,
    repaired_column,
    repaired_methods,
    sweep,
)
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig
from core.task.prompts import PromptConfig
from core.task.recalibration import RECALIBRATORS, content_free_probs
from core.task.setup import Setup

TEXTS = [("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
         ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative")]
ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(12) for t, lab in TEXTS]
"""72 rows: 43 train, 14 validation, 15 test."""
CONFIG = EvalConfig(n=15, val_n=14)


def _setup(cache: ResultCache | None = None) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"), cache=cache)


def test_every_method_is_fitted_on_the_masks_validation_examples_with_its_content_free_answers(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    c = compare_results(setup, (1, 2), CONFIG)
    result = c.repairs(setup, full_after=True)
    full, pruned = c.base, c.other
    reference = compare_repairs(full.logits, pruned.val_logits, pruned.val_labels, pruned.logits, pruned.labels,
                                content_free=content_free_probs(setup, (1, 2)), full_val_logits=full.val_logits,
                                full_content_free=content_free_probs(setup, ()))
    for got, want in zip(result.rows, reference.rows, strict=True):
        assert (got.method, got.verdict, got.changed, got.notes) == (want.method, want.verdict, want.changed,
                                                                     want.notes)
        for side in ("metrics", "vs_pruned", "vs_full", "full_after", "vs_full_after"):
            a, b = getattr(got, side), getattr(want, side)
            assert a.keys() == b.keys(), (got.method, side)
            for k in a:
                assert (a[k].value, a[k].lo, a[k].hi) == pytest.approx((b[k].value, b[k].lo, b[k].hi), abs=1e-9)
    assert [r.method for r in result.rows] == [UNREPAIRED, *RECALIBRATORS]
    assert (result.n_test, result.n_validation) == (15, 14)
    # the temperature is the one the evaluation fitted on its validation examples under the same mask
    assert result.row("temperature").params["temperature"] == pytest.approx(pruned.temperature)
    assert result.row("contextual").fitted
    assert result.row("contextual").params["content_free_probs"] == pytest.approx(
        content_free_probs(setup, (1, 2)).tolist())
    # memoised per methods, parameters and resampling
    assert c.repairs(setup, full_after=True) is result
    assert c.repairs(setup, ["temperature"]) is not result
    assert [r.method for r in c.repairs(setup, ["vector", "temperature"]).rows] == [UNREPAIRED, "vector",
                                                                                     "temperature"]


def test_no_test_label_reaches_a_fit(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    c = compare_results(setup, (1, 2), CONFIG)
    flipped = [dataclasses.replace(ex, label=1 - ex.label) for ex in c.other.examples]
    relabelled = dataclasses.replace(c.other, examples=flipped, _memo={})
    a = repair_results(c.base, c.other, setup)
    b = repair_results(dataclasses.replace(c.base, examples=flipped, _memo={}), relabelled, setup)
    for method in RECALIBRATORS:
        assert a.row(method).params == b.row(method).params, method
        assert a.row(method).changed == b.row(method).changed, method
    # the metrics did change: they are scored on the (relabelled) test examples
    assert a.row("none").metrics["accuracy"].value == pytest.approx(1 - b.row("none").metrics["accuracy"].value)


def test_without_validation_examples_it_says_what_to_do(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    c = compare_results(setup, (1,), EvalConfig(n=15, val_n=0))
    with pytest.raises(UserError, match=r"fitted on validation examples.*val_n above 0"):
        c.repairs(setup)
    with pytest.raises(UserError, match="--val-n 100"):
        require_validation(setup.ds, 0)
    no_validation = dataclasses.replace(setup.ds, splits={k: v for k, v in setup.ds.splits.items()
                                                          if k != "validation"})
    with pytest.raises(UserError, match="dataset 'tiny' has no validation split"):
        require_validation(no_validation, 100)
    other = compare_results(setup, (1,), EvalConfig(n=10, val_n=14))
    with pytest.raises(UserError, match="different examples"):
        repair_results(c.base, other.other, setup)


def test_method_lists_are_checked_and_put_in_menu_order() -> None:
    assert parse_methods("all") == tuple(RECALIBRATORS)
    assert parse_methods("vector, temperature,vector") == ("temperature", "vector")
    with pytest.raises(UserError, match=r"--repair: unknown recalibration method 'platt'; use temperature, vector"):
        parse_methods("temperature,platt", "--repair")
    with pytest.raises(UserError, match="method names separated by commas"):
        parse_methods(" , ")


def test_content_free_answers_are_scored_once_and_equal_the_uncached_ones(tmp_path, monkeypatch) -> None:
    import core.task.evaluation as evaluation

    setup = _setup(ResultCache(tmp_path))
    expected = content_free_probs(setup, (2,))
    np.testing.assert_allclose(cached_content_free_probs(setup, (2,)), expected, rtol=0, atol=1e-12)
    full = cached_content_free_probs(setup, ())
    assert np.abs(full - expected).max() > 1e-6  # another mask is another entry, with other answers
    monkeypatch.setattr(evaluation, "score_examples", lambda *a, **k: pytest.fail("scored again"))
    np.testing.assert_allclose(cached_content_free_probs(setup, [2]), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(cached_content_free_probs(setup, ()), full)


def test_the_overlays_probabilities_are_the_methods_own(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    pruned = compare_results(setup, (1, 2), CONFIG).other
    fitted = RECALIBRATORS["vector"].fit(pruned.val_logits, pruned.val_labels)
    np.testing.assert_allclose(repaired_probs(pruned, "vector", setup), fitted.probs(pruned.logits))
    assert repaired_probs(pruned, "contextual", setup).shape == pruned.logits.shape
    with pytest.raises(UserError, match="content-free"):
        repaired_probs(pruned, "contextual")


def test_sweep_columns_per_method_follow_the_interval_pattern(tmp_path) -> None:
    cache = ResultCache(tmp_path)
    setup = _setup(cache)
    methods = ("temperature", "contextual")
    config = PointConfig(eval=CONFIG, repair=methods)
    table = sweep(setup, [2, 1, 0, 3], 2, config, latency=False)
    assert list(table.columns) == [*COLUMNS, *repair_columns(methods)]
    assert repaired_methods(table) == list(methods)
    assert repair_columns(["temperature"]) == [
        c for key in REPAIRED for c in (f"{key}_repaired_temperature", *interval_columns(f"{key}_repaired_temperature"))
    ] + [f"{x}_repaired_temperature" for x in REPAIR_NOTES]
    expected = compare_results(setup, (1, 2), CONFIG).repairs(setup, methods)
    last = table.iloc[2]
    for method in methods:
        row = expected.row(method)
        for key in REPAIRED:
            column = repaired_column(key, method)
            lo, hi, ch, clo, chi, p = interval_columns(column)
            assert last[column] == pytest.approx(row.metrics[key].value)
            assert (last[lo], last[hi]) == pytest.approx((row.metrics[key].lo, row.metrics[key].hi))
            d = row.vs_full[key]
            assert (last[ch], last[clo], last[chi], last[p]) == pytest.approx((d.value, d.lo, d.hi, d.p_value))
        assert last[repaired_column("verdict", method)] == row.verdict
        assert last[repaired_column("changed", method)] == row.changed
    shown = readable_repairs(table)
    assert list(shown["dropped"]) == [0, 1, 2] and "ECE after temperature scaling" in shown
    assert "from full" in shown["ECE after temperature scaling"].iloc[2]
    assert shown["temperature scaling: verdict"].iloc[2].startswith(expected.row("temperature").verdict)
    assert readable_repairs(table[COLUMNS]) is None
    # the points of a context with repairs are their own: those without keep their columns and stay found
    plain = PointConfig(eval=CONFIG)
    evaluate_point(setup, (3,), plain)
    assert list(points(setup, plain)["layers"]) == ["3"] and list(points(setup, plain).columns) == [
        c for c in COLUMNS if c not in ("seconds", "latency_ms", "latency_full_ms", "latency_ratio",
                                        "latency_ratio_lo", "latency_ratio_hi", "flop_ratio")]
    with_repairs = points(setup, config)
    assert list(with_repairs["layers"]) == ["none", "2", "1,2"]
    assert with_repairs[repaired_column("ece", "temperature")].notna().all()


def test_a_sweep_without_validation_examples_is_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="validation examples"):
        evaluate_point(_setup(ResultCache(tmp_path)), (1,), PointConfig(eval=EvalConfig(n=15, val_n=0),
                                                                       repair=("temperature",)))


def test_the_report_draws_ece_after_repair_with_bands_and_the_per_mask_table(tmp_path) -> None:
    from core.study.figures import repair_curves
    from core.study.report import render

    table = sweep(_setup(ResultCache(tmp_path)), [2, 1, 0, 3], 2,
                  PointConfig(eval=CONFIG, repair=("temperature", "binning")), latency=False)
    fig = repair_curves(table)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["ECE, unrepaired", "ECE after temperature scaling",
                                       "ECE after histogram binning"]
    np.testing.assert_allclose(lines[1].y, table[repaired_column("ece", "temperature")])
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 3  # one 95% interval per line
    band = bands[1]
    np.testing.assert_allclose(band.y[:3], table[f"{repaired_column('ece', 'temperature')}_hi"])
    page = render(table, {})
    assert "ECE after repair against layers dropped" in page and "Repair after pruning" in page
    assert "temperature scaling: verdict" in page
    assert "Repair after pruning" not in render(table[COLUMNS], {})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """The tiny model as a folder and the rows as a CSV file, for the commands."""
    root = tmp_path_factory.mktemp("repair")
    folder = root / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = root / "tiny.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    return {"model": str(folder), "data": str(data)}


def test_the_repair_command(folders, tmp_path, capsys, fresh_results) -> None:
    argv = ["repair", "--model", folders["model"], "--dataset", folders["data"], "--prompt", "zero-shot",
            "--drop-attn", "1,2", "--n", "15", "--val-n", "14"]
    code, out, err = run_cli(capsys, *argv, "--json", "-", "--csv", str(tmp_path / "repair.csv"))
    assert code == 0, err
    result = json.loads(out)
    assert result["dropped_attention_layers"] == [1, 2] and result["n_test"] == 15 and result["n_validation"] == 14
    assert result["methods"] == list(RECALIBRATORS)
    assert [r["method"] for r in result["rows"]] == [UNREPAIRED, *RECALIBRATORS]
    assert all(r["verdict"] != NOT_FITTED for r in result["rows"])  # contextual got its content-free answers
    assert set(result["rows"][1]["vs_full"]["ece"]) == {"value", "ci", "p_value", "beyond_noise"}
    table = pd.read_csv(tmp_path / "repair.csv", index_col=0)
    assert list(table.index) == ["full model (reference)", *[r["title"] for r in result["rows"]]]
    assert {"ECE", "ECE 95% CI", "ECE change vs pruned 95% CI", "verdict", "answers changed"} <= set(table.columns)

    code, out, err = run_cli(capsys, *argv, "--methods", "binning,temperature", "--full-after")
    assert code == 0, err
    assert "each metric with its 95% interval:" in out and "change against the unrepaired pruned model" in out
    assert "difference from the full model" in out and "the full model after the same method" in out
    lines = [line for line in out.splitlines() if line.startswith(("temperature scaling:", "histogram binning:"))]
    assert [line.split(":")[0] for line in lines] == ["temperature scaling", "histogram binning"]
    assert "note: fitted on only 14 validation examples" in out and "ECE change" in out

    code, _, err = run_cli(capsys, *argv, "--methods", "temperature,platt")
    assert code == 2 and err.startswith("error: --methods: unknown recalibration method 'platt'; use temperature")
    code, _, err = run_cli(capsys, *argv[:-2], "--val-n", "0")
    assert code == 2 and "none are asked for" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, *argv, "--bootstrap", "10")
    assert code == 2 and "--bootstrap must be at least 1000" in err


def test_sweep_and_study_take_repair_methods(folders, tmp_path, capsys, fresh_results) -> None:
    from core.study.grid import COLUMNS_OUT, GridSpec, plan, run_study

    out = tmp_path / "sweep.csv"
    code, printed, err = run_cli(capsys, "sweep", "--model", folders["model"], "--dataset", folders["data"],
                                 "--prompt", "zero-shot", "--strategy", "last-to-first", "--max-drop", "1", "--n",
                                 "15", "--val-n", "14", "--faith-n", "0", "--repair", "temperature,ets",
                                 "--out", str(out))
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == [*COLUMNS, *repair_columns(("temperature", "ets"))]
    assert json.loads((tmp_path / "sweep.csv.json").read_text())["repair"] == ["temperature", "ets"]
    assert "after repair" in printed and "ECE after ensemble temperature scaling" in printed
    code, _, err = run_cli(capsys, "sweep", "--model", folders["model"], "--dataset", folders["data"], "--repair",
                           "magic", "--out", str(out))
    assert code == 2 and "unknown recalibration method 'magic'" in err

    spec = GridSpec(models=(folders["model"],), datasets=(folders["data"],), strategies=("last-to-first",),
                    max_drop=1, n=15, val_n=14, prompt=PromptConfig(style="zero-shot"), repair=("temperature",))
    checked, plain = plan(spec), plan(dataclasses.replace(spec, repair=()))
    assert checked.point_key(checked.points[1]) != plain.point_key(plain.points[1])
    assert checked.columns() == [*COLUMNS_OUT[:-1], *repair_columns(("temperature",)), "cached"]
    assert plain.columns() == COLUMNS_OUT
    with pytest.raises(UserError, match="unknown recalibration method 'magic'"):
        plan(dataclasses.replace(spec, repair=("magic",)))
    with pytest.raises(UserError, match="none are asked for"):
        plan(dataclasses.replace(spec, val_n=0))
    cache = ResultCache(tmp_path / "cache")
    result = run_study(spec, tmp_path / "study", cache=cache)
    assert list(result.table.columns) == checked.columns() and result.table["ece_repaired_temperature"].notna().all()
    page = (tmp_path / "study" / "report.html").read_text()
    assert "ECE after repair against layers dropped: " in page and "temperature scaling: verdict" in page
    assert run_study(spec, cache=cache).cached == 2  # the points are found again under their key
    code, _, err = run_cli(capsys, "study", "--models", folders["model"], "--datasets", folders["data"], "--repair",
                           "temperature,platt", "--out", str(tmp_path / "no"))
    assert code == 2 and "unknown recalibration method 'platt'" in err
