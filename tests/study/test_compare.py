"""Two masks on the same examples (core.study.compare) on a tiny model: each side equals its own evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.errors import UserError
from core.explain.agreement import agreement
from core.explain.dataset import DatasetExplainer, ExplainConfig
from core.metrics import CALIBRATION, METRICS
from core.study.compare import compare_explanations, compare_results, mask_name
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptConfig
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]] * 5


def _setup(cache: ResultCache | None = None) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"), cache=cache)


def test_results_side_by_side_equal_their_own_evaluations(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    config = EvalConfig(n=8, val_n=4)
    stages: list[str] = []
    c = compare_results(setup, (1, 3), config, progress=lambda what, d, t: stages.append(what))
    assert set(stages) == {"full model", "pruned"}
    full, pruned = evaluate(setup, config), evaluate(setup, EvalConfig(n=8, val_n=4, drop=(1, 3)))
    np.testing.assert_array_equal(c.base.logits, full.logits)
    np.testing.assert_array_equal(c.other.logits, pruned.logits)
    table = c.metrics_table()
    assert list(table.index) == [METRICS[k].title for k in CALIBRATION]
    assert table.loc["ECE", "difference"] == pytest.approx(pruned.metrics.ece - full.metrics.ece)
    assert table.loc["accuracy", "pruned"] == pytest.approx(pruned.metrics.accuracy)
    scaled = c.metrics_table(temperature_scaled=True)
    assert scaled.loc["ECE", "pruned after T"] == pytest.approx(pruned.metrics_temperature_scaled.ece)
    rows = c.per_example()
    flips = full.probs.argmax(1) != pruned.probs.argmax(1)
    assert list(rows["flipped"]) == list(flips) and len(rows) == full.n
    np.testing.assert_allclose(rows["confidence change"], pruned.probs.max(1) - full.probs.max(1))


def test_the_same_mask_twice_is_evaluated_once_and_shows_one_column(tmp_path) -> None:
    c = compare_results(_setup(ResultCache(tmp_path)), (), EvalConfig(n=6, val_n=0))
    assert c.same_mask and c.base is c.other
    assert list(c.metrics_table().columns) == ["full model"]


def test_explanations_side_by_side_equal_their_own_explainers(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    config = ExplainConfig.make("occlusion")
    example = setup.ds.splits["test"][0]
    c = compare_explanations(setup, (2,), example, config, with_random=True)
    base, _ = DatasetExplainer(setup, (), config).explain(example)
    other, hit = DatasetExplainer(setup, (2,), config).explain(example)
    assert hit, "the comparison put the pruned explanation in the cache"
    np.testing.assert_array_equal(c.base.scores, base.scores)
    np.testing.assert_array_equal(c.other.scores, other.scores)
    assert c.agreement == agreement(base.scores, other.scores)
    assert c.random is not None and c.random.explainer == "random"
    assert c.other_faithfulness.comprehensiveness == pytest.approx(
        DatasetExplainer(setup, (2,), config).faithfulness([example], [other])[0].comprehensiveness)
    assert c.answer(c.base) in ("positive", "negative")
    alone = compare_explanations(setup, (), example, config)
    assert alone.other is None and alone.agreement is None and alone.random is None and not alone.flipped
    assert alone.second is alone.base and alone.second_faithfulness is alone.base_faithfulness


def test_mask_names() -> None:
    assert mask_name(()) == "full model"
    assert mask_name((3,)) == "1 attention layer dropped"
    assert mask_name((1, 2)) == "2 attention layers dropped"


def test_a_sampling_explainer_runs_once_per_seed_and_reads_against_its_seed_noise(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    config = ExplainConfig.make("lime", {"n_samples": 40, "seed": 5})
    example = setup.ds.splits["test"][3]
    c = compare_explanations(setup, (2,), example, config, seeds=3, with_random=True)
    assert c.seeds == 3 and len(c.other_runs) == 3 and c.base is c.base_runs[0]
    assert [r.params["seed"] for r in c.base_runs] == [5, 6, 7]
    explainer = DatasetExplainer(setup, (), config)
    np.testing.assert_array_equal(c.base_runs[1].scores, explainer.explain(example, seed=6)[0].scores)
    assert len(c.seed_agreements) == 3 and len(c.cross_agreements) == 9
    assert c.seed_agreements[0] == agreement(c.base_runs[0].scores, c.base_runs[1].scores)
    np.testing.assert_allclose(c.spread("base"), np.std([r.scores for r in c.base_runs], axis=0, ddof=1))
    assert c.noise_verdict() is not None and "3 seeds" in c.noise_verdict()
    # the random floor is the mean of three draws' curves
    draws = [explainer.faithfulness([example], [explainer.explain(example, "random", s)[0]])[0] for s in range(3)]
    assert c.random_faithfulness.comprehensiveness == pytest.approx(np.mean([d.comprehensiveness for d in draws]))
    # a deterministic explainer runs once whatever the seeds
    once = compare_explanations(setup, (2,), example, ExplainConfig.make("occlusion"), seeds=3)
    assert once.seeds == 1 and once.spread() is None and once.noise_verdict() is None
    with pytest.raises(UserError, match="at least 1"):
        compare_explanations(setup, (2,), example, config, seeds=0)


def test_a_mask_compared_with_itself_differs_by_exactly_zero(tmp_path) -> None:
    c = compare_results(_setup(ResultCache(tmp_path)), (), EvalConfig(n=12, val_n=6))
    s = c.stats()
    assert set(s.difference) >= {"accuracy", "ece", "adaptive_ece", "smooth_ece", "brier", "nll", "label_mass"}
    for d in [*s.difference.values(), *s.scaled_difference.values()]:
        assert (d.value, d.lo, d.hi, d.p_value, d.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)
    assert (s.mcnemar.right_to_wrong, s.mcnemar.wrong_to_right, s.mcnemar.p_value) == (0, 0, 1.0)
    assert s.verdict("ece") == "within noise (p = 1)"


def test_paired_stats_of_two_masks(tmp_path) -> None:
    from core.task import calibration as cal
    from core.task.uncertainty import wilson

    setup = _setup(ResultCache(tmp_path))
    c = compare_results(setup, (0, 2), EvalConfig(n=12, val_n=6))
    s = c.stats()
    assert s is c.stats(), "computed once per resampling setting"
    full, pruned = c.base, c.other
    for key in ("accuracy", "ece", "brier", "nll", "smooth_ece"):
        assert s.base[key].value == pytest.approx(getattr(full.metrics, key))
        assert s.difference[key].value == pytest.approx(getattr(pruned.metrics, key) - getattr(full.metrics, key))
        assert s.difference[key].lo <= s.difference[key].hi
    k = int((full.probs.argmax(1) == full.labels).sum())
    assert (s.base["accuracy"].lo, s.base["accuracy"].hi) == pytest.approx(wilson(k, full.n))
    assert s.other["label_mass"].value == pytest.approx(pruned.label_mass.mean())
    assert s.scaled_other["ece"].value == pytest.approx(
        cal.ece(cal.softmax(pruned.logits, pruned.temperature), pruned.labels))
    out = s.as_json()
    assert out["n"] == full.n and set(out) >= {"full", "pruned", "difference", "mcnemar", "noise_floor", "label_mass",
                                          "temperature_scaled"}
    assert set(out["full"]["accuracy"]) == {"value", "ci"} and len(out["difference"]["ece"]["ci"]) == 2
    assert "p_value" in out["difference"]["ece"] and set(out["mcnemar"]) >= {"right_to_wrong", "wrong_to_right",
                                                                             "p_value"}
    flips = (full.probs.argmax(1) == full.labels) & (pruned.probs.argmax(1) != pruned.labels)
    assert out["mcnemar"]["right_to_wrong"] == int(flips.sum())
    table = s.table()
    assert {"difference 95% CI", "p", "verdict"} <= set(table.columns)
    preds = c.predictions()
    assert {"correct_full", "correct_pruned", "confidence_full", "confidence_pruned", "label_mass_pruned",
            "flipped"} <= set(preds.columns) and len(preds) == full.n
    assert s.examples_needed("ece", 0.02) >= 1
    # another seed, other resamples (a calibration error's interval on few examples can reach the same bounds)
    reseeded = c.stats(1000, 1).difference["brier"]
    assert reseeded != s.difference["brier"] or s.difference["brier"].lo == s.difference["brier"].hi


def test_prompt_seeds_give_one_row_per_draw_and_refuse_a_prompt_without_demonstrations(tmp_path) -> None:
    from core.study.compare import across_prompt_seeds, parse_seeds, seed_spread

    few = Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="few-shot"),
                cache=ResultCache(tmp_path))
    table = across_prompt_seeds(few, (1,), [0, 1, 2], EvalConfig(n=8, val_n=0))
    assert list(table["prompt_seed"]) == [0, 1, 2] and "ece_change" in table
    one = evaluate(Setup(few.lm, few.ds, PromptConfig(style="few-shot", seed=2)), EvalConfig(n=8, val_n=0, drop=(1,)))
    assert table.loc[2, "accuracy"] == pytest.approx(one.metrics.accuracy)
    spread = seed_spread(table)
    assert spread.loc["accuracy", "min"] <= spread.loc["accuracy", "mean"] <= spread.loc["accuracy", "max"]
    with pytest.raises(UserError, match="demonstrations"):
        across_prompt_seeds(_setup(), (1,), [0, 1])
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0", "a,b", "1,1"):
        with pytest.raises(UserError):
            parse_seeds(bad)
