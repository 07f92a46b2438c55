"""Trade-off points and sweeps on a tiny model: rows, the cache, and the masks evaluated so far."""

from __future__ import annotations

import pytest
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.errors import UserError
from core.explain.dataset import ExplainConfig
from core.study.sweep import COLUMNS, PointConfig, evaluate_point, points, sweep
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig
from core.task.prompts import PromptConfig
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]] * 5


def _setup(cache: ResultCache) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"), cache=cache)


def _config(explain: bool = True) -> PointConfig:
    return PointConfig(eval=EvalConfig(n=6, val_n=4),
                       explain=ExplainConfig.make("occlusion") if explain else None, faith_n=3)


def test_a_sweep_has_one_row_per_step_and_resumes_from_the_cache(tmp_path) -> None:
    cache = ResultCache(tmp_path)
    setup = _setup(cache)
    table = sweep(setup, [2, 0, 3, 1], 2, _config())
    assert list(table.columns) == COLUMNS and list(table["dropped"]) == [0, 1, 2]
    assert list(table["layers"]) == ["none", "2", "0,2"]
    assert table[["accuracy", "ece", "comprehensiveness", "random_sufficiency"]].notna().all().all()
    assert (table[["latency_ms", "latency_full_ms"]] > 0).all().all()
    entries = cache.info()["entries"]
    again = sweep(setup, [2, 0, 3, 1], 2, _config())
    assert cache.info()["entries"] == entries  # nothing new was computed
    assert again[["accuracy", "comprehensiveness"]].equals(table[["accuracy", "comprehensiveness"]])


def test_a_sweeps_explanations_start_from_the_states_the_step_before_kept(tmp_path) -> None:
    import numpy as np

    from core.model.states import STATES

    setup = _setup(ResultCache(tmp_path / "on"))
    calls: list[int] = []
    layers = setup.lm.spec.layer_list(setup.lm.model)
    # a layer's MLP runs whether its attention is dropped or not, unless the pass starts above the layer
    hooks = [layers[i].mlp.register_forward_pre_hook(lambda *_, i=i: calls.append(i)) for i in range(4)]
    try:
        table = sweep(setup, [3, 2, 0, 1], 2, _config(), latency=False)
        resumed = calls.count(0)
        STATES.enabled = False
        calls.clear()
        reference = sweep(Setup(setup.lm, setup.ds, setup.prompt, cache=ResultCache(tmp_path / "off")),
                          [3, 2, 0, 1], 2, _config(), latency=False)
    finally:
        STATES.enabled = True
        for hook in hooks:
            hook.remove()
    # layer 0 runs for the full model's passes; the pruned masks' scoring and explanations start at layer 2 or 3
    assert resumed < 0.5 * calls.count(0)
    for key in ("accuracy", "ece", "comprehensiveness", "sufficiency", "random_comprehensiveness"):
        np.testing.assert_allclose(table[key], reference[key], atol=1e-6, err_msg=key)


def test_points_remember_every_mask_of_a_context(tmp_path) -> None:
    cache = ResultCache(tmp_path)
    setup = _setup(cache)
    evaluate_point(setup, (3,), _config())
    evaluate_point(setup, (), _config())
    evaluate_point(setup, (1,), _config(explain=False))  # another context
    seen = points(setup, _config())
    assert list(seen["layers"]) == ["none", "3"] and seen["comprehensiveness"].notna().all()
    assert list(points(setup, _config(explain=False))["layers"]) == ["1"]


def test_sweep_range_is_checked(tmp_path) -> None:
    with pytest.raises(UserError, match="between 0 and 4"):
        sweep(_setup(ResultCache(tmp_path)), [0, 1, 2, 3], 5, _config())


