"""Explanations on demand: what is cached, a typed text as an example, every explainer on one example."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from helpers.tiny_models import tiny_loaded

import core.explain.dataset as dataset_module
from core.cache import ResultCache
from core.errors import UserError
from core.explain.dataset import NO_LABEL, DatasetExplainer, ExplainConfig, typed_example
from core.explain.methods import EXPLAINERS
from core.study.compare import compare_explanations, explainer_table, explanations_cached
from core.task.data import dataset_from_rows
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]]
FAITHFULNESS_COLUMNS = [f"{m}, {side}" for m in ("comprehensiveness", "sufficiency") for side in ("full", "pruned")]


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded("llama")


def _setup(lm, tmp_path) -> Setup:
    return Setup(lm, dataset_from_rows(ROWS * 4, "tiny"), cache=ResultCache(tmp_path))


def _nothing_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, computing an explanation or its faithfulness fails the test: only the cache may answer."""
    def refuse(*_args: object, **_kw: object) -> None:
        raise AssertionError("computed something that was said to be cached")

    monkeypatch.setattr(dataset_module, "explain", refuse)
    monkeypatch.setattr(dataset_module, "faithfulness_many", refuse)


def test_is_cached_is_false_until_the_explanation_and_its_faithfulness_are_stored(lm, tmp_path) -> None:
    setup = _setup(lm, tmp_path)
    ex = setup.ds.splits["test"][0]
    explainer = DatasetExplainer(setup, (1,), ExplainConfig.make("lime", {"n_samples": 20}))
    assert not explainer.is_cached(ex) and not explainer.is_cached(ex, faithfulness=True)
    a, hit = explainer.explain(ex)
    assert not hit and explainer.is_cached(ex) and not explainer.is_cached(ex, faithfulness=True)
    explainer.faithfulness([ex], [a])
    assert explainer.is_cached(ex, faithfulness=True)
    # the same key as `explain`: another seed, explainer or mask is another explanation
    assert not explainer.is_cached(ex, seed=1) and not explainer.is_cached(ex, "occlusion")
    assert not DatasetExplainer(setup, (2,), ExplainConfig.make("lime", {"n_samples": 20})).is_cached(ex)
    assert not DatasetExplainer(replace(setup, cache=None), (1,), explainer.config).is_cached(ex)


def test_explanations_cached_means_compare_explanations_computes_nothing(lm, tmp_path, monkeypatch) -> None:
    setup = _setup(lm, tmp_path)
    ex = setup.ds.splits["test"][1]
    args = (setup, (1,), ex, ExplainConfig.make("lime", {"n_samples": 20}))
    assert not explanations_cached(*args, with_random=True, seeds=2)
    first = compare_explanations(*args, with_random=True, seeds=2)
    assert explanations_cached(*args, with_random=True, seeds=2)
    assert not explanations_cached(*args, with_random=True, seeds=3)  # a third seed was never run
    assert not explanations_cached(setup, (2,), ex, args[3], with_random=True, seeds=2)
    plain = setup.ds.splits["test"][3]
    compare_explanations(setup, (1,), plain, args[3])  # without the random baseline
    assert explanations_cached(setup, (1,), plain, args[3])
    assert not explanations_cached(setup, (1,), plain, args[3], with_random=True)
    _nothing_computed(monkeypatch)
    again = compare_explanations(*args, with_random=True, seeds=2)
    assert again.base_cached and again.other_cached and again.seeds == 2
    assert again.random_faithfulness == first.random_faithfulness


def test_a_typed_text_gets_a_stable_id_of_its_own_and_can_be_explained(lm, tmp_path) -> None:
    setup = _setup(lm, tmp_path)
    a = typed_example(setup, "a wonderful, moving film")
    assert a == typed_example(setup, "  a wonderful, moving film \n")
    assert a.id.startswith("typed-") and len(a.id) == len("typed-") + 12 and a.label == NO_LABEL
    assert a.id != typed_example(setup, "a boring film").id
    assert a.id not in {ex.id for split in setup.ds.splits.values() for ex in split}
    attribution, hit = DatasetExplainer(setup, (1,), ExplainConfig.make("occlusion")).explain(a)
    assert not hit and attribution.names == ["a", "wonderful,", "moving", "film"]
    assert DatasetExplainer(setup, (1,), ExplainConfig.make("occlusion")).is_cached(a)


def test_a_typed_text_that_cannot_be_explained_is_refused_saying_why(lm, tmp_path) -> None:
    setup = _setup(lm, tmp_path)
    for blank in ("", "   \n\t "):
        with pytest.raises(UserError, match="your own text: the input text has no words to explain"):
            typed_example(setup, blank)
    limit = setup.builder().max_text_tokens
    with pytest.raises(UserError, match=rf"tokens long; at most {limit} fit in the input of tiny-llama"):
        typed_example(setup, "good " * (limit + 1))
    choice = replace(setup, ds=replace(setup.ds, task="multiple-choice"))
    with pytest.raises(UserError, match="multiple-choice data set: a typed text has no options"):
        typed_example(choice, "a wonderful film")


def test_explainer_table_has_a_row_per_explainer_and_the_random_reference(lm, tmp_path, monkeypatch) -> None:
    setup = _setup(lm, tmp_path)
    ex = setup.ds.splits["test"][2]
    seen: list[tuple[int, int]] = []
    table = explainer_table(setup, (1,), ex, "pad", progress=lambda d, t: seen.append((d, t)))
    names = [info.title for name, info in EXPLAINERS.items() if name != "random"]
    assert list(table["explainer"]) == [*names, "Random (reference, mean of 3 draws)"]
    assert list(table.columns) == [
        "explainer", "comprehensiveness, full", "comprehensiveness, pruned", "comprehensiveness change",
        "sufficiency, full", "sufficiency, pruned", "sufficiency change", "Spearman, full vs pruned",
        "seconds, full", "seconds, pruned", "from cache"]
    assert seen[-1] == (len(names) + 1, len(names) + 1)
    assert all(math.isfinite(v) for v in table[FAITHFULNESS_COLUMNS].to_numpy().ravel())
    assert (table["comprehensiveness change"] == table["comprehensiveness, pruned"]
            - table["comprehensiveness, full"]).all()
    assert (table["seconds, full"].iloc[:-1] > 0).all() and not table["from cache"].any()
    occlusion = compare_explanations(setup, (1,), ex, ExplainConfig.make("occlusion", removal="pad"))
    row = table.set_index("explainer").loc["Occlusion"]
    assert row["comprehensiveness, pruned"] == pytest.approx(occlusion.other_faithfulness.comprehensiveness)
    assert row["Spearman, full vs pruned"] == pytest.approx(occlusion.agreement.spearman)
    _nothing_computed(monkeypatch)
    again = explainer_table(setup, (1,), ex, "pad")
    assert again["from cache"].all()
    # cached explanations keep the seconds they took when computed
    assert again.drop(columns="from cache").equals(table.drop(columns="from cache"))
    unmasked = explainer_table(setup, (), ex, "pad")  # no mask: both sides are the full model, from the cache
    assert (unmasked["comprehensiveness, full"] == unmasked["comprehensiveness, pruned"]).all()
    assert unmasked["Spearman, full vs pruned"].isna().all()
