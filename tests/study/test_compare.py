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