def test_an_interrupted_sweep_recomputes_nothing_it_had_finished(tmp_path, monkeypatch) -> None:
    import core.task.evaluation as evaluation

    cache = ResultCache(tmp_path)
    setup = _setup(cache)
    scored: list[tuple[int, ...]] = []
    real = evaluation.score_examples

    def counting(lm_, builder, examples, drop=(), **kw):
        result = real(lm_, builder, examples, drop, **kw)
        scored.append(tuple(sorted(drop)))  # only scoring that finished
        return result

    monkeypatch.setattr(evaluation, "score_examples", counting)

    def stop_at_the_third_point(what: str, done: int, total: int) -> None:
        if what.startswith("2 of 3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(setup, [2, 0, 3, 1], 3, _config(explain=False), stop_at_the_third_point, latency=False)
    finished = set(scored)
    assert finished >= {(), (2,)}
    scored.clear()
    table = sweep(setup, [2, 0, 3, 1], 3, _config(explain=False), latency=False)
    assert len(table) == 4 and not finished & set(scored)  # the finished masks came from the cache


def test_each_row_carries_intervals_and_its_paired_change_from_the_full_model(tmp_path) -> None:
    from core.study.compare import compare_results
    from core.study.sweep import INTERVALS, interval_columns, readable

    setup = _setup(ResultCache(tmp_path))
    table = sweep(setup, [2, 0, 3, 1], 2, _config(), latency=False)
    for key in INTERVALS:
        lo, hi, change, change_lo, change_hi, p = interval_columns(key)
        assert table[[lo, hi, change, change_lo, change_hi, p]].notna().all().all(), key
        assert (table[lo] <= table[key] + 1e-12).all() or key == "ece", key
        first = table.iloc[0]
        assert (first[change], first[change_lo], first[change_hi], first[p]) == (0, 0, 0, 1), key
    stats = compare_results(setup, (0, 2), EvalConfig(n=6, val_n=4)).stats()
    last = table.iloc[2]
    assert last["ece_change"] == stats.difference["ece"].value
    assert (last["ece_change_lo"], last["ece_change_hi"]) == (stats.difference["ece"].lo, stats.difference["ece"].hi)
    assert last["ece_temperature_scaled_lo"] == stats.scaled_other["ece"].lo
    assert (last["right_to_wrong"], last["wrong_to_right"]) == (stats.mcnemar.right_to_wrong,
                                                                stats.mcnemar.wrong_to_right)
    shown = readable(table)
    assert list(shown.columns[:2]) == ["dropped", "layers"] and "accuracy: change from full" in shown
    assert "noise" in shown["ECE: change from full"].iloc[2] and "[" in shown["accuracy"].iloc[1]
    from core.study.report import render

    page = render(table, {})
    assert "excludes 0" in page and "Accuracy changes beyond noise" in page and '"toself"' in page
    assert "rerun the sweep" in render(table[["dropped", "layers", "accuracy", "ece"]], {})


def test_each_row_carries_prediction_sets_and_abstention_with_their_change(tmp_path) -> None:
    from dataclasses import replace

    from core.study.compare import compare_results
    from core.study.report import render
    from core.study.sets import KEYS
    from core.study.sweep import SET_COLUMNS, SET_INTERVALS, interval_columns

    setup = _setup(ResultCache(tmp_path))
    config = PointConfig(eval=EvalConfig(n=6, val_n=6), alpha=0.25, method="aps")  # 6 examples allow alpha >= 1/7
    table = sweep(setup, [2, 0, 3, 1], 2, config, latency=False)
    assert table[SET_COLUMNS].notna().all().all()
    s = compare_results(setup, (0, 2), EvalConfig(n=6, val_n=6)).sets(0.25, "aps")
    last = table.iloc[2]
    for key in KEYS:
        assert last[key] == s.other[key].value, key
    assert last["qhat"] == s.sets_other.qhat
    for key in SET_INTERVALS:
        lo, hi, change, change_lo, change_hi, p = interval_columns(key)
        assert (last[lo], last[hi]) == (s.other[key].lo, s.other[key].hi), key
        d = s.difference[key]
        assert (last[change], last[change_lo], last[change_hi], last[p]) == (d.value, d.lo, d.hi, d.p_value), key
        assert tuple(table.iloc[0][[change, change_lo, change_hi, p]]) == (0, 0, 0, 1), key
    # another alpha or method is another context; too few validation examples for alpha leave the sets empty
    assert list(points(setup, replace(config, alpha=0.3))["layers"]) == []
    assert list(points(setup, config)["layers"]) == ["none", "2", "0,2"]
    small = sweep(setup, [2, 0, 3, 1], 1, replace(config, alpha=0.1), latency=False)
    assert small[["coverage", "set_size", "qhat", "coverage_lo"]].isna().all().all()
    assert small[["aurc", "accuracy_at_80", "aurc_change_p"]].notna().all().all()
    page = render(table, {"alpha": 0.25})
    assert "Prediction sets and abstention" in page and "1 - alpha = 0.75" in page
    assert "Prediction sets and abstention" not in render(table.drop(columns=SET_COLUMNS), {})
