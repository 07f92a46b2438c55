"""Explanations and faithfulness on the real default model, through the CLI and the core."""

from __future__ import annotations

import csv
import json

import pytest
from helpers.cli import run_cli

pytestmark = pytest.mark.slow


def test_explain_json_has_words_scores_prediction_and_agreement(fresh_results, capsys) -> None:
    code, out, err = run_cli(capsys, "explain", "--example", "17", "--explainer", "occlusion", "--drop-attn", "25,26",
                          "--json", "-")
    assert code == 0, err
    got = json.loads(out)
    e = got["explanation"]
    assert [f["feature"] for f in e["features"]] == got["text"].split()
    assert e["predicted"] in ("negative", "positive") and 0.5 <= e["probability"] <= 1
    assert e["seconds"] > 0 and e["explainer"] == "occlusion"
    assert len(e["faithfulness_comprehensiveness_at_k"]) == 5
    assert got["dropped_attention_layers"] == [25, 26] and "full_model" in got
    assert {"precision", "recall", "f1", "iou", "spearman"} <= set(got["agreement_with_full_model"])
    code, out, _ = run_cli(capsys, "explain", "--example", "17", "--explainer", "occlusion", "--granularity", "token",
                        "--json", "-")
    tokens = json.loads(out)["explanation"]["features"]
    assert len(tokens) > len(e["features"])


def test_evaluate_with_faithfulness_adds_the_fields(fresh_results, capsys, tmp_path) -> None:
    preds = tmp_path / "p.csv"
    # the fields and the parameters' path only (the explainers' quality is the LIME / Kernel SHAP test below):
    # the fewest samples Kernel SHAP takes, on 4 reviews
    code, out, err = run_cli(capsys, "evaluate", "--n", "4", "--val-n", "0", "--faithfulness", "--explainer",
                          "kernel-shap", "--param", "n_samples=10", "--json", "-", "--predictions", str(preds))
    assert code == 0, err
    got = json.loads(out)
    assert got["explainer"] == "kernel-shap" and got["explainer_params"] == {"n_samples": 10, "seed": 0}
    for field in ("comprehensiveness", "sufficiency", "random_baseline_comprehensiveness",
                  "random_baseline_sufficiency"):
        assert isinstance(got[field], float)
    assert set(got["comprehensiveness_at_k"]) == {"1", "5", "10", "20", "50"}
    assert got["faithfulness_n"] == 4
    with open(preds, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {"comprehensiveness", "sufficiency", "random_comprehensiveness"} <= set(rows[0])


@pytest.mark.parametrize(("argv", "message"), [
    (["explain", "--example", "0", "--explainer", "gradcam"], "unknown explainer 'gradcam'; use one of lime"),
    (["explain", "--example", "99999"], "example 99999 is out of range: the test split of 'movie-reviews' has"),
    (["explain", "--example", "0", "--param", "n_samples"], "--param takes KEY=VALUE"),
    (["evaluate", "--faithfulness", "--explainer", "lime", "--param", "width=2"], "has no parameter 'width'"),
])
def test_bad_explain_input_gets_a_clear_message(fresh_results, capsys, argv, message) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_lime_and_kernel_shap_beat_the_random_baseline_on_real_reviews(fresh_results) -> None:
    from core import DatasetExplainer, ExplainConfig, ResultCache, Setup, dataset_faithfulness, load_dataset, load_model

    lm, ds = load_model(), load_dataset()
    # 12 reviews, 50 samples each: the margins over the random baseline's comprehensiveness measured on
    # 2026-12-02 are 0.133 (LIME) and 0.109 (Kernel SHAP), more than twice the 0.05 asked for, and those of
    # sufficiency 0.138 / 0.129. With 100 samples they were 0.145 / 0.125 (at twice the cost; the suite's
    # slowest test); with 30, 0.128 / 0.089; on the first 6 or 8 reviews at 100 only 0.06-0.09, too close to trim.
    # A (private) cache: the random baseline, three draws per review, is the same for both explainers.
    setup = Setup(lm, ds, cache=ResultCache())
    examples, _ = ds.sample("test", 12, seed=0)
    for name in ("lime", "kernel-shap"):
        explainer = DatasetExplainer(setup, (), ExplainConfig.make(name, {"n_samples": 50}))
        s = dataset_faithfulness(explainer, examples).summary()
        assert s["comprehensiveness"] > s["random_baseline_comprehensiveness"] + 0.05, s
        assert s["sufficiency"] < s["random_baseline_sufficiency"], s
