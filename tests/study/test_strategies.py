"""Pruning strategies on tiny models: permutations, greedy choices against brute force, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.cli import main
from core.errors import UserError
from core.study.importance import compute_scores
from core.study.report import check_sweep_table, render, write_report
from core.study.strategies import STRATEGIES, StrategyConfig, greedy_order, js_divergence, layer_order
from core.study.sweep import sweep_order
from core.task import calibration as cal
from core.task.data import dataset_from_rows
from core.task.evaluation import score_cached
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]] * 6
PROMPT = PromptConfig(style="zero-shot")


def _setup():
    return tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_returns_a_permutation_of_the_layers(name: str, tmp_path) -> None:
    lm, ds = _setup()
    config = StrategyConfig(name=name, calibration_n=6, steps=2, faith_n=2)
    order = layer_order(Setup(lm, ds, PROMPT, cache=ResultCache(tmp_path)), config)
    assert sorted(order) == list(range(lm.num_layers))


def test_fixed_orders_and_block_influence() -> None:
    lm, ds = _setup()
    setup = Setup(lm, ds)
    assert layer_order(setup, StrategyConfig("first-to-last")) == [0, 1, 2, 3]
    assert layer_order(setup, StrategyConfig("last-to-first")) == [3, 2, 1, 0]
    seeded = layer_order(setup, StrategyConfig("random", seed=1))
    assert seeded == layer_order(setup, StrategyConfig("random", seed=1)) and sorted(seeded) == [0, 1, 2, 3]
    texts = [r["text"] for r in ROWS[:6]]
    block = compute_scores(lm, texts, method="block").scores
    assert block != compute_scores(lm, texts).scores
    # independently: 1 - cos(layer input, layer output) from the model's own hidden states, one text at a
    # time (no padding), averaged over all tokens; the last state has the final norm applied, so stop before it
    sums, tokens = np.zeros(lm.num_layers - 1), 0
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
            states = lm.model.base_model(input_ids=ids, output_hidden_states=True).hidden_states
            for i in range(lm.num_layers - 1):
                sums[i] += (1 - torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1)).sum().item()
            tokens += ids.shape[1]
    np.testing.assert_allclose(block[:-1], sums / tokens, rtol=1e-4, atol=1e-6)


def test_greedy_divergence_picks_what_one_step_of_brute_force_picks(tmp_path) -> None:
    lm, ds = _setup()
    cache = ResultCache(tmp_path)
    config = StrategyConfig("greedy-divergence", calibration_n=6, steps=1, beyond_noise=False)
    order = layer_order(Setup(lm, ds, PROMPT, cache=cache), config)
    builder = PromptBuilder(lm.tokenizer, ds, PROMPT, lm.has_chat_template, lm.max_positions)
    examples, _ = ds.sample("validation", 6, seed=0)
    uncached = Setup(lm, ds, PROMPT)
    full = cal.softmax(score_cached(uncached, [], builder, "validation", examples).logits)
    divergence = [js_divergence(full, cal.softmax(score_cached(uncached, [i], builder, "validation", examples).logits))
                  .mean() for i in range(lm.num_layers)]
    assert order[0] == int(np.argmin(divergence))


def test_trust_greedy_picks_what_one_step_of_brute_force_picks(tmp_path) -> None:
    lm, ds = _setup()
    cache = ResultCache(tmp_path)
    config = StrategyConfig("trust-greedy", calibration_n=6, steps=1, faith_n=2, weights=(1.0, 0.5, 2.0),
                            beyond_noise=False)
    setup = Setup(lm, ds, PROMPT, cache=cache)
    order = layer_order(setup, config)
    from core.study.strategies import _Judge

    judge = _Judge(setup, config)
    assert order[0] == int(np.argmin([judge.cost([i]) for i in range(lm.num_layers)]))


def test_greedy_order_with_a_known_cost_and_a_candidate_pool() -> None:
    cost = {(): 0, (0,): 5, (1,): 1, (2,): 3, (1, 0): 2, (1, 2): 4}
    assert greedy_order(lambda m: cost[tuple(m)], [0, 1, 2], steps=2) == [1, 0, 2]
    assert greedy_order(lambda m: cost[tuple(m)], [0, 2, 1], steps=1, candidates=2) == [2, 0, 1]


def test_greedy_order_leaves_the_fallback_order_only_beyond_noise() -> None:
    cost = {(0,): 5, (1,): 1, (2,): 3, (0, 1): 2, (0, 2): 4, (1, 0): 2, (1, 2): 4}
    never = lambda mask, default: False  # noqa: E731 - every difference within noise
    always = lambda mask, default: True  # noqa: E731
    assert greedy_order(lambda m: cost[tuple(m)], [0, 1, 2], steps=2, beats=never) == [0, 1, 2]
    assert greedy_order(lambda m: cost[tuple(m)], [0, 1, 2], steps=2, beats=always) == [1, 0, 2]
    asked: list[tuple] = []
    greedy_order(lambda m: cost[tuple(m)], [0, 1, 2], steps=1, beats=lambda m, d: asked.append((m, d)) or True)
    assert asked == [([1], [0])], "the cheapest is tested against the fallback's next layer"


def test_the_judge_sees_no_difference_between_a_mask_and_itself(tmp_path) -> None:
    from core.study.strategies import _Judge

    lm, ds = _setup()
    for name in ("greedy-divergence", "trust-greedy"):
        judge = _Judge(Setup(lm, ds, PROMPT, cache=ResultCache(tmp_path)),
                       StrategyConfig(name, calibration_n=6, faith_n=2))
        assert not judge.beats([1], [1])
        assert judge.counts.shape == (1000, 6)


def test_bad_strategy_settings_are_named() -> None:
    with pytest.raises(UserError, match="unknown strategy 'magic'"):
        StrategyConfig("magic").validate()
    with pytest.raises(UserError, match="weights are three numbers"):
        StrategyConfig("trust-greedy", weights=(0, 0, 0)).validate()


def test_report_is_self_contained_and_works_offline(tmp_path) -> None:
    csv = tmp_path / "sweep.csv"
    csv.write_text("dropped,layers,accuracy,ece,ece_temperature_scaled,comprehensiveness,sufficiency,"
                   "random_comprehensiveness,random_sufficiency\n0,none,0.9,0.1,0.05,0.3,0.1,0.05,0.3\n"
                   "1,26,0.88,0.15,0.06,0.2,0.15,0.05,0.3\n", encoding="utf-8")
    (tmp_path / "sweep.csv.json").write_text(json.dumps({"model": "m", "strategy": {"name": "similarity"}}))
    out = write_report(csv, tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    assert "<script src=" not in page.replace('<script src="data:', "")  # nothing fetched
    assert "plotly" in page.lower() and len(page) > 1_000_000  # plotly.js is inlined
    assert "similarity" in page and "0.88" in page
    with pytest.raises(UserError, match="not a sweep table"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        write_report(bad, tmp_path / "x.html")
    assert "<h1>" in render(__import__("pandas").read_csv(csv), {})


def test_report_cli_errors_cleanly(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sweep_tables_are_checked_and_their_order_recovered() -> None:
    import pandas as pd

    table = pd.DataFrame({"dropped": [2, 0, 1], "layers": ["7,25", "none", "7"], "accuracy": [0.8, 0.86, 0.81],
                          "ece": [0.1, 0.17, 0.13]})
    checked = check_sweep_table(table, "t")
    assert list(checked["dropped"]) == [0, 1, 2]
    assert sweep_order(checked) == [7, 25]
    with pytest.raises(UserError, match="no column 'ece'"):
        check_sweep_table(table.drop(columns="ece"), "t")
    with pytest.raises(UserError, match="numbers of layers"):
        check_sweep_table(table.assign(dropped=["a", "b", "c"]), "t")
